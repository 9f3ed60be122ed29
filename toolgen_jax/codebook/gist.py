"""Toolscaler's semantic compression (section 4.1): V learnable gist tokens summarise a tool document; their final
hidden states are the tool's P = V embedding vectors (input of `residual_kmeans`).

The paper's form (`GistConfig.form="cascade"`, the default) lays a training example out in four blocks,

    [Content c_1..c_T] [Token k_1..k_V] [Placeholder p_1..p_V] [Task: instruction + target y_1..y_U]

under the cascaded attention mask (`cascaded_mask`, True = may attend):

                  Content   Token   Placeholder   Task
    Content       causal    .       .             .
    Token         all       causal  .             .
    Placeholder   .         .       causal        .
    Task          .         .       all           causal

and feeds the Placeholder block from the Token block's outputs: the Placeholder's input vectors are the Token
tokens' final hidden states h_k (`token_outputs`), the very vectors `embed_tools` returns and residual k-means
clusters. The Placeholder reads the Token block only through that feed (the one edge between the two; an attention
edge from Placeholder to the Token's per-layer keys would let the Task read the document through every layer of
the Token block, not through the clustered vector), and the Task attends the Placeholder and itself, never the
Content or the Token block. So the clustered vector is the bottleneck every reconstruction task must read through.
Realised as two passes over the one mask: [Content; Token] (its diagonal block), then [Placeholder; Task] with the
Placeholder's inputs = h_k (its diagonal block); the off-diagonal blocks between the passes are all False.

The m reconstruction tasks (`PAPER_TASKS`): reconstruct the tool's name, its description and its parameters from
the gist, each under its own instruction. Training: LoRA on the backbone (the paper: r=32, alpha=128, dropout 0.1)
and the V Token embeddings are the only trainable parameters (`lora.trainable_mask`); AdamW (lr 1e-3, weight decay
1e-4), batch 12, early stopping on held-out tasks (`configs/toolscaler.py:paper`).

`form="kv_cache"` keeps the form this module had before (a named option; the stored encoders of earlier runs were
trained with it): content + gist causally, then the task tokens on a cache holding the V gist slots' keys/values
of every layer. There the task reads all layers of the gist block, so the final hidden state (what is clustered)
is read by no loss term. Both forms embed a tool the same way (`token_outputs`: the Token block's final hidden
states after a causal pass over content + Token), so a stored encoder of either form codes new tools alike.
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


FORMS = ("cascade", "kv_cache")
# The m reconstruction tasks of section 4.1: (field of `tool_fields`, instruction of the Task block).
PAPER_TASKS = (("name", "Reconstruct the name of this tool:"),
               ("description", "Reconstruct the description of this tool:"),
               ("parameters", "Reconstruct the parameters of this tool:"))


@dataclasses.dataclass(frozen=True)
class GistConfig:
  num_gist: int = 2          # V gist (Token) tokens = embedding positions per tool
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
  steps: int = 200
  batch_size: int = 8
  learning_rate: float = 1e-3
  weight_decay: float = 0.0  # AdamW, on the trainable parameters only
  max_content: int = 128
  max_task: int = 48         # instruction + target tokens per task
  seed: int = 0
  form: str = "cascade"      # cascade (the paper's blocks and mask) | kv_cache (the earlier form, module docstring)
  tasks: tuple[str, ...] = ("name", "description", "parameters")  # fields reconstructed (PAPER_TASKS' order); ()
                                                                  # = every field of the document
  patience: int = 0          # early stopping: evaluations without a better held-out loss before stopping (0 = off)
  eval_every: int = 0        # steps between held-out evaluations (0 = steps // 10)
  eval_fraction: float = 0.1  # share of the (tool, task) rows held out for early stopping (patience > 0)


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
  hidden, cache = llama.hidden_states(params, config, tokens, attention_mask=mask, cache=cache, fresh_cache=True)
  pad = lambda a: jnp.pad(a[:, :, t:], ((0, 0), (0, 0), (0, extra_slots), (0, 0), (0, 0)))
  gist_cache = llama.KVCache(k=pad(cache.k), v=pad(cache.v),
                             mask=jnp.concatenate([jnp.ones((b, v), bool), jnp.zeros((b, extra_slots), bool)], 1),
                             index=jnp.int32(v), next_pos=cache.next_pos)
  return hidden[:, t:].astype(jnp.float32), gist_cache


def kv_cache_loss(params, config: llama.LlamaConfig, content, content_mask, task, task_mask, target_weights,
                  gist_ids) -> jax.Array:
  """form='kv_cache': mean next-token NLL of the target field, the task tokens running on the gist KV cache."""
  _, cache = compress(params, config, content, content_mask, gist_ids, extra_slots=task.shape[1])
  logits, _ = llama.forward(params, config, task, attention_mask=task_mask, cache=cache)
  return _target_nll(logits, task, target_weights)


def _target_nll(logits, task, target_weights) -> jax.Array:
  logp = jax.nn.log_softmax(logits[:, :-1], -1)
  nll = -jnp.take_along_axis(logp, task[:, 1:, None], -1)[..., 0]
  w = target_weights[:, 1:].astype(jnp.float32)
  return (nll * w).sum() / jnp.maximum(w.sum(), 1.0)


# ---- the paper's form: [Content; Token; Placeholder; Task] under the cascaded mask ------------------------------

# Which block may attend which (rows: query block, columns: key block), in the order Content, Token, Placeholder,
# Task; within a block, causally. Placeholder -> Token is no attention edge: the Token outputs are its inputs.
BLOCK_ATTENDS = np.array([[1, 0, 0, 0],
                          [1, 1, 0, 0],
                          [0, 0, 1, 0],
                          [0, 0, 1, 1]], bool)


def cascaded_mask(content_mask: jax.Array, num_gist: int, task_mask: jax.Array) -> jax.Array:
  """content_mask [B, T], task_mask [B, U] (1 = real token) -> [B, S, S] bool, S = T + 2V + U: query i may attend
  key j iff j <= i, key j is a real token and BLOCK_ATTENDS[block(i), block(j)] (module docstring's table)."""
  b, t = content_mask.shape
  u, v = task_mask.shape[1], int(num_gist)
  block = np.repeat(np.arange(4), [t, v, v, u])
  real = jnp.concatenate([content_mask.astype(bool), jnp.ones((b, 2 * v), bool), task_mask.astype(bool)], 1)
  allowed = jnp.asarray(BLOCK_ATTENDS[block[:, None], block[None, :]] & np.tri(len(block), dtype=bool))
  return allowed[None] & real[:, None, :]


def _layout_positions(content_mask, num_gist: int, task_mask) -> jax.Array:
  """[B, S] rotary positions of the layout: real tokens counted from 0 through the four blocks (padding keeps the
  count of the real token before it; it is never attended)."""
  b = content_mask.shape[0]
  real = jnp.concatenate([content_mask.astype(jnp.int32), jnp.ones((b, 2 * num_gist), jnp.int32),
                          task_mask.astype(jnp.int32)], 1)
  return jnp.maximum(jnp.cumsum(real, 1) - 1, 0)


def masked_hidden_states(params, config: llama.LlamaConfig, x: jax.Array, positions: jax.Array, mask: jax.Array,
                         dropout_rng: jax.Array | None = None) -> jax.Array:
  """The backbone's layer stack on input vectors x [B, S, D] under an arbitrary attention mask [B, S, S] -> final-
  norm hidden states [B, S, D]. `llama.hidden_states` with the mask and the inputs given (it builds its own causal
  mask from token ids); the layers are `llama`'s own, LoRA (and its dropout, given a key) included."""
  c = config
  mask = mask | ~jnp.any(mask, axis=-1, keepdims=True)  # a padding query sees itself (finite softmax, output unused)
  rope = llama.rope_tables(positions, llama.rope_inv_freq(c), x.dtype)
  rngs = None if dropout_rng is None else jax.random.split(dropout_rng, c.num_layers)

  def body(x, xs):
    lp, r = xs
    return llama._layer(c, rope, x, lp, mask, None, r)[0], None

  x, _ = jax.lax.scan(llama._remat(body, c), x, (params["layers"], rngs))
  return llama.rms_norm(x, params["final_norm"]["scale"], c.rms_norm_eps)


def token_outputs(params, config: llama.LlamaConfig, content: jax.Array, content_mask: jax.Array,
                  gist_ids: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
  """Pass 1, [Content; Token] under its block of `cascaded_mask` -> h_k [B, V, D] float32: the Token block's final
  hidden states, the vectors that are clustered and that feed the Placeholder block."""
  b, t = content.shape
  v = gist_ids.shape[0]
  tokens = jnp.concatenate([content, jnp.broadcast_to(gist_ids, (b, v))], 1)
  empty = jnp.zeros((b, 0), bool)
  mask = cascaded_mask(content_mask, v, empty)[:, :t + v, :t + v]
  pos = _layout_positions(content_mask, v, empty)[:, :t + v]
  h = masked_hidden_states(params, config, llama.embed(params, config, tokens), pos, mask, dropout_rng)
  return h[:, t:].astype(jnp.float32)


def task_loss(params, config: llama.LlamaConfig, placeholder: jax.Array, task: jax.Array, task_mask: jax.Array,
              target_weights: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
  """Pass 2, [Placeholder; Task] under its block of `cascaded_mask`, the Placeholder's inputs = `placeholder`
  [B, V, D] (the Token outputs) -> mean next-token NLL of the target tokens (weights 1 on them). The document
  reaches this loss through `placeholder` only (no other input carries it)."""
  b, u = task.shape
  v = placeholder.shape[1]
  x = jnp.concatenate([placeholder.astype(jnp.dtype(config.dtype)), llama.embed(params, config, task)], 1)
  mask = cascaded_mask(jnp.zeros((b, 0), bool), v, task_mask)[:, v:, v:]
  pos = _layout_positions(jnp.zeros((b, 0), bool), v, task_mask)[:, v:] + v  # after the Token block
  h = masked_hidden_states(params, config, x, pos, mask, dropout_rng)
  return _target_nll(llama.logits_from_hidden(params, config, h[:, v:]), task, target_weights)


def cascade_loss(params, config: llama.LlamaConfig, content, content_mask, task, task_mask, target_weights,
                 gist_ids, dropout_rng: jax.Array | None = None) -> jax.Array:
  """form='cascade' (the paper's): `task_loss` read through `token_outputs`."""
  r1 = r2 = None
  if dropout_rng is not None:
    r1, r2 = jax.random.split(dropout_rng)
  h = token_outputs(params, config, content, content_mask, gist_ids, r1)
  return task_loss(params, config, h, task, task_mask, target_weights, r2)


def reconstruction_loss(params, config: llama.LlamaConfig, content, content_mask, task, task_mask, target_weights,
                        gist_ids, form: str = "cascade", dropout_rng: jax.Array | None = None) -> jax.Array:
  """Mean next-token NLL of the target fields given only the gist (task [B, U]; weights 1 on target tokens)."""
  if form == "cascade":
    return cascade_loss(params, config, content, content_mask, task, task_mask, target_weights, gist_ids,
                        dropout_rng)
  if form == "kv_cache":
    return kv_cache_loss(params, config, content, content_mask, task, task_mask, target_weights, gist_ids)
  raise ValueError(f"gist form must be one of {FORMS}, got {form!r}")


def _pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  out = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    s = list(s)[:length]
    out[i, :len(s)] = s
    mask[i, :len(s)] = 1
  return out, mask


def document_text(doc: Mapping[str, str]) -> str:
  """The Content block's text: every field of the document."""
  return " | ".join(f"{k}: {v}" for k, v in doc.items())


def make_tasks(docs: Sequence[Mapping[str, str]], tokenize: Callable[[str], Sequence[int]], cfg: GistConfig):
  """The m reconstruction tasks of every document: content = the whole document; Task block = the task's
  instruction (no loss) + the field's text (the target). `cfg.tasks` names the fields (instructions from
  `PAPER_TASKS`, "<field>:" for another field); () = every field of the document.
  -> arrays (content, content_mask, task, task_mask, target_weights) with one row per (document, task)."""
  instruction = dict(PAPER_TASKS)
  rows = []
  for d in docs:
    content = tokenize(document_text(d))
    for field in (cfg.tasks or tuple(d)):
      if field not in d:
        raise ValueError(f"gist task {field!r}: the document has fields {sorted(d)}")
      prompt = list(tokenize(instruction.get(field, f"{field}:")))
      target = list(tokenize(str(d[field])))
      rows.append((content, prompt + target, [0] * len(prompt) + [1] * len(target)))
  content, cmask = _pad([r[0] for r in rows], cfg.max_content)
  task, tmask = _pad([r[1] for r in rows], cfg.max_task)
  weights, _ = _pad([r[2] for r in rows], cfg.max_task)
  return content, cmask, task, tmask, weights * tmask


def _held_out(n: int, cfg: GistConfig) -> np.ndarray:
  """Rows held out for early stopping: a seeded `eval_fraction` of the (document, task) rows (none without
  patience, or with fewer than two rows)."""
  if cfg.patience <= 0 or n < 2:
    return np.zeros(n, bool)
  k = min(max(1, int(round(cfg.eval_fraction * n))), n - 1)
  out = np.zeros(n, bool)
  out[np.random.default_rng(cfg.seed).permutation(n)[:k]] = True
  return out


def train(params, config: llama.LlamaConfig, docs: Sequence[Mapping[str, str]], tokenize, cfg: GistConfig,
          log: Callable[[str], None] | None = None):
  """Adds gist tokens + LoRA, trains the reconstruction tasks (`cfg.form`) with AdamW on the LoRA factors and the
  gist rows only; with `cfg.patience` > 0, stops early on the held-out rows' loss and returns the best parameters.
  -> (params, config, gist_ids, training losses per step)."""
  if cfg.form not in FORMS:
    raise ValueError(f"gist form must be one of {FORMS}, got {cfg.form!r}")
  key = jax.random.key(cfg.seed)
  params, config, gist_ids = add_gist_tokens(params, config, cfg.num_gist)
  params, config = lora_lib.apply_lora(params, config, jax.random.fold_in(key, 1), rank=cfg.lora_rank,
                                       alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets)
  mask = lora_lib.trainable_mask(params, config, "lora_and_new_tokens", new_token_ids=gist_ids)
  data = make_tasks(docs, tokenize, cfg)
  held = _held_out(len(data[0]), cfg)
  dev = tuple(jnp.asarray(a[held]) for a in data)
  data = tuple(a[~held] for a in data)
  opt = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)
  opt_state = opt.init(params)
  gid = jnp.asarray(gist_ids)
  dropout = cfg.lora_dropout > 0

  @jax.jit
  def step(params, opt_state, batch, rng):
    loss, grads = jax.value_and_grad(reconstruction_loss)(params, config, *batch, gid, cfg.form,
                                                          rng if dropout else None)
    grads = lora_lib.mask_gradients(grads, mask)
    updates, opt_state = opt.update(grads, opt_state, params)
    updates = lora_lib.mask_gradients(updates, mask)  # frozen rows stay bit-exact (AdamW's decay acts on params)
    return optax.apply_updates(params, updates), opt_state, loss

  held_loss = jax.jit(lambda p: reconstruction_loss(p, config, *dev, gid, cfg.form))
  every = cfg.eval_every or max(cfg.steps // 10, 1)
  best, best_params, bad = np.inf, params, 0
  n = len(data[0])
  losses = []
  for s in range(cfg.steps):
    idx = np.asarray(jax.random.randint(jax.random.fold_in(key, 100 + s), (min(cfg.batch_size, n),), 0, n))
    params, opt_state, loss = step(params, opt_state, tuple(jnp.asarray(a[idx]) for a in data),
                                   jax.random.fold_in(key, 10**6 + s))
    losses.append(float(loss))
    if log and (s + 1) % max(cfg.steps // 10, 1) == 0:
      log(f"gist step {s + 1}/{cfg.steps}: loss {losses[-1]:.4f}")
    if held.any() and ((s + 1) % every == 0 or s + 1 == cfg.steps):
      h = float(held_loss(params))
      if h < best:
        best, best_params, bad = h, params, 0
      else:
        bad += 1
      if log:
        log(f"gist step {s + 1}: held-out loss {h:.4f} (best {best:.4f})")
      if bad >= cfg.patience:
        if log:
          log(f"gist: early stop at step {s + 1} ({bad} evaluations without a better held-out loss)")
        break
  return (best_params if held.any() else params), config, gist_ids, losses


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
  """Gist embeddings of tool documents: [N, V, D] float32, the Token outputs h_k (`token_outputs`; what feeds the
  Placeholder block in training), the P = V positions of residual k-means."""
  out = []
  gid = jnp.asarray(gist_ids)
  fn = jax.jit(lambda p, c, m: token_outputs(p, config, c, m, gid))
  for i in range(0, len(docs), batch_size):
    chunk = docs[i:i + batch_size]
    content, cmask = _pad([tokenize(document_text(d)) for d in chunk], cfg.max_content)
    out.append(np.asarray(fn(params, jnp.asarray(content), jnp.asarray(cmask))))
  return np.concatenate(out) if out else np.zeros((0, len(gist_ids), config.hidden_size), np.float32)


def config_from(encoder_config, seed: int = 0) -> GistConfig:
  """The `GistConfig` of a run's `config.encoder` section (kind='gist')."""
  e = encoder_config
  d = GistConfig()
  get = lambda k, default: e.get(k, default) if hasattr(e, "get") else getattr(e, k, default)
  return GistConfig(num_gist=int(e.gist_tokens), lora_rank=int(e.gist_lora_rank), steps=int(e.gist_steps),
                    batch_size=int(e.gist_batch_size), learning_rate=float(e.gist_learning_rate),
                    max_content=int(e.max_len), seed=int(seed),
                    lora_alpha=float(get("gist_lora_alpha", d.lora_alpha)),
                    lora_dropout=float(get("gist_lora_dropout", d.lora_dropout)),
                    weight_decay=float(get("gist_weight_decay", d.weight_decay)),
                    form=str(get("gist_form", d.form)), tasks=tuple(get("gist_tasks", d.tasks)),
                    patience=int(get("gist_patience", d.patience)), eval_every=int(get("gist_eval_every", 0)),
                    eval_fraction=float(get("gist_eval_fraction", d.eval_fraction)))


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
