"""Toolscaler's semantic compression (section 4.1): V learnable gist tokens summarise a tool document; their hidden
states are the tool's P = V embedding vectors (input of `residual_kmeans`).

Sequence layout and the cascaded attention mask:

    [content tokens c_1..c_T] [gist g_1..g_V] | [placeholder/task prompt p_1..p_M] [target field y_1..y_U]
      content -> content (causal)   gist -> content + gist   |   task -> gist + task only (never the content)

Realised with the model's KV cache instead of a custom mask: pass 1 runs content + gist causally; a new cache keeps
only the V gist slots (keys/values, rotary positions continue after the content); pass 2 runs the task tokens on that
cache, so every task token sees the gist and the task tokens before it, and nothing else. Training reconstructs each
document field (name, description, parameters, ...) from the gist under its own task prompt, with LoRA on the
backbone and the gist embeddings as the only other trainable parameters (`lora.trainable_mask`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolgen_jax.models import llama
from toolgen_jax.models import lora as lora_lib


@dataclasses.dataclass(frozen=True)
class GistConfig:
  num_gist: int = 2          # V gist tokens = embedding positions per tool
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
  steps: int = 200
  batch_size: int = 8
  learning_rate: float = 1e-3
  max_content: int = 128
  max_task: int = 48         # prompt + target tokens per task
  seed: int = 0


def add_gist_tokens(params, config: llama.LlamaConfig, num_gist: int) -> tuple[dict, llama.LlamaConfig, np.ndarray]:
  """Appends `num_gist` embedding rows (initialised to the mean embedding) and head columns. -> ids [V]."""
  emb = params["embed"]["embedding"]
  v0 = emb.shape[0]
  new_rows = jnp.broadcast_to(emb.mean(0, keepdims=True), (num_gist, emb.shape[1])).astype(emb.dtype)
  params = {**params, "embed": {"embedding": jnp.concatenate([emb, new_rows])}}
  if not config.tie_embeddings:
    head = params["lm_head"]["kernel"]
    params["lm_head"] = {"kernel": jnp.concatenate([head, jnp.zeros((head.shape[0], num_gist), head.dtype)], 1)}
  return params, config.replace(vocab_size=v0 + num_gist), np.arange(v0, v0 + num_gist)


def compress(params, config: llama.LlamaConfig, content: jax.Array, content_mask: jax.Array, gist_ids: jax.Array,
             extra_slots: int = 0) -> tuple[jax.Array, llama.KVCache]:
  """content [B, T] (right padded, mask [B, T]) -> (gist hidden states [B, V, D] float32, a cache holding only the
  gist keys/values with room for `extra_slots` more tokens)."""
  b, t = content.shape
  v = gist_ids.shape[0]
  tokens = jnp.concatenate([content, jnp.broadcast_to(gist_ids, (b, v))], 1)
  mask = jnp.concatenate([content_mask.astype(bool), jnp.ones((b, v), bool)], 1)
  cache = llama.init_cache(config, b, t + v)
  hidden, cache = llama.hidden_states(params, config, tokens, attention_mask=mask, cache=cache)
  pad = lambda a: jnp.pad(a[:, :, t:], ((0, 0), (0, 0), (0, extra_slots), (0, 0), (0, 0)))
  gist_cache = llama.KVCache(k=pad(cache.k), v=pad(cache.v),
                             mask=jnp.concatenate([jnp.ones((b, v), bool), jnp.zeros((b, extra_slots), bool)], 1),
                             index=jnp.int32(v), next_pos=cache.next_pos)
  return hidden[:, t:].astype(jnp.float32), gist_cache


def reconstruction_loss(params, config: llama.LlamaConfig, content, content_mask, task, task_mask, target_weights,
                        gist_ids) -> jax.Array:
  """Mean next-token NLL of the target field given only the gist (task [B, U]; weights 1 on target tokens)."""
  _, cache = compress(params, config, content, content_mask, gist_ids, extra_slots=task.shape[1])
  logits, _ = llama.forward(params, config, task, attention_mask=task_mask, cache=cache)
  logp = jax.nn.log_softmax(logits[:, :-1], -1)
  nll = -jnp.take_along_axis(logp, task[:, 1:, None], -1)[..., 0]
  w = target_weights[:, 1:].astype(jnp.float32)
  return (nll * w).sum() / jnp.maximum(w.sum(), 1.0)


def _pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  out = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    s = list(s)[:length]
    out[i, :len(s)] = s
    mask[i, :len(s)] = 1
  return out, mask


def make_tasks(docs: Sequence[Mapping[str, str]], tokenize: Callable[[str], Sequence[int]], cfg: GistConfig):
  """One reconstruction task per (document, field): content = the whole document, prompt = "<field>:", target =
  the field's text. -> arrays (content, content_mask, task, task_mask, target_weights) with one row per task."""
  rows = []
  for d in docs:
    content = tokenize(" | ".join(f"{k}: {v}" for k, v in d.items()))
    for field, text in d.items():
      prompt, target = list(tokenize(f"{field}:")), list(tokenize(str(text)))
      rows.append((content, prompt + target, [0] * len(prompt) + [1] * len(target)))
  content, cmask = _pad([r[0] for r in rows], cfg.max_content)
  task, tmask = _pad([r[1] for r in rows], cfg.max_task)
  weights, _ = _pad([r[2] for r in rows], cfg.max_task)
  return content, cmask, task, tmask, weights * tmask


