"""The code engine: train only the trainable top (layers and/or code rows) on the code objective, from cached features.

Pieces: `optimizer.Partition` / `split` say what trains (a small pytree; Adam moments for it only, learning-rate
groups), `feature_cache` holds the frozen bottom's output, `code_loss` the objective. A step reads a cache batch,
runs the top layers (if any) and the final norm, gathers the code-predicting positions, and scores them against
the codes' output rows:

  h_l = RMSNorm(top(x_n))[code_pos_l]          (x_n from the cache; top = layers [n, L))
  loss = mean over codes of -log softmax_{k in C_l}(<h_l, w_k>)[c_l]     (code_loss: C_l = level / trie / vocab)

`code_hidden(..., cached=False)` computes the same h from tokens with the full model (`llama.hidden_states` on the
merged params): the reference the cached path must equal.

Input rows (`Partition(input_rows=True, code_head=True)`, `train.code_inputs_epochs`): the state predicting level 2
is the frozen network's output at the level-1 code token, which sees that code only through its input row. With
rows fixed, every prefix feeds the same kind of vector and the shared level-2 output rows must separate every
prefix's children from one query state; a trained input row per level-1 code moves the level-2 state of each prefix
toward its own children (the frozen layers turn the row into a prefix-specific state, nonlinearly in the query).
The cached batch then carries the prompt's keys and values (`feature_cache.build(prefix_kv=...)`) and the step
recomputes the code tokens only (`feature_cache.code_token_states`, L - 1 tokens through all layers); prompt
states, level 1 and the text term are untouched (no code token is ever a prompt token), and the result is still a
plain Llama (`optimizer.export`). Measured on the demo: the shared rows alone already fit level 2 up to what the
training texts allow (BFCL repeats functions with identical descriptions; `benchmarks/probe_ceiling.py`), so this
is an option, not the default.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolgen_jax.models import llama
from toolgen_jax.training import code_loss
from toolgen_jax.training import feature_cache as fc
from toolgen_jax.training import optimizer as opt_lib


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Knobs of one engine run (the stage schedule is the caller's).

  loss: code_loss.MODES ('level' | 'trie' | 'full'); text_weight: weight of the text term (`text_nll`; needs a
  cache built with text positions); lr_rows / lr_layers / lr_inputs: peak learning rates of the added (output)
  rows, of the top layers + final norm, and of the code tokens' input rows (when they train); epochs over the
  cached examples; batch_size rows per step.
  """
  loss: str = "level"
  text_weight: float = 0.0
  lr_rows: float = 2e-3
  lr_layers: float = 1e-4
  lr_inputs: float = 2e-3  # the code tokens' input rows ('new_rows' beside a 'code_head')
  epochs: float = 8.0
  batch_size: int = 32
  warmup_fraction: float = 0.05
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  seed: int = 0


def _final_norm(params, trainable, config):
  scale = trainable["final_norm"]["scale"] if "final_norm" in trainable else params["final_norm"]["scale"]
  return lambda x: llama.rms_norm(x, scale, config.rms_norm_eps)


def code_hidden(trainable, params, config: llama.LlamaConfig, part: opt_lib.Partition, batch: Mapping[str, Any], *,
                cached: bool, positions: jax.Array | None = None) -> jax.Array:
  """h [B, L, D]: final-normed hidden states at the code-predicting positions (or at `positions` [B, P]).

  cached=True: batch has 'states' (a `FeatureCache.batch`), 'attention_mask', 'code_pos' (+ 'prefix_kv',
  'prefix_len', 'code_tokens' when the input rows train: the states at code positions 1.. are then recomputed);
  cached=False: 'tokens', 'attention_mask', 'code_pos' (a `CodeExamples` slice), through the full model.
  """
  want = batch["code_pos"] if positions is None else positions
  pos = jnp.maximum(want, 0)[..., None]
  if not cached:
    full = opt_lib.merge(params, trainable, config, part)
    # Trained input rows need the backward pass through every layer (their weights stay constants either way).
    frozen = 0 if "new_rows" in trainable else part.frozen_layers
    x, _ = llama.hidden_states(full, config, batch["tokens"], attention_mask=batch["attention_mask"],
                               frozen_layers=frozen)
    return jnp.take_along_axis(x, pos, axis=1)
  x = jnp.asarray(batch["states"]).astype(jnp.dtype(config.dtype))
  if "prefix_kv" in batch:
    rows = trainable["new_rows"] if "new_rows" in trainable else params["embed"]["embedding"][part.new_token_start:]
    x = x.at[:, 1:].set(fc.code_token_states(rows, params, config, batch, part.new_token_start))
  if part.frozen_layers < config.num_layers:
    x = fc.run_top(trainable["layers"], config, x, batch["attention_mask"], want)
  elif positions is not None:
    raise ValueError("a cache of the code positions only has no states at other positions")
  return _final_norm(params, trainable, config)(x)


