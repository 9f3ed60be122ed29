"""Collision counts of each method's codebook under each collision policy (issue #16: "no method mixing").

    python benchmarks/collision_policies.py [--workdir workdirs/bench_collisions] [--rqvae-steps 400]

Corpus and codebook shapes of the CPU variants: BFCL tools of `configs/*.py:small`, MiniLM embeddings (cached in
--workdir), Toolscaler's PCA + residual k-means 2 x 128 and ToolWeaver's RQ-VAE 2 x 256 with the collaborative loss
(trained once, `--rqvae-steps` steps, then coded under every policy). Policies (`codebook/collisions.py`): report
(Toolscaler's), sinkhorn (ToolWeaver's), unique (ours). Prints a Markdown table; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from toolgen_jax.codebook import codebook as cb_lib  # noqa: E402
from toolgen_jax.codebook import collisions, embed, rqvae  # noqa: E402
from toolgen_jax.data import documents_from_config, from_config  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIELDS = ("groups_before", "tools_in_collisions", "rate_before", "moved_by_sinkhorn", "suffixed_tools",
          "shared_groups", "shared_tools", "largest_group", "rate_after")


def method_config(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config("small")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="workdirs/bench_collisions")
  ap.add_argument("--rqvae-steps", type=int, default=400)  # 0 = residual k-means only
  args = ap.parse_args()
  t0 = time.perf_counter()
  ts, tw = method_config("toolscaler"), method_config("toolweaver")
  ds = from_config(ts.data, seed=int(ts.seed))
  docs = documents_from_config(ds.corpus, ts.data)
  x = embed.cached_encode(docs, pathlib.Path(args.workdir) / "embeddings", embed.load_encoder("minilm"),
                          max_len=int(ts.encoder.max_len), progress=False)
  names = [t.name for t in ds.corpus]
  rows = []
  for policy in collisions.POLICIES:
    c = ts.codebook.copy_and_resolve_references()
    c.unlock()
    c.collisions = policy
    cb = cb_lib.build(c, x, names)
    rows.append({"method": "residual_kmeans 2x128 (toolscaler:small)", "policy": policy,
                 **{k: cb.collision_report[k] for k in FIELDS}})
    print(json.dumps(rows[-1]), flush=True)  # partial results, in case the RQ-VAE part is cut short
  if args.rqvae_steps <= 0:
    _table(n, rows, t0)
    return
  c = tw.codebook
  n = len(names)
  cfg = rqvae.RQVAEConfig(hidden=tuple(c.rqvae_hidden), code_dim=c.code_dim, num_levels=c.levels,
                          codebook_size=min(c.size, n), beta=c.beta, sinkhorn_epsilon=c.sinkhorn_epsilon,
                          sinkhorn_iters=c.sinkhorn_iters, collab_lambda=float(c.collab_lambda),
                          learning_rate=c.learning_rate, collab_form=c.collab_form,
                          collab_adjacency=tw.data.cooccurrence_normalization, batch_size=c.batch_size,
                          steps=args.rqvae_steps, seed=c.seed)
  edges, w = ds.cooccurrence.edges()
  state, _ = rqvae.train(cfg, x, edges, w)
  for policy in collisions.POLICIES:
    cb = cb_lib.from_rqvae(cfg, x, edges, w, state=state, collisions_policy=policy)
    rows.append({"method": f"rqvae 2x256 (toolweaver:small, {args.rqvae_steps} steps)", "policy": policy,
                 **{k: cb.collision_report[k] for k in FIELDS}})
  _table(n, rows, t0)


def _table(n, rows, t0):
  print(f"{n} BFCL tools\n")
  print("| codebook | policy | " + " | ".join(FIELDS) + " |")
  print("|---|---|" + "---:|" * len(FIELDS))
  for r in rows:
    vals = [f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in FIELDS]
    print(f"| {r['method']} | {r['policy']} | " + " | ".join(vals) + " |")
  print(json.dumps({"tools": n, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
  main()
