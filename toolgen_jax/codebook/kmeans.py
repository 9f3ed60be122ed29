"""k-means: greedy k-means++ seeding and jitted Lloyd iterations (used for RQ-VAE codebook init, residual k-means
and the hierarchical baseline).

Conventions follow scikit-learn's `KMeans(algorithm="lloyd")` so results are comparable: greedy k-means++ with
2 + floor(ln k) candidate centres per step, tolerance relative to the mean per-feature variance of the data
(stop when the summed squared centre shift <= tol * mean(var(X))), empty clusters relocated to the points farthest
from their centres, best of `n_init` runs by inertia.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KMeansResult:
  centroids: jax.Array    # [K, D]
  labels: jax.Array       # [N] int32
  inertia: jax.Array      # [] sum of squared distances to the assigned centre
  n_iter: jax.Array       # [] Lloyd iterations run


def sq_distances(x: jax.Array, c: jax.Array) -> jax.Array:
  """||x_i - c_k||^2 via the expanded form (one matmul). [N, D], [K, D] -> [N, K], clipped at 0."""
  d = (x * x).sum(-1)[:, None] - 2.0 * x @ c.T + (c * c).sum(-1)[None, :]
  return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames=("chunk",))
def assign(x: jax.Array, centroids: jax.Array, chunk: int = 512) -> tuple[jax.Array, jax.Array]:
  """Nearest centre (lowest index on ties). -> labels [N] int32, squared distances [N].

  Rows are processed in chunks of `chunk` so the [chunk, K] distance block stays in cache and the min/argmin fuse
  with the matmul epilogue (10x faster than one [N, K] pass on CPU); argmin is written as min + first index
  because XLA:CPU's variadic argmin reduction does not vectorise. ||x||^2 is added after the argmin.
  """
  n, d = x.shape
  k = centroids.shape[0]
  chunk = min(chunk, n)
  pad = (-n) % chunk
  xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, d)
  c2 = (centroids * centroids).sum(-1)
  iota = jnp.arange(k, dtype=jnp.int32)

  def block(xc):
    dist = c2[None, :] - 2.0 * xc @ centroids.T
    m = dist.min(1)
    return jnp.where(dist == m[:, None], iota[None, :], k).min(1), m

  labels, m = jax.lax.map(block, xb)
  labels = jnp.minimum(labels.reshape(-1)[:n], k - 1)
  return labels, jnp.maximum(m.reshape(-1)[:n] + (x * x).sum(-1), 0.0)


@functools.partial(jax.jit, static_argnames=("k", "n_local_trials"))
def kmeans_plusplus(key: jax.Array, x: jax.Array, k: int, n_local_trials: int | None = None) -> jax.Array:
  """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant). x [N, D] -> centres [K, D].

  Each step samples `n_local_trials` candidates with probability proportional to D(x)^2 and keeps the one that
  lowers the potential sum_x D(x)^2 the most.
  """
  n, _ = x.shape
  trials = n_local_trials or 2 + int(math.log(k))
  key, k0 = jax.random.split(key)
  first = jax.random.randint(k0, (), 0, n)
  x2 = (x * x).sum(-1)
  centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
  closest = jnp.maximum(x2 - 2 * x @ x[first] + x2[first], 0.0)

  def step(i, carry):
    centres, closest, key = carry
    key, sk = jax.random.split(key)
    # Inverse-CDF sampling as scikit-learn does (searchsorted on the cumulative potential).
    cum = jnp.cumsum(closest)
    u = jax.random.uniform(sk, (trials,)) * cum[-1]
    cand = jnp.clip(jnp.searchsorted(cum, u), 0, n - 1)
    xc = x[cand]                                                          # [T, D]
    d = jnp.maximum(x2[None, :] - 2 * xc @ x.T + x2[cand][:, None], 0.0)  # [T, N]
    new_closest = jnp.minimum(closest[None, :], d)
    best = jnp.argmin(new_closest.sum(-1))
    return centres.at[i].set(xc[best]), new_closest[best], key

  centres, _, _ = jax.lax.fori_loop(1, k, step, (centres, closest, key))
  return centres


@functools.partial(jax.jit, static_argnames=("max_iter",))
def lloyd(x: jax.Array, init: jax.Array, max_iter: int = 300, tol: float = 1e-4,
          weights: jax.Array | None = None) -> KMeansResult:
  """Lloyd iterations from `init` [K, D] until the summed squared centre shift <= tol * mean(var(x)) (sklearn)."""
  k = init.shape[0]
  w = jnp.ones((x.shape[0],), x.dtype) if weights is None else weights.astype(x.dtype)
  tol_abs = tol * jnp.mean(jnp.var(x, axis=0))

  def update(c):
    labels, mind = assign(x, c)
    sums = jax.ops.segment_sum(x * w[:, None], labels, num_segments=k)
    counts = jax.ops.segment_sum(w, labels, num_segments=k)
    new = sums / jnp.maximum(counts, 1e-12)[:, None]
    # Empty clusters take the points farthest from their centres (scikit-learn's relocation), in order.
    empty = counts <= 0
    far = jax.lax.top_k(mind, min(k, mind.shape[0]))[1]
    slot = jnp.cumsum(empty) - 1
    new = jnp.where(empty[:, None], x[far[jnp.clip(slot, 0, k - 1)]], new)
    return new

  def cond(s):
    _, it, shift = s
    return (it < max_iter) & (shift > tol_abs)

  def body(s):
    c, it, _ = s
    new = update(c)
    return new, it + 1, ((new - c) ** 2).sum()

  c, it, _ = jax.lax.while_loop(cond, body, (init, jnp.int32(0), jnp.array(jnp.inf, x.dtype)))
  labels, mind = assign(x, c)
  return KMeansResult(c, labels, (mind * w).sum(), it)


def kmeans(key: jax.Array, x: jax.Array, k: int, *, n_init: int = 1, max_iter: int = 300, tol: float = 1e-4,
           weights: jax.Array | None = None) -> KMeansResult:
  """k-means++ + Lloyd, best of `n_init` seeds by inertia. x [N, D] float32 -> KMeansResult.

  Raises ValueError when there are fewer points than clusters (a code level cannot have more codes in use than
  points; callers pick K <= N).
  """
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2:
    raise ValueError(f"kmeans expects [N, D] data, got shape {x.shape}")
  if x.shape[0] < k:
    raise ValueError(f"kmeans: {x.shape[0]} points < k={k} clusters")
  best = None
  for key_i in jax.random.split(key, n_init):
    res = lloyd(x, kmeans_plusplus(key_i, x, k), max_iter=max_iter, tol=tol, weights=weights)
    if best is None or float(res.inertia) < float(best.inertia):
      best = res
  return best


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
  """Sum of squared distances to the nearest centre (float64, host)."""
  x = np.asarray(x, np.float64)
  c = np.asarray(centroids, np.float64)
  d = (x * x).sum(-1)[:, None] - 2 * x @ c.T + (c * c).sum(-1)[None]
  return float(np.maximum(d.min(1), 0).sum())