def code_logits(h: jax.Array, trainable, params, config: llama.LlamaConfig, part: opt_lib.Partition,
                token_table: jax.Array, mode: str) -> jax.Array:
  """[B, L, K] level logits ('level'/'trie') or [B, L, V] vocabulary logits ('full': pretrained rows frozen)."""
  start = part.new_token_start
  if mode != "full":
    return code_loss.level_logits(h, opt_lib.output_rows(params, trainable, config, part, token_table))
  if config.tie_embeddings:
    old = params["embed"]["embedding"][:start]
  else:
    old = params["lm_head"]["kernel"][:, :start].T
  new = opt_lib.output_rows(params, trainable, config, part, jnp.arange(start, config.vocab_size))
  # Two products, not one over the concatenated rows: the backward pass then forms no [V, D] gradient for the
  # frozen rows (a third of the cost of a full-vocabulary position).
  dot = lambda rows: jnp.einsum("bld,vd->blv", h, rows.astype(h.dtype), preferred_element_type=jnp.float32)
  return jnp.concatenate([dot(jax.lax.stop_gradient(old)), dot(new)], -1)


def text_nll(trainable, params, config: llama.LlamaConfig, part: opt_lib.Partition, batch,
             h_text: jax.Array | None = None) -> jax.Array:
  """The text term: mean next-token NLL at ordinary prompt positions under the full vocabulary, where only the added
  rows can move — -log p(y) = logaddexp(lse_pretrained, logsumexp_k <h, w_k>) - <h, w_y> over the added rows w_k
  (`feature_cache.text_stats` holds h, lse_pretrained and the target's logit). A code loss normalised over codes
  only never says that codes are wrong on English; this term is the one that does, so a tuned model keeps the base
  model's perplexity (issue #15). With the whole backbone frozen its minimum is the base model's NLL (added rows
  scoring -inf); with a trainable top (h_text [B, R, D] computed by `loss_fn` at 'text_pos') it also holds the
  top layers to the next token on ordinary text."""
  start = part.new_token_start
  rows = opt_lib.output_rows(params, trainable, config, part, jnp.arange(start, config.vocab_size))
  valid = jnp.asarray(batch["text_valid"], jnp.float32)
  if h_text is None:  # whole backbone frozen: h and the pretrained rows' part are cached constants
    h = jnp.asarray(batch["text_states"], jnp.float32)
    added = jax.nn.logsumexp(jnp.einsum("brd,vd->brv", h, rows.astype(h.dtype)), axis=-1)
    nll = jnp.logaddexp(batch["text_lse"], added) - batch["text_logit"]
  else:  # a trainable top moves h: the full-vocabulary NLL at the R positions, pretrained rows frozen
    logits = code_logits(h_text, trainable, params, config, part, None, "full")
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, batch["text_target"][..., None], axis=-1)[..., 0]
  return jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def loss_fn(trainable, params, batch, *, config: llama.LlamaConfig, part: opt_lib.Partition, token_table,
            mode: str, cached: bool, text_weight: float = 0.0) -> tuple[jax.Array, dict]:
  """Mean code NLL of a batch (+ text_weight * `text_nll`) and its metrics (batch may carry 'allowed' [B, L, K] for
  mode 'trie', and the text arrays of `FeatureCache.batch`)."""
  h_text = None
  if text_weight and "text_pos" in batch:  # trainable top: code and text positions through the top in one pass
    L = batch["code_pos"].shape[-1]
    both = code_hidden(trainable, params, config, part, batch, cached=cached,
                       positions=jnp.concatenate([batch["code_pos"], batch["text_pos"]], axis=-1))
    h, h_text = both[:, :L], both[:, L:]
  else:
    h = code_hidden(trainable, params, config, part, batch, cached=cached)
  logits = code_logits(h, trainable, params, config, part, token_table, mode)
  total, aux = code_loss.code_loss_sums(logits, batch["codes"], mode=mode, allowed=batch.get("allowed"),
                                        token_table=token_table)
  n = jnp.maximum(aux["codes"], 1.0)
  loss, metrics = total / n, {"accuracy": aux["correct"] / n, "codes": aux["codes"]}
  if text_weight:
    text = text_nll(trainable, params, config, part, batch, h_text)
    loss = loss + text_weight * text
    metrics["text_nll"] = text
  return loss, metrics


