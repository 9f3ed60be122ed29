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
