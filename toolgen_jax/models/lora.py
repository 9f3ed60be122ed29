"""LoRA as a transformation of the parameter tree (Hu et al. 2021, Eq. 3: h = W x + (alpha / r) B A x).

`apply_lora` adds `lora_a` [L, *in, r] and `lora_b` [L, r, *out] next to each target kernel and records rank/alpha/
dropout/targets in the config; `llama.forward` adds the low-rank path whenever the factors are present (dropout on
its input when a `dropout_rng` is passed). B starts at zero, so the adapted model starts equal to the base.
`trainable_mask` says what trains (LoRA factors and/or new token rows), `merge_lora` folds the factors back into
the kernels for export.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.models.llama import LlamaConfig, _shapes_and_axes

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODES = ("all", "lora", "lora_and_new_tokens", "new_tokens")


def apply_lora(params, config: LlamaConfig, rng: jax.Array, *, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj")
               ) -> tuple[dict, LlamaConfig]:
  """Adds LoRA factors to `targets`; A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as in PEFT, B = 0."""
  targets = tuple(targets)
  unknown = [t for t in targets if t not in TARGETS]
  if unknown:
    raise ValueError(f"unknown LoRA targets {unknown}; choose from {TARGETS}")
  if rank <= 0:
    raise ValueError(f"LoRA rank must be positive, got {rank}")
  if config.lora_rank:
    raise ValueError("params already carry LoRA factors; merge_lora first")
  new_config = config.replace(lora_rank=rank, lora_alpha=float(alpha), lora_dropout=float(dropout),
                              lora_targets=targets)
  specs = _shapes_and_axes(new_config)
  dt = jnp.dtype(config.param_dtype)
  layers = {k: dict(v) for k, v in params["layers"].items()}
  keys = jax.random.split(rng, len(targets))
  for key, name in zip(keys, targets):
    a_shape = specs[("layers", name, "lora_a")][0]
    b_shape = specs[("layers", name, "lora_b")][0]
    fan_in = int(np.prod(a_shape[1:-1]))
    bound = 1.0 / np.sqrt(fan_in)
    layers[name]["lora_a"] = jax.random.uniform(key, a_shape, jnp.float32, -bound, bound).astype(dt)
    layers[name]["lora_b"] = jnp.zeros(b_shape, dt)
  return {**params, "layers": layers}, new_config


def lora_delta(p: dict, config: LlamaConfig) -> jax.Array:
  """(alpha / r) * A B reshaped to the kernel's shape [L, *in, *out]."""
  a, b = p["lora_a"], p["lora_b"]
  L, r = a.shape[0], a.shape[-1]
  d = jnp.einsum("lir,lro->lio", a.reshape(L, -1, r).astype(jnp.float32), b.reshape(L, r, -1).astype(jnp.float32))
  return (config.lora_alpha / config.lora_rank) * d.reshape(p["kernel"].shape)


def merge_lora(params, config: LlamaConfig) -> tuple[dict, LlamaConfig]:
  """W <- W + (alpha / r) A B for every target; returns params without factors and a config without LoRA."""
  if not config.lora_rank:
    return params, config
  layers = {k: dict(v) for k, v in params["layers"].items()}
  for name in config.lora_targets:
    p = layers[name]
    p["kernel"] = (p["kernel"].astype(jnp.float32) + lora_delta(p, config)).astype(p["kernel"].dtype)
    del p["lora_a"], p["lora_b"]
  return {**params, "layers": layers}, config.replace(lora_rank=0, lora_alpha=0.0, lora_dropout=0.0,
                                                      lora_targets=())


def trainable_mask(params, config: LlamaConfig, trainable: str = "lora_and_new_tokens",
                   new_token_ids: Sequence[int] | np.ndarray | None = None) -> Any:
  """A pytree like `params` saying what trains.

  Leaves are NumPy bools (the whole tensor trains or not), except that with *new_tokens modes the embedding gets a
  [V, 1] and an untied head a [1, V] bool array selecting the new token rows/columns: multiply gradients by it
  (`mask_gradients`) so the old rows stay bit-identical.

  trainable: 'all' | 'lora' | 'lora_and_new_tokens' | 'new_tokens' (config `train.trainable`).
  """
  if trainable not in MODES:
    raise ValueError(f"unknown trainable mode {trainable!r}; expected one of {MODES}")
  if trainable in ("lora", "lora_and_new_tokens") and not config.lora_rank:
    raise ValueError(f"trainable={trainable!r} needs LoRA factors (apply_lora first)")
  rows = None
  if trainable in ("lora_and_new_tokens", "new_tokens"):
    if new_token_ids is None or len(new_token_ids) == 0:
      raise ValueError(f"trainable={trainable!r} needs new_token_ids (ids returned by extend_vocab's tokenizer)")
    rows = np.zeros((config.vocab_size,), bool)
    rows[np.asarray(new_token_ids)] = True

  def leaf(path, _):
    keys = [getattr(k, "key", None) for k in path]
    name = keys[-1]
    if trainable == "all":
      return np.bool_(True)
    if name in ("lora_a", "lora_b"):
      return np.bool_(trainable != "new_tokens")
    if rows is not None and keys[:2] == ["embed", "embedding"]:
      return rows[:, None]
    if rows is not None and keys[:2] == ["lm_head", "kernel"]:
      return rows[None, :]
    return np.bool_(False)

  return jax.tree_util.tree_map_with_path(leaf, params)


def mask_gradients(grads, mask) -> Any:
  """Zeroes gradients outside the mask (whole leaves or rows)."""
  return jax.tree.map(lambda g, m: g * jnp.asarray(m, g.dtype), grads, mask)


def optimizer_labels(mask) -> Any:
  """'trainable' / 'frozen' per leaf (any True -> trainable), for `optax.multi_transform` / `optax.masked`."""
  return jax.tree.map(lambda m: "trainable" if np.any(m) else "frozen", mask)


def count_trainable(params, mask) -> int:
  """Number of trainable scalars under `mask` (for logs: LoRA runs report this next to the model size)."""
  tot = 0
  for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
    m = np.asarray(m)
    tot += int(np.prod(x.shape)) if m.ndim == 0 and m else 0
    if m.ndim:
      tot += int(np.broadcast_to(m, x.shape).sum())
  return tot