def make_step(config: llama.LlamaConfig, part: opt_lib.Partition, tx: optax.GradientTransformation, *,
              mode: str = "level", cached: bool = True, text_weight: float = 0.0) -> Callable:
  """jitted step(trainable, opt_state, params, token_table, batch) -> (trainable, opt_state, metrics)."""

  @jax.jit
  def step(trainable, opt_state, params, token_table, batch):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, params, batch, config=config, part=part, token_table=token_table, mode=mode, cached=cached,
        text_weight=text_weight)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return trainable, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}

  return step


def steps_for(num_examples: int, cfg: EngineConfig) -> int:
  return max(1, int(np.ceil(cfg.epochs * num_examples / cfg.batch_size)))


def batch_order(num_examples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """[steps, B] example indices: one seeded permutation per epoch, a pure function of (seed, step) like the input
  pipeline's (every row of a batch is a real example; the last batch of an epoch borrows from the next)."""
  need = steps * batch_size
  epochs = -(-need // num_examples)
  stream = np.concatenate([np.random.default_rng([seed, e]).permutation(num_examples) for e in range(epochs)])
  return stream[:need].reshape(steps, batch_size)


def fit(cache: fc.FeatureCache, params, config: llama.LlamaConfig, part: opt_lib.Partition, token_table, *,
        cfg: EngineConfig = EngineConfig(), trainable=None, allowed: np.ndarray | None = None,
        log: Callable[[str], None] | None = None, log_every: int = 50) -> tuple[dict, list[dict]]:
  """Trains the `part` of `params` on the cached examples; returns (trainable, per-step metrics).

  token_table: [L, K] vocabulary ids of the codes; allowed: [N, L, K] trie children (`code_loss.trie_children_mask`)
  for cfg.loss == 'trie'. The trained model is `optimizer.export(params, trainable, config, part)`.
  """
  if cache.frozen_layers != part.frozen_layers:
    raise ValueError(f"the cache holds layer {cache.frozen_layers} states but the partition freezes "
                     f"{part.frozen_layers} layers")
  if part.input_rows and (cache.prefix is None or not part.code_head):
    raise ValueError("training the code tokens' input rows from cached features would leave the cache stale: use "
                     "Partition(input_rows=False, code_head=True) (untied code rows), or a cache with the prompt's "
                     "keys and values (feature_cache.build(prefix_kv=...)) and Partition(input_rows=True, "
                     "code_head=True)")
  if cfg.loss == "trie" and allowed is None:
    raise ValueError("cfg.loss='trie' needs allowed (code_loss.trie_children_mask)")
  if cfg.text_weight and cache.text is None:
    raise ValueError("cfg.text_weight > 0 needs a cache built with text_positions > 0")
  if cfg.text_weight and part.final_norm and part.frozen_layers == config.num_layers:
    raise ValueError("the text term's cached statistics assume a frozen final norm: Partition(final_norm=False)")
  trainable = opt_lib.split(params, config, part) if trainable is None else trainable
  steps = steps_for(len(cache), cfg)
  tx, schedules = opt_lib.make_group_optimizer(
      trainable, {"rows": cfg.lr_rows, "layers": cfg.lr_layers, "inputs": cfg.lr_inputs}, steps,
      warmup_fraction=cfg.warmup_fraction,
      weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)
  opt_state = tx.init(trainable)
  step = make_step(config, part, tx, mode=cfg.loss, cached=True, text_weight=float(cfg.text_weight))
  table = jnp.asarray(token_table)
  order = batch_order(len(cache), cfg.batch_size, steps, cfg.seed)
  history, t0 = [], time.perf_counter()
  for s in range(steps):
    batch = cache.batch(order[s], prefix=part.input_rows)
    if allowed is not None:
      batch["allowed"] = allowed[np.sort(order[s])]
    trainable, opt_state, m = step(trainable, opt_state, params, table, batch)
    if (s + 1) % log_every == 0 or s + 1 == steps:
      row = {"step": s + 1, **{k: float(v) for k, v in jax.device_get(m).items()},
             "seconds": time.perf_counter() - t0}
      history.append(row)
      if log:
        text = f" text nll {row['text_nll']:.3f}" if "text_nll" in row else ""
        log(f"code engine step {s + 1}/{steps}: loss {row['loss']:.4f} acc {row['accuracy']:.3f}{text}")
  return trainable, history


def prototype_rows(cache: fc.FeatureCache, params, config: llama.LlamaConfig, part: opt_lib.Partition, token_table,
                   trainable=None, batch_size: int = 64) -> jax.Array:
  """Output rows with signal: row of (level l, code k) = the mean hidden state h_l of the cached examples whose
  code at level l is k, minus the mean h_l of all the level's examples (the prototype init of issue #15's probe,
  centred so that code tokens do not outscore words on ordinary text), rescaled to the mean norm of the pretrained
  output rows; codes no example uses keep their current row. Returns [V - start, D], the new 'code_head' (or
  'new_rows' for a tied model without one)."""
  trainable = opt_lib.split(params, config, part) if trainable is None else trainable
  table = np.asarray(token_table)
  start, D = part.new_token_start, config.hidden_size
  sums = np.zeros((config.vocab_size - start, D), np.float64)
  counts = np.zeros(config.vocab_size - start, np.int64)
  hidden = jax.jit(lambda t, b: code_hidden(t, params, config, part, b, cached=True))
  for s in range(0, len(cache), batch_size):
    idx = np.arange(s, min(s + batch_size, len(cache)))
    h = np.asarray(hidden(trainable, cache.batch(idx)), np.float64)    # [B, L, D]
    codes = cache.codes[idx]
    for l in range(codes.shape[1]):
      ok = codes[:, l] >= 0
      rows = table[l, codes[ok, l]] - start
      np.add.at(sums, rows, h[ok, l])
      np.add.at(counts, rows, 1)
  old = np.asarray(opt_lib.output_rows(params, trainable, config, part, np.arange(start, config.vocab_size)))
  if config.tie_embeddings:
    ref = params["embed"]["embedding"][:start]
  else:
    ref = params["lm_head"]["kernel"][:, :start].T
  target = float(jnp.mean(jnp.linalg.norm(ref.astype(jnp.float32), axis=-1)))
  proto = sums / np.maximum(counts, 1)[:, None]
  # Centred per level: the mean state of all the level's examples is subtracted. A level softmax is blind to a
  # vector shared by every row of the level (and its gradients keep their mean), but the full-vocabulary softmax on
  # ordinary text is not: uncentred prototypes share the hidden states' common direction and outscore every word
  # (held-out perplexity ~1e34 measured on the demo); centred ones carry only what tells codes apart.
  for l in range(table.shape[0]):
    rows_l = table[l][table[l] >= 0] - start
    used = rows_l[counts[rows_l] > 0]
    if len(used):
      proto[used] -= sums[used].sum(0) / counts[used].sum()
  proto *= target / np.maximum(np.linalg.norm(proto, axis=-1, keepdims=True), 1e-12)
  return jnp.asarray(np.where(counts[:, None] > 0, proto, old), old.dtype)
