"""PCA + deep residual k-means tool codes (Toolscaler section 4.2).

Each tool has P embedding vectors (one per gist token; P = 1 for a sentence encoder). For every position p:

    y_p = PCA_p(e_p) in R^D,   r_0 = y_p,   c_{p,l} = argmin_k ||r_{l-1} - mu^{p,l}_k||,   r_l = r_{l-1} - mu^{p,l}_{c_{p,l}}

with mu^{p,l} fitted by k-means on the level-l residuals of all tools. The tool's code is the concatenation over
positions (p-major): (c_{0,0}, .., c_{0,L-1}, c_{1,0}, ..). The fitted PCA and centroids are kept: new tools are
coded with them unchanged (Toolscaler Algorithm 1), and `centroid_embeddings` maps centroids back through the
inverse PCA to initialise the LLM's code-token embeddings.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.codebook import kmeans as km
from toolgen_jax.codebook import pca as pca_lib


@dataclasses.dataclass(frozen=True)
class ResidualKMeansConfig:
  pca_dim: int = 32            # D per position (Toolscaler default)
  num_levels: int = 2          # L per position
  codebook_size: int = 512     # K (Toolscaler default)
  kmeans_iters: int = 100
  n_init: int = 1
  seed: int = 0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ResidualKMeansState:
  pca: tuple[pca_lib.PCAState, ...]  # one per position
  centroids: jax.Array               # [P, L, K, D]


def _as_positions(x) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == 2:
    x = x[:, None, :]
  if x.ndim != 3:
    raise ValueError(f"residual_kmeans expects [N, D] or [N, P, D] embeddings, got shape {x.shape}")
  return x


def fit(config: ResidualKMeansConfig, x) -> tuple[ResidualKMeansState, np.ndarray]:
  """x [N, D_in] or [N, P, D_in] -> (state, codes [N, P*L] int32)."""
  x = _as_positions(x)
  n, p, d_in = x.shape
  if n < config.codebook_size:
    raise ValueError(f"residual_kmeans: {n} tools < codebook_size {config.codebook_size}; lower codebook.size")
  dim = min(config.pca_dim, d_in, n)
  key = jax.random.key(config.seed)
  states, cents, codes = [], [], []
  for pos in range(p):
    st = pca_lib.fit(x[:, pos], dim)
    r = pca_lib.transform(st, x[:, pos])
    level_cents = []
    for level in range(config.num_levels):
      res = km.kmeans(jax.random.fold_in(key, pos * 1000 + level), r, config.codebook_size,
                      n_init=config.n_init, max_iter=config.kmeans_iters)
      level_cents.append(res.centroids)
      codes.append(np.asarray(res.labels))
      r = r - res.centroids[res.labels]
    states.append(st)
    cents.append(jnp.stack(level_cents))
  return ResidualKMeansState(tuple(states), jnp.stack(cents)), np.stack(codes, 1).astype(np.int32)


def encode(state: ResidualKMeansState, x) -> tuple[np.ndarray, np.ndarray]:
  """Codes of (new) tools with the frozen PCA + centroids (nearest centroid per level).

  -> (codes [N, P*L] int32, inputs [P*L, N, D]: the residual entering each level, for collision resolution).
  """
  x = _as_positions(x)
  p = len(state.pca)
  if x.shape[1] != p:
    raise ValueError(f"residual_kmeans: state has {p} positions, embeddings have {x.shape[1]}")
  codes, inputs = [], []
  for pos in range(p):
    r = pca_lib.transform(state.pca[pos], x[:, pos])
    for level in range(state.centroids.shape[1]):
      inputs.append(r)
      labels, _ = km.assign(r, state.centroids[pos, level])
      codes.append(np.asarray(labels))
      r = r - state.centroids[pos, level][labels]
  return np.stack(codes, 1).astype(np.int32), np.asarray(jnp.stack(inputs))


def level_codebook(state: ResidualKMeansState, level: int) -> jax.Array:
  """Centroids of flat level `level` (position-major): [K, D]."""
  l = state.centroids.shape[1]
  return state.centroids[level // l, level % l]


def reconstruct(state: ResidualKMeansState, codes: np.ndarray) -> np.ndarray:
  """Embedding-space reconstruction from codes: inverse PCA of the summed centroids. -> [N, P, D_in]."""
  codes = np.asarray(codes)
  p, l = state.centroids.shape[:2]
  out = []
  for pos in range(p):
    y = sum(state.centroids[pos, level][codes[:, pos * l + level]] for level in range(l))
    out.append(pca_lib.inverse_transform(state.pca[pos], y))
  return np.asarray(jnp.stack(out, 1))


def centroid_embeddings(state: ResidualKMeansState) -> np.ndarray:
  """[P, L, K, D_in] embedding-space vectors of every code token (inverse PCA; the mean is added at level 0 only,
  deeper levels are residual directions), used to initialise code-token embeddings."""
  out = []
  for pos, st in enumerate(state.pca):
    lv = []
    for level in range(state.centroids.shape[1]):
      v = state.centroids[pos, level] @ st.components
      lv.append(v + st.mean if level == 0 else v)
    out.append(jnp.stack(lv))
  return np.asarray(jnp.stack(out))
