"""Ahead-of-time compilation of the sharded train step on abstract arguments: memory per device, nothing allocated.

`jax.jit(step).lower(ShapeDtypeStructs with shardings).compile().memory_analysis()` gives the executable's argument,
output, temporary and generated-code bytes per device. Arguments are donated (the state is updated in place), so the
peak is arguments + temporaries + outputs that do not alias an argument.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from toolgen_jax.models import llama
from toolgen_jax.training import sharding as shd
from toolgen_jax.training import train


def train_step_memory(model: llama.LlamaConfig, train_config: Mapping[str, Any], mesh_config: Mapping[str, int],
                      rules, *, batch: int, seq_len: int, devices=None) -> dict:
  """Compiles the train step for a (batch, seq_len) global batch on `devices`; returns per-device byte counts."""
  mesh = shd.make_mesh(mesh_config, devices)
  steps = train.build_steps(model, train_config, mesh, rules, total_steps=1000)
  shapes = llama.param_shapes(model)
  abstract_state = jax.eval_shape(lambda p: train.init_train_state(p, steps.tx), shapes)
  state = shd.abstract_with_shardings(abstract_state, steps.state_shardings)
  dtypes = {"tokens": jnp.int32, "targets": jnp.int32, "weights": jnp.float32, "attention_mask": jnp.int32}
  batch_args = {k: jax.ShapeDtypeStruct((batch, seq_len), dtypes[k], sharding=steps.batch_shardings[k])
                for k in train.BATCH_KEYS}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  compiled = steps.lower_train(state, batch_args, rng).compile()
  ma = compiled.memory_analysis()
  rep = {k: int(getattr(ma, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                                           "temp_size_in_bytes", "generated_code_size_in_bytes")}
  rep["state_bytes_per_device"] = shd.bytes_per_device(state)
  # Peak live bytes: arguments + temporaries + outputs that are not donated-argument aliases.
  rep["bytes_per_device"] = (rep["argument_size_in_bytes"] + rep["temp_size_in_bytes"]
                             + rep["output_size_in_bytes"] - rep["alias_size_in_bytes"])
  rep["devices"] = mesh.devices.size
  rep["mesh"] = dict(mesh.shape)
  return rep
