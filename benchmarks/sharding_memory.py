"""Ahead-of-time compiled Llama-3-8B train step under FSDP: per-device memory from the compiled executable.

Run: `python benchmarks/sharding_memory.py` (CPU, ~N minutes; nothing is allocated: every argument is a
jax.ShapeDtypeStruct carrying its NamedSharding). Simulates 64 host devices; FSDP-8 uses the first 8.
Last stdout line: JSON with bytes_per_device_fsdp8 / bytes_per_device_fsdp64 (batch 64 x 2048, remat on).
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=64"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import json
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from toolgen_jax import config as config_lib
from toolgen_jax.models import llama
from toolgen_jax.training import aot


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="llama3_8b")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--seq", type=int, default=2048)
  ap.add_argument("--loss_chunk", type=int, default=512)
  ap.add_argument("--fsdp", default="8,64")
  args = ap.parse_args()
  model = getattr(llama.LlamaConfig, args.model)(dtype="bfloat16", param_dtype="float32", remat=True)
  cfg = config_lib.base_config()
  cfg.train.loss_chunk = args.loss_chunk
  out = {"model": args.model, "batch": args.batch, "seq_len": args.seq, "remat": True, "loss_chunk": args.loss_chunk,
         "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(llama.param_shapes(model)))),
         "backend": jax.default_backend()}
  for n in [int(x) for x in args.fsdp.split(",")]:
    t0 = time.perf_counter()
    rep = aot.train_step_memory(model, cfg.train, {"data": 1, "fsdp": n, "tensor": 1}, cfg.mesh.logical_axis_rules,
                                batch=args.batch, seq_len=args.seq, devices=jax.devices()[:n])
    rep["compile_s"] = round(time.perf_counter() - t0, 1)
    print(f"FSDP-{n}: {json.dumps(rep)}", flush=True)
    out[f"bytes_per_device_fsdp{n}"] = rep["bytes_per_device"]
    out[f"fsdp{n}"] = rep
  out["fits_v4_32GB_fsdp8"] = out.get("bytes_per_device_fsdp8", 1 << 62) <= 32e9
  out["fits_v5e_16GB_fsdp64"] = out.get("bytes_per_device_fsdp64", 1 << 62) <= 16e9
  print(json.dumps(out))


if __name__ == "__main__":
  main()
