"""PCA (Toolscaler section 4.2: each gist position's embedding is reduced to D dimensions before residual k-means).

The state is kept so that new tools can be projected with the same basis (add_tools) and so that code centroids can
be mapped back to the embedding space with the inverse transform (vocabulary initialisation).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PCAState:
  mean: jax.Array                # [D_in]
  components: jax.Array          # [D, D_in], rows orthonormal, by decreasing variance
  explained_variance: jax.Array  # [D] (ddof = 1, as scikit-learn)


def fit(x: jax.Array, n_components: int) -> PCAState:
  """Principal axes of x [N, D_in] via the eigendecomposition of the D_in x D_in covariance.

  Signs follow scikit-learn's convention (largest-|.| loading of each component positive) so that results are
  comparable with `sklearn.decomposition.PCA`.
  """
  x = jnp.asarray(x, jnp.float32)
  n, d = x.shape
  if not 0 < n_components <= min(n, d):
    raise ValueError(f"pca: n_components={n_components} must be in [1, min(N={n}, D={d})]")
  return _fit(x, n_components)


@jax.jit
def _cov(x):
  mean = x.mean(0)
  xc = x - mean
  return mean, jnp.matmul(xc.T, xc, precision=jax.lax.Precision.HIGHEST) / (x.shape[0] - 1)


def _fit(x, n_components):
  mean, cov = _cov(x)
  w, v = jnp.linalg.eigh(cov)
  order = jnp.argsort(-w)[:n_components]
  comps = v[:, order].T
  rows = jnp.arange(n_components)
  signs = jnp.sign(comps[rows, jnp.argmax(jnp.abs(comps), axis=1)])
  return PCAState(mean, comps * signs[:, None], jnp.maximum(w[order], 0.0))


@jax.jit
def transform(state: PCAState, x: jax.Array) -> jax.Array:
  """[N, D_in] -> [N, D]."""
  return (x - state.mean) @ state.components.T


@jax.jit
def inverse_transform(state: PCAState, z: jax.Array) -> jax.Array:
  """[N, D] -> [N, D_in] (the projection onto the principal subspace, mapped back)."""
  return z @ state.components + state.mean
