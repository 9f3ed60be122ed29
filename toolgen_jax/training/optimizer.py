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
microbatches, no extra optimizer state); see `train.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

TRAINABLE_MODES = ("all", "lora_and_new_tokens", "new_tokens")


def learning_rate_schedule(peak: float, total_steps: int, warmup_fraction: float = 0.03,
                           min_lr_ratio: float = 0.0) -> optax.Schedule:
  """lr(s): 0 -> peak linearly over round(warmup_fraction * total) steps (at least 1), then cosine to peak*ratio."""
  if total_steps < 1:
    raise ValueError(f"config.train.steps must be >= 1, got {total_steps}")
  warmup = max(1, int(round(warmup_fraction * total_steps)))
  return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=warmup,
                                            decay_steps=max(total_steps, warmup + 1),
                                            end_value=peak * min_lr_ratio)


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def _is_axes(x) -> bool:
  return x is None or (isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x))


def weight_decay_mask(params: Any) -> Any:
  """True for weight matrices: ndim >= 2 and no 'norm'/'bias' in the path (stacked-layer norms are 2-D)."""
  def decays(path, x):
    names = [n.lower() for n in _path_names(path)]
    if any("norm" in n or "bias" in n or n.endswith("_b") for n in names):
      return False
    return np.ndim(x) >= 2
  return jax.tree_util.tree_map_with_path(decays, params)


@dataclasses.dataclass(frozen=True, eq=False)
class AxisMask:
  """Train only the slices of a leaf where `keep` [n] is True along its logical axis `axis` ('vocab' or 'layers')."""
  axis: str
  keep: np.ndarray


def trainable_mask(params: Any, logical_axes: Any, mode: str, new_token_start: int | None = None,
                   frozen_layers: int = 0) -> Any:
  """Per leaf: True (train), False (freeze) or an `AxisMask` (rows >= new_token_start along 'vocab', layers >=
  frozen_layers along 'layers').

  Args:
    params: the parameter pytree (arrays or ShapeDtypeStructs).
    logical_axes: matching pytree of logical-axis tuples (`param_logical_axes(config)`).
    mode: one of TRAINABLE_MODES.
    new_token_start: first row of the added tool tokens (the vocabulary size before `extend_vocab`).
    frozen_layers: the bottom layers left untouched (0 = none).
  """
  if mode not in TRAINABLE_MODES:
    raise ValueError(f"config.train.trainable must be one of {TRAINABLE_MODES}, got {mode!r}")
  if mode != "all" and new_token_start is None:
    raise ValueError(f"config.train.trainable={mode!r} needs new_token_start (vocabulary size before the tool tokens)")
  flat_axes, treedef = jax.tree_util.tree_flatten(logical_axes, is_leaf=_is_axes)
  flat_params = treedef.flatten_up_to(params)
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  out = []
  for path, x, axes in zip(paths, flat_params, flat_axes):
    if mode == "all":
      m = True
    elif any("lora" in n.lower() for n in _path_names(path)):
      m = mode == "lora_and_new_tokens"
    elif axes is not None and "vocab" in axes:
      vocab = np.shape(x)[axes.index("vocab")]
      if not 0 <= new_token_start <= vocab:
        raise ValueError(f"new_token_start={new_token_start} outside the vocabulary of {_path_names(path)} ({vocab})")
      m = AxisMask("vocab", np.arange(vocab) >= new_token_start)
    else:
      m = False
    if frozen_layers and m is True and axes is not None and "layers" in axes:
      m = AxisMask("layers", np.arange(np.shape(x)[axes.index("layers")]) >= frozen_layers)
    out.append(m)
  return jax.tree_util.tree_unflatten(treedef, out)


def _is_mask_leaf(m) -> bool:
  return isinstance(m, (bool, AxisMask))


def _row_mask_like(mask: AxisMask, x: jax.Array, axes: tuple) -> jax.Array:
  shape = [1] * x.ndim
  shape[axes.index(mask.axis)] = -1
  return jnp.asarray(mask.keep).reshape(shape)


def apply_mask(tree: Any, mask: Any, logical_axes: Any) -> Any:
  """Zeroes frozen leaves (without reading them) and frozen rows of row-masked leaves."""
  flat_axes, treedef = jax.tree_util.tree_flatten(logical_axes, is_leaf=_is_axes)
  flat_mask = treedef.flatten_up_to(mask)
  flat = treedef.flatten_up_to(tree)
  out = []
  for x, m, axes in zip(flat, flat_mask, flat_axes):
    if m is True:
      out.append(x)
    elif m is False:
      out.append(jnp.zeros(x.shape, x.dtype))
    else:
      out.append(jnp.where(_row_mask_like(m, x, axes), x, jnp.zeros((), x.dtype)))
  return jax.tree_util.tree_unflatten(treedef, out)


def masked_updates(mask: Any, logical_axes: Any) -> optax.GradientTransformation:
  """An optax stage that zeroes the updates of frozen leaves and rows (keeps weight decay off them too)."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return apply_mask(updates, mask, logical_axes), state

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
