"""The sharded train step (`training.train.build_steps`, one-device mesh) vs the plain jitted step of
`benchmarks/model_step.py` vs transformers/PyTorch, SmolLM2-135M, full-parameter AdamW (lr 1e-5, wd 0.01, no clipping).

What the sharded step adds over the plain one: explicit in/out NamedShardings, donation, the NaN/inf guard
(`lax.cond` around the update), trainable/row masks, token-accuracy and grad-norm metrics. The three run alternately
in one process (a loaded shared machine hurts all alike); reported are medians after warm-up and the median of the
per-round ratios.

  python benchmarks/train_step_sharded.py            # batch 8 x 128, 5 timed rounds

Last stdout line: JSON with sharded_vs_torch_ratio (issue #6: keep <= 1.0) and sharded_vs_plain_ratio.
"""

from __future__ import annotations

import pathlib
import sys

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/tokenizers.py would shadow the
# `tokenizers` package that transformers imports.
sys.path = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import importlib.util  # noqa: E402
_spec = importlib.util.spec_from_file_location("model_step", ROOT / "benchmarks" / "model_step.py")
model_step = importlib.util.module_from_spec(_spec)  # the model issue's benchmark: torch builder, reference loss
_spec.loader.exec_module(model_step)
from toolgen_jax import config as config_lib  # noqa: E402
from toolgen_jax.models import weights  # noqa: E402
from toolgen_jax.training import sharding as shd  # noqa: E402
from toolgen_jax.training import train  # noqa: E402


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=1)
  args = ap.parse_args(argv)

  config, params = weights.load_pretrained("smollm2")
  seqs = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq + 1)).astype(np.int32)
  tokens_np = seqs[:, :-1]
  tt = torch.from_numpy(seqs).long()

  # ---- ours: the sharded step ----
  c = config_lib.base_config()
  c.train.learning_rate, c.train.warmup_fraction, c.train.min_lr_ratio = 1e-5, 0.0, 1.0  # constant 1e-5 as the others
  c.train.weight_decay, c.train.grad_clip = 0.01, 0.0
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  steps = train.build_steps(config, c.train, mesh, c.mesh.logical_axis_rules, total_steps=10_000)
  batch = shd.host_local_batch_to_global(
      {"tokens": tokens_np, "targets": seqs[:, 1:], "weights": np.ones(tokens_np.shape, np.float32),
       "attention_mask": np.ones(tokens_np.shape, np.int32)}, mesh, c.mesh.logical_axis_rules)
  sharded = {"state": steps.init(jax.tree.map(jnp.copy, params))}
  rng = jax.random.PRNGKey(0)
  losses = {}

  def sharded_step():
    sharded["state"], m = steps.train(sharded["state"], batch, rng)
    losses.setdefault("sharded", float(m["loss"]))
    jax.block_until_ready(sharded["state"].params)

  # ---- the plain jitted step of benchmarks/model_step.py ----
  opt = optax.adamw(1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
  plain_tokens = jnp.asarray(seqs)  # model_step's loss shifts inside: T+1 tokens -> T predictions

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, s, t):
    loss, g = jax.value_and_grad(model_step.next_token_loss_jax)(p, config, t)
    upd, s = opt.update(g, s, p)
    return optax.apply_updates(p, upd), s, loss

  plain = {"p": jax.tree.map(jnp.copy, params)}
  plain["s"] = opt.init(plain["p"])

  def plain_step():
    plain["p"], plain["s"], loss = step(plain["p"], plain["s"], plain_tokens)
    losses.setdefault("plain", float(loss))
    jax.block_until_ready(plain["p"])

  # ---- PyTorch ----
  model = model_step.build_torch(params, config)
  model.train()
  topt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

  def torch_step():
    logits = model(tt).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tt[:, 1:].reshape(-1))
    loss.backward()
    topt.step()
    topt.zero_grad(set_to_none=True)
    losses.setdefault("torch", float(loss.detach()))

  times = {"sharded": [], "plain": [], "torch": []}
  for i in range(args.warmup + args.reps):
    r = {"sharded": _timed(sharded_step), "plain": _timed(plain_step), "torch": _timed(torch_step)}
    if i >= args.warmup:
      for k, v in r.items():
        times[k].append(v)
  out = {"batch": args.batch, "seq": args.seq, "reps": args.reps,
         "machine": f"{platform.machine()} nproc={os.cpu_count()} load_avg={os.getloadavg()[0]:.1f}",
         "jax": jax.__version__, "torch": torch.__version__, "first_loss": losses}
  for k, v in times.items():
    out[f"{k}_s"] = round(statistics.median(v), 4)
  for a, b in (("sharded", "torch"), ("sharded", "plain"), ("plain", "torch")):
    ratios = [x / y for x, y in zip(times[a], times[b])]
    out[f"{a}_vs_{b}_ratio"] = round(statistics.median(ratios), 3)
    out[f"{a}_vs_{b}_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    print(f"{a}/{b}: {out[f'{a}_vs_{b}_ratio']:.3f} (rounds {out[f'{a}_vs_{b}_range']})")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
