"""Tool tokenizers at ToolBench scale (issue #4): RQ-VAE, residual k-means, k-means vs scikit-learn, Sinkhorn, collisions.

    python benchmarks/tokenizers.py                 # real names (ToolGen virtual_tokens.txt) embedded with MiniLM
    python benchmarks/tokenizers.py --synthetic     # synthetic 384-d embeddings of the same count

Data: the 46,984 (tool, api) names of ToolGen's `virtual_tokens.txt`, written "tool: api" and embedded with the
Flax MiniLM (cached in --workdir, keyed by corpus and encoder; the first run embeds for minutes on 2 CPU cores).
The co-occurrence graph is synthetic (no query set covers these 47k tools): a ring over the APIs of each tool
(APIs of one tool are used together) plus uniformly random edges up to --edges.
Residual k-means needs P gist positions; MiniLM gives one vector, so the two positions are the two halves of it
(the same shapes as a real P = 2 run, for timing).

Timings alternate ours / reference where there is one and report medians after a warm-up run; the last stdout line
is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

# This file is named like the `tokenizers` package: replace the script folder on sys.path by the repo root.
sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from toolgen_jax import assets  # noqa: E402
from toolgen_jax.codebook import codebook as cb_lib  # noqa: E402
from toolgen_jax.codebook import collisions, embed, kmeans, pca, rqvae, sinkhorn, stats  # noqa: E402
from toolgen_jax.codebook import residual_kmeans as rkm  # noqa: E402

N_TOOLS = 46984


def load_names() -> list[str] | None:
  root = assets.shared_data_dir()
  path = root / "ToolGen/training/src/configs/virtual_tokens.txt" if root else None
  if path is None or not path.exists():
    return None
  lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
  return [l[2:-2].replace("&&", ": ") for l in lines if l != "<<Finish>>"]


def synthetic_embeddings(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(2000, dim))
  x = centers[rng.integers(0, 2000, n)] + 0.7 * rng.normal(size=(n, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cooccurrence_edges(names: list[str] | None, n: int, total: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  edges = []
  if names is not None:
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(names):
      groups.setdefault(s.split(": ", 1)[0], []).append(i)
    for ids in groups.values():
      if len(ids) > 1:
        edges += [(ids[k], ids[(k + 1) % len(ids)]) for k in range(len(ids) if len(ids) > 2 else 1)]
  extra = max(0, total - len(edges))
  a, b = rng.integers(0, n, extra), rng.integers(0, n, extra)
  edges += [(int(u), int(v)) for u, v in zip(a, b) if u != v]
  e = np.unique(np.sort(np.asarray(edges, np.int64), axis=1), axis=0)
  return e.astype(np.int32)


def collab_effect(args, plots: pathlib.Path) -> dict:
  """Co-occurring tools' code distance with and without the collaborative loss, on COLT ToolBench-G3's real
  co-usage graph (1,415 tools, 8,798 edges): L=2, K=64, otherwise the released defaults."""
  root = assets.shared_data_dir()
  if root is None or not (root / "COLT/datasets/ToolBenchG3").is_dir():
    return {}
  from toolgen_jax.data.readers import load_source
  ds = load_source("beir", root / "COLT/datasets/ToolBenchG3", log=False)
  x = embed.cached_encode([f"{t.category}: {t.tool_name}: {t.api_name}" for t in ds.corpus], args.workdir,
                          max_len=32, progress=False)
  edges, w = ds.cooccurrence.edges()
  res, out = {}, {}
  for lam in (0.0, rqvae.PAPER_LAMBDA):
    cfg = rqvae.RQVAEConfig(codebook_size=64, steps=300, batch_size=512, edge_batch_size=512, collab_lambda=lam,
                            dead_code_every=50)
    state, _ = rqvae.train(cfg, x, edges, w)
    codes = np.asarray(rqvae.assign_codes(cfg, state.params, x).codes)
    res[f"lambda={lam:g}"] = codes
    out[f"g3_lambda{lam:g}_mean_code_distance"] = stats.mean_code_distance(codes, edges, w)
    out[f"g3_lambda{lam:g}_edges_sharing_first_code"] = stats.edge_prefix_sharing(codes, edges, w)[0]
    out[f"g3_lambda{lam:g}_recon"] = rqvae.reconstruction_error(cfg, state.params, x)
  stats.plot_collab_effect(res, edges, plots / "collab_effect_toolbench_g3.png", w)
  print(out, flush=True)
  return out


def timed(fn, *args, **kw):
  t = time.perf_counter()
  out = fn(*args, **kw)
  jax.block_until_ready(out)
  return time.perf_counter() - t, out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.environ.get("TOOLGEN_BENCH_WORKDIR", "/tmp/toolgen_codebook_work"))
  p.add_argument("--synthetic", action="store_true")
  p.add_argument("--edges", type=int, default=100_000)
  p.add_argument("--rqvae_steps", type=int, default=300)
  p.add_argument("--rqvae_batch", type=int, default=512)
  p.add_argument("--edge_batch", type=int, default=256)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--skip_collab", action="store_true", help="skip the lambda = 0 vs 1 comparison on ToolBench-G3")
  p.add_argument("--plots", default="", help="folder for the stats PNGs ('' = <workdir>/plots)")
  p.add_argument("--parts", default="sinkhorn,kmeans,residual,rqvae",
                 help="comma-separated subset of sinkhorn,kmeans,residual,rqvae to run")
  args = p.parse_args(argv)
  parts = set(args.parts.split(","))
  out: dict = {"machine": f"{platform.machine()} nproc={os.cpu_count()}", "jax": jax.__version__}

  names = None if args.synthetic else load_names()
  if names is None:
    x = synthetic_embeddings(N_TOOLS)
    out["data"] = "synthetic 384-d"
  else:
    t = time.perf_counter()
    x = embed.cached_encode(names, args.workdir, max_len=128)
    out["data"] = f"ToolGen virtual_tokens.txt names, MiniLM (Flax), embed/cache-load {time.perf_counter() - t:.1f}s"
  n = len(x)
  edges = cooccurrence_edges(names, n, args.edges)
  out |= {"num_tools": n, "num_edges": int(len(edges))}
  print(f"{n} tools, {len(edges)} edges; {out['data']}", flush=True)

  xs = jnp.asarray(x)
  if "sinkhorn" in parts:
    sinkhorn_part(args, xs, n, out)
  if "kmeans" in parts:
    kmeans_part(args, xs, out)
  if "residual" in parts:
    residual_part(x, n, out)
  if "rqvae" in parts:
    rqvae_part(args, x, edges, out)
  if not args.skip_collab:
    out |= collab_effect(args, pathlib.Path(args.plots or pathlib.Path(args.workdir) / "plots"))
  print(json.dumps(out))


def sinkhorn_part(args, xs, n, out):
  """Sinkhorn 47k x 1024 (after compilation): stabilised scaling vs pure log domain."""
  cents = xs[jax.random.choice(jax.random.key(0), n, (1024,), replace=False)]
  cost = kmeans.sq_distances(xs, cents).block_until_ready()
  fast = lambda: sinkhorn.sinkhorn_assign(cost, 0.01, 50, absorb_every=25)
  logd = lambda: sinkhorn.sinkhorn_assign(cost, 0.01, 50, absorb_every=0)
  fast(), logd()
  tf, tl = [], []
  for _ in range(args.rounds):
    tf.append(timed(fast)[0])
    tl.append(timed(logd)[0])
  a_f, a_l = np.asarray(fast()), np.asarray(logd())
  out |= {"sinkhorn_seconds": float(np.median(tf)), "sinkhorn_logdomain_seconds": float(np.median(tl)),
          "sinkhorn_agreement_with_logdomain": float((a_f == a_l).mean()),
          "sinkhorn_max_code_count": int(np.bincount(a_f, minlength=1024).max()),
          "nearest_max_code_count": int(np.bincount(np.asarray(jnp.argmin(cost, 1)), minlength=1024).max())}
  print({k: v for k, v in out.items() if k.startswith(("sinkhorn", "nearest"))}, flush=True)
  del cost



def kmeans_part(args, xs, out):
  """k-means (K=512 on the 32-d PCA of the embeddings) vs scikit-learn, same init count and tolerance."""
  from sklearn.cluster import KMeans
  y = np.asarray(pca.transform(pca.fit(xs, 32), xs))
  ours = lambda seed: kmeans.kmeans(jax.random.key(seed), y, 512, n_init=1, max_iter=100, tol=1e-4)
  ref = lambda seed: KMeans(512, n_init=1, max_iter=100, tol=1e-4, random_state=seed, algorithm="lloyd").fit(y)
  ours(0).inertia.block_until_ready()
  to, ts, io, isk = [], [], [], []
  for r in range(args.rounds):
    dt, res = timed(lambda: ours(r).inertia)
    to.append(dt)
    io.append(float(res))
    t = time.perf_counter()
    sk = ref(r)
    ts.append(time.perf_counter() - t)
    isk.append(sk.inertia_)
  out |= {"kmeans_seconds": float(np.median(to)), "sklearn_kmeans_seconds": float(np.median(ts)),
          "kmeans_ratio_vs_sklearn": float(np.median(to) / np.median(ts)),
          "kmeans_inertia_ratio_vs_sklearn": float(np.median(io) / np.median(isk))}
  print({k: v for k, v in out.items() if k.startswith(("kmeans", "sklearn"))}, flush=True)



def residual_part(x, n, out):
  """Residual k-means: K=512, 2 positions x 2 levels, PCA 32 (incl. compile)."""
  t = time.perf_counter()
  cfg_r = rkm.ResidualKMeansConfig(pca_dim=32, num_levels=2, codebook_size=512, kmeans_iters=100)
  cb_r = cb_lib.from_residual_kmeans(cfg_r, x.reshape(n, 2, -1))
  out |= {"residual_kmeans_seconds": time.perf_counter() - t,
          "residual_kmeans_collision_rate_before": cb_r.collision_report["rate_before"],
          "residual_kmeans_collision_rate_after": collisions.collision_rate(cb_r.codes)}
  print({k: v for k, v in out.items() if k.startswith("residual")}, flush=True)



def rqvae_part(args, x, edges, out):
  """RQ-VAE: L=2, K=1024, collaborative loss + Sinkhorn; training + corpus assignment + resolution."""
  cfg = rqvae.RQVAEConfig(num_levels=2, codebook_size=1024, collab_lambda=rqvae.PAPER_LAMBDA,
                          steps=args.rqvae_steps, batch_size=args.rqvae_batch, edge_batch_size=args.edge_batch,
                          dead_code_every=50)
  t = time.perf_counter()
  state, hist = rqvae.train(cfg, x, edges)
  t_train = time.perf_counter() - t
  cb = cb_lib.from_rqvae(cfg, x, edges, state=state)
  t_all = time.perf_counter() - t
  rep = cb.collision_report
  out |= {"rqvae_seconds": t_all, "rqvae_train_seconds": t_train, "rqvae_steps": cfg.steps,
          "rqvae_recon_first_block": hist[0]["recon"], "rqvae_recon_last_block": hist[-1]["recon"],
          "rqvae_recon_levels": [rqvae.reconstruction_error(cfg, state.params, x, l) for l in (1, 2)],
          "collision_rate_before": rep["rate_before"], "collision_rate_after_sinkhorn": rep["rate_after_sinkhorn"],
          "collision_rate_after": collisions.collision_rate(cb.codes), "suffixed_tools": rep["suffixed_tools"]}
  s = stats.code_stats(cb.codes[:, :2], [1024, 1024])
  out |= {"rqvae_utilisation": s["utilisation"], "rqvae_perplexity": s["perplexity"],
          "rqvae_edges_sharing_first_code": stats.edge_prefix_sharing(cb.codes, edges)[0]}
  print({k: v for k, v in out.items() if k.startswith(("rqvae", "collision", "suffixed"))}, flush=True)
  plots = pathlib.Path(args.plots or pathlib.Path(args.workdir) / "plots")
  stats.plot_code_usage(cb.codes[:, :2], [1024, 1024], plots / "rqvae_code_usage.png", title="RQ-VAE (L=2, K=1024)")
  out["plots"] = str(plots)


if __name__ == "__main__":
  main()
