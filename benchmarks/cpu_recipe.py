"""The CPU training recipe: what freezing the bottom layers and running the LM head on target positions only buys.

One AdamW step of SmolLM2-135M (embedded GGUF weights) on a retrieval-shaped batch (B rows of T tokens, the last
three real tokens of each row are targets: two code tokens + end of turn), through `train.build_steps` exactly as
the pipeline calls it. Variants, timed alternately in one process (a noisy machine hurts all alike):

  full      every position through the head, gradients through all 30 layers (the default)
  targets   config.train.target_positions=4 (head + cross-entropy on 4 positions per row)
  frozen-N  target_positions=4 and config.train.frozen_layers=N (backward through the top 30-N layers only)

  python benchmarks/cpu_recipe.py --batch 8 --seq 96 --reps 5 --frozen 24,27

Last stdout line: JSON with the median seconds per step of each variant and its speed-up over `full`.
"""

from __future__ import annotations

import pathlib
import sys

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

from toolgen_jax import config as config_lib
from toolgen_jax.models import llama, weights
from toolgen_jax.training import sharding as shd
from toolgen_jax.training import train


def batch(mc, B, T, seed=0):
  rng = np.random.default_rng(seed)
  tok = rng.integers(0, mc.vocab_size, (B, T + 1)).astype(np.int32)
  lengths = rng.integers(T // 2, T + 1, B)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  w = np.zeros((B, T), np.float32)
  for r, n in enumerate(lengths):
    w[r, n - 3:n] = 1.0
  return {"tokens": tok[:, :-1], "targets": tok[:, 1:], "weights": w, "attention_mask": mask}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=96)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--frozen", default="24,27", help="comma-separated frozen_layers values to time")
  args = ap.parse_args()
  mc, params = weights.load_pretrained("smollm2")
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  variants = {"full": (0, 0), "targets": (0, 4)}
  for n in (int(v) for v in args.frozen.split(",") if v):
    variants[f"frozen-{n}"] = (n, 4)
  runs = {}
  for name, (frozen, m) in variants.items():
    cfg = config_lib.base_config()
    cfg.train.frozen_layers, cfg.train.target_positions, cfg.train.learning_rate = frozen, m, 1e-5
    steps = train.build_steps(mc, cfg.train, mesh, cfg.mesh.logical_axis_rules, total_steps=100, donate=True)
    runs[name] = [steps, steps.init(params)]
  b = shd.host_local_batch_to_global(batch(mc, args.batch, args.seq), mesh, shd.rules_from_config(
      config_lib.base_config().mesh.logical_axis_rules))
  rng = jax.random.PRNGKey(0)
  times = {k: [] for k in runs}
  for rep in range(args.reps + 1):  # rep 0 compiles
    for name, run in runs.items():
      t = time.perf_counter()
      run[1], m = run[0].train(run[1], b, rng)
      jax.block_until_ready(m["loss"])
      if rep:
        times[name].append(time.perf_counter() - t)
  med = {k: statistics.median(v) for k, v in times.items()}
  for k, v in med.items():
    print(f"{k:10s} {v:.3f} s/step  x{med['full'] / v:.2f}")
  print(json.dumps({"benchmark": "cpu_recipe", "batch": args.batch, "seq": args.seq, "reps": args.reps,
                    "seconds_per_step": {k: round(v, 4) for k, v in med.items()},
                    "speedup_vs_full": {k: round(med["full"] / v, 2) for k, v in med.items()},
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus, {jax.devices()[0].platform}"}))


if __name__ == "__main__":
  main()
