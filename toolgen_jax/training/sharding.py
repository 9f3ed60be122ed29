"""Device mesh and logical-axis rules: the only place that maps names to devices.

The model names the axes of every parameter ('vocab', 'embed', 'heads', 'kv_heads', 'head_dim', 'mlp', 'layers')
and constrains activations with ('activation_batch', 'activation_length', ...). A rule table from the config maps
each logical name to zero, one or several mesh axes of a (data, fsdp, tensor) mesh (MaxText `logical_axis_rules`).
FSDP = parameters and optimizer state sharded over 'fsdp' along 'embed', batch sharded over ('data', 'fsdp').

The same code runs on one CPU device (every axis has size 1) and on a pod slice.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, Any]]  # (logical name, None | mesh axis | tuple of mesh axes)

log = logging.getLogger(__name__)


def maybe_initialize_distributed(mode: str = "auto") -> bool:
  """Calls `jax.distributed.initialize()` when the run spans several hosts; returns whether it did.

  'auto' initialises when a multi-host launcher is detected: a TPU pod slice (TPU_WORKER_HOSTNAMES lists more than
  one host), SLURM with several tasks, or JAX_COORDINATOR_ADDRESS set (then JAX_NUM_PROCESSES / JAX_PROCESS_ID are
  read by jax itself). Must run before anything touches `jax.devices()`.
  """
  if mode not in ("auto", "always", "never"):
    raise ValueError(f"config.mesh.distributed must be auto | always | never, got {mode!r}")
  if mode == "never":
    return False
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  multi = (len(hosts) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1
           or bool(os.environ.get("JAX_COORDINATOR_ADDRESS")))
  if mode == "always" or multi:
    jax.distributed.initialize()
    log.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
  return False


def mesh_shape(mesh_config: Mapping[str, Any], num_devices: int) -> tuple[int, int, int]:
  """Resolves (data, fsdp, tensor); one entry may be -1 (= the remaining devices). Checks the product."""
  shape = [int(mesh_config["data"]), int(mesh_config["fsdp"]), int(mesh_config["tensor"])]
  if sum(s == -1 for s in shape) > 1:
    raise ValueError(f"config.mesh: at most one of data/fsdp/tensor may be -1, got {shape}")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh: axis sizes must be positive or -1, got {shape}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"config.mesh {shape}: {num_devices} devices are not divisible by {known}")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"config.mesh (data, fsdp, tensor) = {tuple(shape)} needs {int(np.prod(shape))} devices, "
                     f"but {num_devices} are available")
  return tuple(shape)  # type: ignore[return-value]


def make_mesh(mesh_config: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all global devices), topology-aware on TPU."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def rules_from_config(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """Normalises config rules to hashable ((name, None | str | tuple[str, ...]), ...) and validates mesh axes."""
  out = []
  for i, rule in enumerate(rules):
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"config.mesh.logical_axis_rules[{i}] must be (logical_name, mesh_axes), got {rule!r}")
    name, axes = rule
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
      bad = [a for a in axes if a not in MESH_AXES]
    else:
      bad = [] if axes is None or axes in MESH_AXES else [axes]
    if bad:
      raise ValueError(f"config.mesh.logical_axis_rules[{i}] ({name!r}): unknown mesh axes {bad}; "
                       f"known: {MESH_AXES}")
    out.append((name, axes))
  return tuple(out)


def logical_to_spec(logical: Sequence[str | None] | None, rules: Rules, *, shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> P:
  """PartitionSpec for one array from its logical axis names.

  A name without a rule raises (a typo would otherwise silently replicate an 8B-parameter tensor). A mesh axis
  already used by an earlier dimension is skipped (as in flax). With `shape` and `mesh`, mesh axes that do not divide
  the dimension are dropped, so tiny test models and odd vocabularies still compile; size-1 axes are dropped too.
  """
  if logical is None:
    return P()
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for d, name in enumerate(logical):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no rule in config.mesh.logical_axis_rules "
                     f"(known: {sorted(table)})")
    axes = table[name]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a not in used)
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape[a] > 1)
      if shape is not None:
        kept, size = [], 1
        for a in axes:
          if shape[d] % (size * mesh.shape[a]) == 0:
            kept.append(a)
            size *= mesh.shape[a]
        axes = tuple(kept)
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def _is_axes(x) -> bool:
  return x is None or (isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x))


def tree_shardings(logical_tree: Any, shapes_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a pytree (params, optimizer state) from a matching pytree of logical-axis tuples."""
  flat_axes, treedef = jax.tree_util.tree_flatten(logical_tree, is_leaf=_is_axes)
  flat_shapes = treedef.flatten_up_to(shapes_tree)
  out = []
  for axes, x in zip(flat_axes, flat_shapes):
    shape = tuple(np.shape(x))
    if axes is not None and len(axes) != len(shape):
      raise ValueError(f"logical axes {axes} do not match an array of shape {shape}")
    out.append(NamedSharding(mesh, logical_to_spec(axes, rules, shape=shape, mesh=mesh)))
  return jax.tree_util.tree_unflatten(treedef, out)


def batch_spec(rules: Rules, ndim: int = 2) -> P:
  """[B, T, ...] inputs: batch over whatever 'activation_batch' maps to, the rest replicated."""
  return logical_to_spec(("activation_batch",) + (None,) * (ndim - 1), rules)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(rules, ndim))


def batch_divisor(mesh: Mesh, rules: Rules) -> int:
  """How many ways the global batch is split (it must divide the batch size)."""
  spec = batch_spec(rules)
  axes = spec[0] if len(spec) else None
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Makes the model's `nn.with_logical_constraint` calls bind to `mesh` with `rules` while tracing."""
  with nn.logical_axis_rules(tuple(rules)), jax.set_mesh(mesh):
    yield


def shard_params(params: Any, logical_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """Places host (or single-device) params onto the mesh according to the rules."""
  shardings = tree_shardings(logical_tree, params, mesh, rules)
  return jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)


def host_local_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict[str, jax.Array]:
  """Assembles each host's rows (its slice of the global batch) into global arrays sharded over the batch axes.

  On one host this is a plain device_put; on a pod each host passes only the rows it loaded.
  """
  out = {}
  for k, v in batch.items():
    sharding = batch_sharding(mesh, rules, np.ndim(v))
    if jax.process_count() == 1:
      out[k] = jax.device_put(jnp.asarray(v), sharding)
    else:
      out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
  return out


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the arguments of an ahead-of-time `.lower()` (nothing allocated)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def bytes_per_device(tree: Any) -> int:
  """Largest per-device footprint of a (sharded) pytree of arrays or ShapeDtypeStructs with shardings."""
  total: dict[int, int] = {}
  for x in jax.tree.leaves(tree):
    sharding = x.sharding
    shard_shape = sharding.shard_shape(tuple(x.shape))
    nbytes = int(np.prod(shard_shape)) * jnp.dtype(x.dtype).itemsize
    for d in sharding.device_set:
      total[d.id] = total.get(d.id, 0) + nbytes
  return max(total.values()) if total else 0
