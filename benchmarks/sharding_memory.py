"""Ahead-of-time compiled Llama-3-8B train step under FSDP: per-device memory from the compiled executable.

Run: `python benchmarks/sharding_memory.py` (CPU, about 2 minutes, < 3 GB of host RAM). Nothing is allocated: every
argument is a jax.ShapeDtypeStruct carrying its NamedSharding, and `jit(...).lower(...).compile().memory_analysis()`
reports the executable's per-device bytes. 64 host devices are simulated; FSDP-8 uses the first 8.

Setting: global batch 64 x 2048 tokens per optimizer step, remat of every decoder layer, bf16 compute, fp32 master
weights + AdamW moments (12 bytes/parameter), loss over 512-token chunks (no full [B, T, V] logits).
FSDP-8 takes the batch as 8 microbatches of 8 rows (gradient accumulation, 1 row per device per microbatch) because
the model's dense attention materialises [rows, heads, T, T] float32 scores (4.3 GB per layer for 8 rows of 2048);
the same step without accumulation is reported as `fsdp8_no_accum`. FSDP-64 has 1 row per device without it.

Caveat: the CPU backend has no native bf16 matmuls and converts them to float32, so the temporaries are an upper
bound of what a TPU executable of the same program needs; the state bytes are exact.
Last stdout line: JSON with bytes_per_device_fsdp8 and bytes_per_device_fsdp64.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=64"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import json
import resource
import time

import jax
import numpy as np

import pathlib
# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/tokenizers.py would shadow the
# `tokenizers` package: drop that folder, put the repo root first.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from toolgen_jax import config as config_lib  # noqa: E402
from toolgen_jax.models import llama  # noqa: E402
from toolgen_jax.training import aot  # noqa: E402


def _run(model, n: int, accum: int, args) -> dict:
  cfg = config_lib.base_config()
  cfg.train.loss_chunk, cfg.train.grad_accum = args.loss_chunk, accum
  t0 = time.perf_counter()
  rep = aot.train_step_memory(model, cfg.train, {"data": 1, "fsdp": n, "tensor": 1}, cfg.mesh.logical_axis_rules,
                              batch=args.batch, seq_len=args.seq, devices=jax.devices()[:n])
  rep["grad_accum"] = accum
  rep["compile_s"] = round(time.perf_counter() - t0, 1)
  print(f"FSDP-{n} grad_accum={accum}: {rep['bytes_per_device'] / 1e9:.2f} GB/device "
        f"(state {rep['state_bytes_per_device'] / 1e9:.2f} GB, temporaries {rep['temp_size_in_bytes'] / 1e9:.2f} GB)",
        flush=True)
  return rep


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="llama3_8b")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--seq", type=int, default=2048)
  ap.add_argument("--loss_chunk", type=int, default=512)
  ap.add_argument("--accum8", type=int, default=8, help="gradient-accumulation microbatches for FSDP-8")
  args = ap.parse_args()
  model = getattr(llama.LlamaConfig, args.model)(dtype="bfloat16", param_dtype="float32", remat=True)
  out = {"model": args.model, "batch": args.batch, "seq_len": args.seq, "remat": True, "loss_chunk": args.loss_chunk,
         "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(llama.param_shapes(model)))),
         "backend": jax.default_backend(), "jax": jax.__version__}
  out["fsdp8"] = _run(model, 8, args.accum8, args)
  out["fsdp64"] = _run(model, 64, 1, args)
  out["fsdp8_no_accum"] = _run(model, 8, 1, args)
  out["bytes_per_device_fsdp8"] = out["fsdp8"]["bytes_per_device"]
  out["bytes_per_device_fsdp64"] = out["fsdp64"]["bytes_per_device"]
  out["fits_32GB_fsdp8"] = out["bytes_per_device_fsdp8"] <= 32e9
  out["fits_16GB_fsdp64"] = out["bytes_per_device_fsdp64"] <= 16e9
  out["host_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