def train(params, config: llama.LlamaConfig, docs: Sequence[Mapping[str, str]], tokenize, cfg: GistConfig,
          log: Callable[[str], None] | None = None):
  """Adds gist tokens + LoRA, trains field reconstruction. -> (params, config, gist_ids, losses per step)."""
  key = jax.random.key(cfg.seed)
  params, config, gist_ids = add_gist_tokens(params, config, cfg.num_gist)
  params, config = lora_lib.apply_lora(params, config, jax.random.fold_in(key, 1), rank=cfg.lora_rank,
                                       alpha=cfg.lora_alpha, targets=cfg.lora_targets)
  mask = lora_lib.trainable_mask(params, config, "lora_and_new_tokens", new_token_ids=gist_ids)
  data = make_tasks(docs, tokenize, cfg)
  opt = optax.adam(cfg.learning_rate)
  opt_state = opt.init(params)
  gid = jnp.asarray(gist_ids)

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(reconstruction_loss)(params, config, *batch, gid)
    grads = lora_lib.mask_gradients(grads, mask)
    updates, opt_state = opt.update(grads, opt_state, params)
    updates = lora_lib.mask_gradients(updates, mask)  # Adam of a zero gradient is zero, but keep rows bit-exact
    return optax.apply_updates(params, updates), opt_state, loss

  n = len(data[0])
  losses = []
  for s in range(cfg.steps):
    idx = np.asarray(jax.random.randint(jax.random.fold_in(key, 100 + s), (min(cfg.batch_size, n),), 0, n))
    params, opt_state, loss = step(params, opt_state, tuple(jnp.asarray(a[idx]) for a in data))
    losses.append(float(loss))
    if log and (s + 1) % max(cfg.steps // 10, 1) == 0:
      log(f"gist step {s + 1}/{cfg.steps}: loss {losses[-1]:.4f}")
  return params, config, gist_ids, losses


def tool_fields(tool) -> dict[str, str]:
  """The document fields a gist reconstructs (Toolscaler: name, description, parameters, ...) of a `Tool`."""
  props = (tool.parameters or {}).get("properties", {}) if isinstance(tool.parameters, dict) else {}
  return {"name": tool.name, "category": tool.category or "", "description": tool.description or "",
          "parameters": ", ".join(props) if props else "none"}


def trainable_state(params, gist_ids) -> dict[str, np.ndarray]:
  """What training changed (LoRA factors, the gist rows of the embedding / head) as a flat {path: array}, so a gist
  encoder is stored in megabytes and rebuilt on the same backbone with `restore_state`."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if "lora" in name:
      out[name] = np.asarray(x)
  ids = np.asarray(gist_ids)
  out["embed/embedding/gist_rows"] = np.asarray(params["embed"]["embedding"])[ids]
  if "lm_head" in params:
    out["lm_head/kernel/gist_cols"] = np.asarray(params["lm_head"]["kernel"])[:, ids]
  return out


def restore_state(params, config: llama.LlamaConfig, state: Mapping[str, np.ndarray], cfg: GistConfig):
  """Backbone params -> the trained gist encoder (params, config, gist ids), from `trainable_state`'s output."""
  params, config, gist_ids = add_gist_tokens(params, config, cfg.num_gist)
  params, config = lora_lib.apply_lora(params, config, jax.random.fold_in(jax.random.key(cfg.seed), 1),
                                       rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets)
  def put(path, x):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if "lora" not in name:
      return x
    if name not in state or state[name].shape != x.shape:
      raise ValueError(f"gist state: {name} missing or of another shape (expected {x.shape})")
    return jnp.asarray(state[name], x.dtype)
  params = jax.tree_util.tree_map_with_path(put, params)
  emb = params["embed"]["embedding"]
  params["embed"] = {"embedding": emb.at[gist_ids].set(jnp.asarray(state["embed/embedding/gist_rows"], emb.dtype))}
  if "lm_head" in params:
    k = params["lm_head"]["kernel"]
    params["lm_head"] = {"kernel": k.at[:, gist_ids].set(jnp.asarray(state["lm_head/kernel/gist_cols"], k.dtype))}
  return params, config, gist_ids


def embed_tools(params, config: llama.LlamaConfig, docs: Sequence[Mapping[str, str]], tokenize, gist_ids,
                cfg: GistConfig, batch_size: int = 16) -> np.ndarray:
  """Gist embeddings of tool documents: [N, V, D] float32 (the P = V positions of residual k-means)."""
  out = []
  gid = jnp.asarray(gist_ids)
  fn = jax.jit(lambda p, c, m: compress(p, config, c, m, gid)[0])
  for i in range(0, len(docs), batch_size):
    chunk = docs[i:i + batch_size]
    content, cmask = _pad([tokenize(" | ".join(f"{k}: {v}" for k, v in d.items())) for d in chunk], cfg.max_content)
    out.append(np.asarray(fn(params, jnp.asarray(content), jnp.asarray(cmask))))
  return np.concatenate(out) if out else np.zeros((0, len(gist_ids), config.hidden_size), np.float32)


def config_from(encoder_config, seed: int = 0) -> GistConfig:
  """The `GistConfig` of a run's `config.encoder` section (kind='gist')."""
  e = encoder_config
  return GistConfig(num_gist=int(e.gist_tokens), lora_rank=int(e.gist_lora_rank), steps=int(e.gist_steps),
                    batch_size=int(e.gist_batch_size), learning_rate=float(e.gist_learning_rate),
                    max_content=int(e.max_len), seed=int(seed))


def load_encoder(directory, params, config: llama.LlamaConfig, tokenizer, cfg: GistConfig):
  """A stored gist encoder (`directory`/state.npz, written by the pipeline's embeddings step) rebuilt on its
  backbone -> (params, config, gist ids, tokenize), ready for `embed_tools` (coding new tools)."""
  import pathlib

  from toolgen_jax.models.tokenizer import encode_text
  state = dict(np.load(pathlib.Path(directory) / "state.npz"))
  params, config, ids = restore_state(params, config, state, cfg)
  return params, config, ids, (lambda s: encode_text(tokenizer, s))


def embed_with_backbone(directory, params, config: llama.LlamaConfig, tokenizer, tools, cfg: GistConfig,
                        batch_size: int = 16) -> np.ndarray:
  """[N, V, D] gist embeddings of `tools` by the stored gist encoder (`directory`: its adapter and gist rows) mounted
  on another backbone of the same architecture: the tuned LLM of a post-guided round (Toolscaler section 4.2 repeats
  the compression step on the refined model each round; the adapter is reused, not retrained). The backbone's own
  LoRA factors, if any, are merged first; its extra vocabulary rows (code tokens) are kept and never read."""
  params, config = lora_lib.merge_lora(params, config)
  p, c, ids, tokenize = load_encoder(directory, params, config, tokenizer, cfg)
  return embed_tools(p, c, [tool_fields(t) for t in tools], tokenize, ids, cfg, batch_size=batch_size)
