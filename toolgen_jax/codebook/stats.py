"""Codebook statistics and PNG plots: usage per level, utilisation, perplexity, prefix sharing, collisions, and the
code distance of co-occurring tools (the collaborative loss' effect, ToolWeaver's analysis)."""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from toolgen_jax.codebook import collisions


def _level_counts(codes: np.ndarray, level: int, size: int) -> np.ndarray:
  col = codes[:, level]
  return np.bincount(col[col >= 0], minlength=size)


def code_stats(codes: np.ndarray, level_sizes: Sequence[int]) -> dict:
  """Per level: utilisation (fraction of the K codes used), perplexity exp(H(usage)) (K = perfectly balanced),
  max load; per prefix length: number of distinct prefixes and mean tools per prefix; the collision rate."""
  codes = np.asarray(codes)
  util, perp, max_load, n_prefix, per_prefix = [], [], [], [], []
  for level, k in enumerate(level_sizes):
    c = _level_counts(codes, level, k)
    p = c[c > 0] / c.sum()
    util.append(float((c > 0).mean()))
    perp.append(float(np.exp(-(p * np.log(p)).sum())))
    max_load.append(int(c.max()))
    distinct = len(np.unique(codes[:, :level + 1], axis=0))
    n_prefix.append(int(distinct))
    per_prefix.append(float(len(codes) / distinct))
  return {"utilisation": util, "perplexity": perp, "max_load": max_load, "distinct_prefixes": n_prefix,
          "tools_per_prefix": per_prefix, "collision_rate": collisions.collision_rate(codes)}


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[E, L], [E, L] -> [E] number of leading levels on which the two codes agree."""
  eq = np.asarray(a) == np.asarray(b)
  return np.where(eq.all(1), eq.shape[1], np.argmin(eq, axis=1))


def edge_prefix_sharing(codes: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None) -> list[float]:
  """Fraction (weighted) of co-occurrence edges whose endpoints share the first 1..L code levels."""
  codes = np.asarray(codes)
  e = np.asarray(edges)
  cpl = common_prefix_length(codes[e[:, 0]], codes[e[:, 1]])
  w = np.ones(len(e)) if weights is None else np.asarray(weights, np.float64)
  return [float(np.average(cpl >= l, weights=w)) for l in range(1, codes.shape[1] + 1)]


def mean_code_distance(codes: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None,
                       levels: int | None = None) -> float:
  """Mean over edges of the tree distance L - (common prefix length) between the endpoints' codes."""
  codes = np.asarray(codes)[:, :levels] if levels else np.asarray(codes)
  e = np.asarray(edges)
  cpl = common_prefix_length(codes[e[:, 0]], codes[e[:, 1]])
  w = np.ones(len(e)) if weights is None else np.asarray(weights, np.float64)
  return float(np.average(codes.shape[1] - cpl, weights=w))


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_code_usage(codes: np.ndarray, level_sizes: Sequence[int], path: str | pathlib.Path, title: str = "") -> str:
  """One panel per level: tools per code, codes sorted by load (a flat curve = balanced codes)."""
  plt = _plt()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  s = code_stats(codes, level_sizes)
  fig, axes = plt.subplots(1, len(level_sizes), figsize=(4 * len(level_sizes), 3), squeeze=False)
  for level, (ax, k) in enumerate(zip(axes[0], level_sizes)):
    c = np.sort(_level_counts(np.asarray(codes), level, k))[::-1]
    ax.plot(c)
    ax.set_title(f"level {level}: util {s['utilisation'][level]:.2f}, ppl {s['perplexity'][level]:.0f}/{k}")
    ax.set_xlabel("code (by load)")
    ax.set_ylabel("tools")
  fig.suptitle(title or f"collision rate {s['collision_rate']:.4f}")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return str(path)


def plot_collab_effect(results: dict[str, np.ndarray], edges: np.ndarray, path: str | pathlib.Path,
                       weights: np.ndarray | None = None) -> str:
  """Bar chart: for each labelled codebook (e.g. 'lambda=0', 'lambda=1'), the share of co-occurring pairs that
  share 1..L levels, and their mean code distance in the title."""
  plt = _plt()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig, ax = plt.subplots(figsize=(5, 3))
  width = 0.8 / max(len(results), 1)
  for i, (label, codes) in enumerate(results.items()):
    share = edge_prefix_sharing(codes, edges, weights)
    dist = mean_code_distance(codes, edges, weights)
    ax.bar(np.arange(len(share)) + i * width, share, width, label=f"{label} (dist {dist:.2f})")
  n_levels = max(len(edge_prefix_sharing(c, edges[:1])) for c in results.values()) if len(edges) else 0
  ax.set_xticks(np.arange(n_levels) + width * (len(results) - 1) / 2, [f">= {l}" for l in range(1, n_levels + 1)])
  ax.set_xlabel("leading code levels shared")
  ax.set_ylabel("co-occurring pairs")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return str(path)
