"""LoRA as a transformation of the parameter tree (Hu et al. 2021, Eq. 3: h = W x + (alpha / r) B A x).

`apply_lora` adds `lora_a` [L, *in, r] and `lora_b` [L, r, *out] next to each target kernel and records rank/alpha/
dropout/targets in the config; `llama.forward` adds the low-rank path whenever the factors are present (dropout on
its input when a `dropout_rng` is passed). B starts at zero, so the adapted model starts equal to the base.
`trainable_mask` says what trains (LoRA factors, added token rows, top layers: the one definition, which the
optimizer uses too), `merge_lora` folds the factors back into the kernels for export.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.models.llama import LlamaConfig, _shapes_and_axes, param_logical_axes

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


@dataclasses.dataclass(frozen=True, eq=False)
class AxisMask:
  """Train only the slices of a leaf where `keep` [n] is True along its logical axis `axis` ('vocab' or 'layers'),
  which is axis number `dim` of the leaf."""
  axis: str
  keep: np.ndarray
  dim: int


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def _is_axes(x) -> bool:
  return x is None or (isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x))


def _is_mask_leaf(m) -> bool:
  return isinstance(m, (bool, np.bool_, AxisMask))


def trainable_mask(params, logical_axes: Any, mode: str = "lora_and_new_tokens", new_token_start: int | None = None,
                   frozen_layers: int = 0, *, new_token_ids: Sequence[int] | np.ndarray | None = None) -> Any:
  """What trains, per leaf: True (train), False (freeze) or an `AxisMask` (a slice along 'vocab' or 'layers').

  The one definition of the trainable parts (the optimizer re-exports it):
  * 'all': every parameter (full fine-tuning); 'lora': LoRA factors only (any leaf whose path has a key
    containing 'lora'); 'lora_and_new_tokens': LoRA factors plus the added token rows of every leaf with a 'vocab'
    axis (input embedding, untied LM head); 'new_tokens': those rows only.
  * The added rows are the rows >= new_token_start, or exactly `new_token_ids` (e.g. gist tokens).
  * frozen_layers = n further freezes the slices [0, n) of every trained stacked-layer leaf ('layers' axis).
  A tied embedding is a 'vocab' leaf like any other: in the new-token modes its pretrained rows stay bit-identical
  because the mask zeroes their gradient and update (`apply_mask`), not because the head cannot reach them.

  Args:
    params: the parameter pytree (arrays or ShapeDtypeStructs).
    logical_axes: matching pytree of logical-axis tuples (`llama.param_logical_axes`), or the `LlamaConfig`.
    mode: one of MODES.
  """
  if isinstance(logical_axes, LlamaConfig):
    logical_axes = param_logical_axes(logical_axes)
  if mode not in MODES:
    raise ValueError(f"config.train.trainable must be one of {MODES}, got {mode!r}")
  needs_rows = mode in ("lora_and_new_tokens", "new_tokens")
  if needs_rows and new_token_start is None and (new_token_ids is None or len(new_token_ids) == 0):
    raise ValueError(f"config.train.trainable={mode!r} needs new_token_start (vocabulary size before the tool "
                     "tokens) or new_token_ids")
  flat_axes, treedef = jax.tree_util.tree_flatten(logical_axes, is_leaf=_is_axes)
  flat_params = treedef.flatten_up_to(params)
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  is_lora = [any("lora" in n.lower() for n in _path_names(p)) for p in paths]
  if mode in ("lora", "lora_and_new_tokens") and not any(is_lora):
    raise ValueError(f"trainable={mode!r} needs LoRA factors (apply_lora first)")
  out = []
  for path, x, axes, lora_leaf in zip(paths, flat_params, flat_axes, is_lora):
    if mode == "all":
      m = True
    elif lora_leaf:
      m = mode in ("lora", "lora_and_new_tokens")
    elif needs_rows and axes is not None and "vocab" in axes:
      dim = axes.index("vocab")
      vocab = np.shape(x)[dim]
      if new_token_ids is not None and len(new_token_ids):
        keep = np.zeros((vocab,), bool)
        keep[np.asarray(new_token_ids)] = True
      else:
        if not 0 <= new_token_start <= vocab:
          raise ValueError(f"new_token_start={new_token_start} outside the vocabulary of {_path_names(path)} "
                           f"({vocab})")
        keep = np.arange(vocab) >= new_token_start
      m = AxisMask("vocab", keep, dim)
    else:
      m = False
    if frozen_layers and m is True and axes is not None and "layers" in axes:
      dim = axes.index("layers")
      m = AxisMask("layers", np.arange(np.shape(x)[dim]) >= frozen_layers, dim)
    out.append(m)
  return jax.tree_util.tree_unflatten(treedef, out)


def _keep_like(mask: AxisMask, x) -> jax.Array:
  shape = [1] * np.ndim(x)
  shape[mask.dim] = -1
  return jnp.asarray(mask.keep).reshape(shape)


def apply_mask(tree, mask, logical_axes: Any = None) -> Any:
  """Zeroes frozen leaves (without reading them) and the frozen slices of `AxisMask` leaves.

  logical_axes is accepted for older call sites and not needed (an `AxisMask` knows its dimension)."""
  del logical_axes

  def one(m, x):
    if m is True or (isinstance(m, np.bool_) and m):
      return x
    if not isinstance(m, AxisMask):
      return jnp.zeros(x.shape, x.dtype)
    return jnp.where(_keep_like(m, x), x, jnp.zeros((), x.dtype))

  return jax.tree.map(one, mask, tree, is_leaf=_is_mask_leaf)


def mask_gradients(grads, mask) -> Any:
  """Zeroes gradients (or updates) outside the mask (whole leaves or slices): `apply_mask`."""
  return apply_mask(grads, mask)


def optimizer_labels(mask) -> Any:
  """'trainable' / 'frozen' per leaf (any slice trains -> trainable), for `optax.multi_transform`."""
  return jax.tree.map(lambda m: "trainable" if (m.keep.any() if isinstance(m, AxisMask) else bool(m)) else "frozen",
                      mask, is_leaf=_is_mask_leaf)


def count_trainable(params, mask) -> int:
  """Number of trainable scalars under `mask` (for logs: LoRA runs report this next to the model size)."""
  tot = 0
  for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask, is_leaf=_is_mask_leaf)):
    size = int(np.prod(np.shape(x)))
    if isinstance(m, AxisMask):
      tot += size // np.shape(x)[m.dim] * int(m.keep.sum())
    elif m:
      tot += size
  return tot
