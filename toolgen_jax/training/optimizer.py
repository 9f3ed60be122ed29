"""AdamW with linear warmup + cosine decay, global-norm clipping, weight-decay and trainable masks.

Defaults follow Toolscaler (peak 4e-5, 3% warmup, cosine) and ToolGen (HF Trainer: decay every matrix, not norms or
biases). What is trained is a mask over the parameter pytree:

* 'all': every parameter (full fine-tuning).
* 'lora_and_new_tokens': LoRA factors (any leaf whose path has a key containing 'lora') plus the rows >=
  `new_token_start` of every parameter with a 'vocab' axis (input embedding, untied LM head): the tool-code tokens.
* 'new_tokens': only those rows.

`frozen_layers` = n (config.train.frozen_layers) further freezes the slices [0, n) of every stacked-layer leaf (its
'layers' axis): the forward pass stops gradients there (`llama.hidden_states`), and the mask keeps Adam and weight
decay off them, so the bottom of the network stays bit-identical.

Frozen leaves get `optax.set_to_zero()` (no Adam moments, and their gradients are never read, so XLA drops their
computation); row-masked leaves keep moments but their gradient and update are zero outside the new rows, so the
pretrained vocabulary is left bit-identical. Gradient accumulation lives in the train step (a scan over
microbatches, no extra optimizer state); see `train.py`. The mask itself is defined once, in `models/lora.py`.

The code engine (`code_engine.py`) trains differently: `Partition` names the slices that change (added rows, top
layers, final norm, untied code output rows), `split` copies them into a small pytree, and `make_group_optimizer`
keeps AdamW moments for that pytree only, one learning rate per group ('rows' ~1e-3..3e-3, 'layers' ~1e-4). The
pretrained rest is never differentiated, so it stays bit-identical also for a tied embedding; `export` writes the
result back as a plain Llama (untying the head when the codes have their own output rows).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolgen_jax.models.lora import MODES as TRAINABLE_MODES  # noqa: F401  (re-exported)
from toolgen_jax.models.lora import AxisMask, apply_mask, trainable_mask  # noqa: F401  (re-exported)
from toolgen_jax.models.lora import _is_mask_leaf, _path_names


def learning_rate_schedule(peak: float, total_steps: int, warmup_fraction: float = 0.03,
                           min_lr_ratio: float = 0.0) -> optax.Schedule:
  """lr(s): 0 -> peak linearly over round(warmup_fraction * total) steps (at least 1), then cosine to peak*ratio."""
  if total_steps < 1:
    raise ValueError(f"config.train.steps must be >= 1, got {total_steps}")
  warmup = max(1, int(round(warmup_fraction * total_steps)))
  return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=warmup,
                                            decay_steps=max(total_steps, warmup + 1),
                                            end_value=peak * min_lr_ratio)


def weight_decay_mask(params: Any) -> Any:
  """True for weight matrices: ndim >= 2 and no 'norm'/'bias' in the path (stacked-layer norms are 2-D)."""
  def decays(path, x):
    names = [n.lower() for n in _path_names(path)]
    if any("norm" in n or "bias" in n or n.endswith("_b") for n in names):
      return False
    return np.ndim(x) >= 2
  return jax.tree_util.tree_map_with_path(decays, params)


def masked_updates(mask: Any, logical_axes: Any = None) -> optax.GradientTransformation:
  """An optax stage that zeroes the updates of frozen leaves and rows (keeps weight decay off them too)."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return apply_mask(updates, mask), state

  return optax.GradientTransformation(init, update)


def make_optimizer(train_config: Mapping[str, Any], params: Any, logical_axes: Any, total_steps: int, *,
                   new_token_start: int | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The full chain: mask grads -> clip by global norm -> AdamW (trainable leaves) -> mask updates.

  Args:
    train_config: `config.train` (learning_rate, warmup_fraction, min_lr_ratio, weight_decay, grad_clip,
      adam_b1/b2/eps, trainable).
    params: parameter pytree (only structure and shapes are read).
    logical_axes: matching logical-axis pytree.
    total_steps: optimizer steps of this stage (the cosine horizon).
  Returns:
    (optimizer, learning-rate schedule) — the schedule is what the train loop logs as 'lr'.
  """
  tc = train_config
  schedule = learning_rate_schedule(float(tc["learning_rate"]), int(total_steps), float(tc["warmup_fraction"]),
                                    float(tc.get("min_lr_ratio", 0.0)))
  mask = trainable_mask(params, logical_axes, tc.get("trainable", "all"), new_token_start,
                       int(tc.get("frozen_layers", 0)))
  labels = jax.tree.map(lambda m: "freeze" if m is False else "train", mask, is_leaf=_is_mask_leaf)
  adamw = optax.adamw(schedule, b1=float(tc.get("adam_b1", 0.9)), b2=float(tc.get("adam_b2", 0.999)),
                      eps=float(tc.get("adam_eps", 1e-8)), weight_decay=float(tc["weight_decay"]),
                      mask=weight_decay_mask(params))
  chain = [masked_updates(mask, logical_axes)]  # gradients: frozen parts never enter the clipping norm
  if float(tc["grad_clip"]) > 0:
    chain.append(optax.clip_by_global_norm(float(tc["grad_clip"])))
  chain.append(optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels))
  chain.append(masked_updates(mask, logical_axes))
  return optax.chain(*chain), schedule


# ---- the trainable parts as their own small pytree ---------------------------------------------------------------

PART_GROUPS = {"new_rows": "rows", "code_head": "rows", "layers": "layers", "final_norm": "layers"}


@dataclasses.dataclass(frozen=True)
class Partition:
  """Which slices of a Llama params tree train, held as a separate small pytree (`split`): gradients, Adam moments
  and updates exist for these slices only, and the pretrained rest is never differentiated, so it is bit-identical
  after training by construction (also for a tied embedding, whose output role reaches every row).

  new_token_start: the first added row (vocabulary size before the tool-code tokens).
  frozen_layers: layers [0, n) stay frozen, [n, num_layers) train ('layers'); n = num_layers trains none.
  input_rows: train the added rows of the input embedding ('new_rows' [V - start, D]); with a tied embedding and no
    code_head they are the output rows too.
  code_head: separate output rows for the added tokens ('code_head' [V - start, D], initialised from the current
    output rows): the code tokens' input and output roles are untied, so training the output rows never changes
    what a code token feeds the layers above it (cached features stay exact). `export` writes an untied head.
  final_norm: train the final RMSNorm scale.
  """
  new_token_start: int
  frozen_layers: int
  input_rows: bool = False
  code_head: bool = True
  final_norm: bool = False

  def check(self, config) -> None:
    if not 0 <= self.new_token_start <= config.vocab_size:
      raise ValueError(f"new_token_start={self.new_token_start} outside the vocabulary ({config.vocab_size})")
    if not 0 <= self.frozen_layers <= config.num_layers:
      raise ValueError(f"frozen_layers={self.frozen_layers} outside [0, {config.num_layers}]")
    if config.lora_rank:
      raise ValueError("Partition trains slices of the base weights; merge_lora first")


def _output_rows(params: Any, config, start: int) -> jax.Array:
  """[V - start, D] current output rows of the added tokens (the embedding rows when tied)."""
  if config.tie_embeddings:
    return params["embed"]["embedding"][start:]
  return params["lm_head"]["kernel"][:, start:].T


def split(params: Any, config, part: Partition) -> dict:
  """The trainable slices of `params` as a dict with keys among PART_GROUPS (copies; `params` stays the frozen
  reference that `merge` and the engine read)."""
  part.check(config)
  out = {}
  if part.input_rows:
    out["new_rows"] = jnp.array(params["embed"]["embedding"][part.new_token_start:])
  if part.code_head:
    out["code_head"] = jnp.array(_output_rows(params, config, part.new_token_start))
  if part.frozen_layers < config.num_layers:
    out["layers"] = jax.tree.map(lambda a: jnp.array(a[part.frozen_layers:]), params["layers"])
  if part.final_norm:
    out["final_norm"] = {"scale": jnp.array(params["final_norm"]["scale"])}
  return out


def merge(params: Any, trainable: Mapping[str, Any], config, part: Partition) -> Any:
  """The full params tree with the trainable slices written in (differentiable in `trainable`; the frozen slices
  enter as constants). 'code_head' is not part of a Llama tree: read it with `output_rows`, or `export`."""
  out = dict(params)
  n, start = part.frozen_layers, part.new_token_start
  if "new_rows" in trainable:
    emb = jax.lax.stop_gradient(params["embed"]["embedding"][:start])
    out["embed"] = {**params["embed"], "embedding": jnp.concatenate([emb, trainable["new_rows"]], 0)}
  if "layers" in trainable:
    out["layers"] = jax.tree.map(lambda a, b: jnp.concatenate([jax.lax.stop_gradient(a[:n]), b], 0),
                                 params["layers"], trainable["layers"])
  if "final_norm" in trainable:
    out["final_norm"] = trainable["final_norm"]
  return out


def output_rows(params: Any, trainable: Mapping[str, Any], config, part: Partition, token_ids) -> jax.Array:
  """[..., D] output (LM head) rows of vocabulary ids `token_ids` [...], all >= new_token_start: 'code_head' when
  the codes are untied, else the (trained, when tied) embedding rows or the untied head's columns."""
  local = jnp.asarray(token_ids) - part.new_token_start
  if "code_head" in trainable:
    return trainable["code_head"][local]
  if config.tie_embeddings and "new_rows" in trainable:
    return trainable["new_rows"][local]
  return _output_rows(params, config, part.new_token_start)[local]


def export(params: Any, trainable: Mapping[str, Any], config, part: Partition):
  """(params, config) of a plain Llama that computes what the engine trained. With a code_head on a tied model the
  head is untied (lm_head = E^T with the added columns replaced; +V*D parameters), so every existing decoder and
  `llama.forward` read the trained output rows while the input rows stay what the cache saw."""
  p = jax.tree.map(jnp.asarray, merge(params, trainable, config, part))
  if "code_head" not in trainable:
    return p, config
  start = part.new_token_start
  head = (p["embed"]["embedding"].T if config.tie_embeddings else p["lm_head"]["kernel"])
  p["lm_head"] = {"kernel": head.at[:, start:].set(trainable["code_head"].T.astype(head.dtype))}
  return p, config.replace(tie_embeddings=False)


def group_labels(trainable: Mapping[str, Any]) -> dict:
  """'rows' / 'layers' / 'inputs' per leaf of a `split` tree (PART_GROUPS; the added input rows are their own group
  'inputs' when a 'code_head' holds the output rows, else they are the tied output rows: 'rows')."""
  def group(k):
    return "inputs" if k == "new_rows" and "code_head" in trainable else PART_GROUPS[k]
  return {k: jax.tree.map(lambda _: group(k), v) for k, v in trainable.items()}


def make_group_optimizer(trainable: Mapping[str, Any], learning_rates: Mapping[str, float], total_steps: int, *,
                         warmup_fraction: float = 0.03, min_lr_ratio: float = 0.0, weight_decay: float = 0.0,
                         grad_clip: float = 1.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                         ) -> tuple[optax.GradientTransformation, dict]:
  """AdamW with one warmup-cosine schedule per learning-rate group ('rows': the added token rows, ~1e-3..3e-3;
  'layers': top layers and final norm, ~1e-4) over a `split` tree, after global-norm clipping of all its gradients.
  Moments exist for the trainable slices only (there is nothing else in the tree).
  Returns (optimizer, {group: schedule})."""
  labels = group_labels(trainable)
  groups = sorted({g for v in labels.values() for g in jax.tree.leaves(v)})
  missing = [g for g in groups if g not in learning_rates]
  if missing:
    raise ValueError(f"no learning rate for group(s) {missing}; give one per group of {groups}")
  def schedule(peak):
    if warmup_fraction <= 0:  # no warmup: the first step already moves (learning_rate_schedule warms >= 1 step)
      return optax.cosine_decay_schedule(peak, max(int(total_steps), 1), alpha=min_lr_ratio)
    return learning_rate_schedule(peak, int(total_steps), warmup_fraction, min_lr_ratio)

  schedules = {g: schedule(float(learning_rates[g])) for g in groups}
  txs = {g: optax.adamw(schedules[g], b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask)
         for g in groups}
  chain = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  chain.append(optax.multi_transform(txs, labels))
  return optax.chain(*chain), schedules
