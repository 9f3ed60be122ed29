"""PCA + residual k-means (Toolscaler): codes, frozen re-encoding, inverse-PCA reconstruction."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from toolgen_jax.codebook import residual_kmeans as rkm


@pytest.fixture(scope="module")
def gist():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(20, 2, 48)) * 2
  lab = rng.integers(0, 20, 800)
  return (centers[lab] + 0.5 * rng.normal(size=(800, 2, 48))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(gist):
  cfg = rkm.ResidualKMeansConfig(pca_dim=8, num_levels=2, codebook_size=16)
  state, codes = rkm.fit(cfg, gist)
  return cfg, state, codes


def test_codes_shape_and_frozen_reencoding(fitted, gist):
  cfg, state, codes = fitted
  assert codes.shape == (800, 4) and codes.dtype == np.int32 and codes.max() < 16
  again, inputs = rkm.encode(state, gist)
  assert (again == codes).mean() > 0.99  # Lloyd's fixed point: nearest-centroid labels reproduce the fit
  assert inputs.shape == (4, 800, 8)
  cb = np.asarray(rkm.level_codebook(state, 3))
  costs = ((inputs[3][:, None] - cb[None]) ** 2).sum(-1)
  assert (costs.argmin(1) == again[:, -1]).mean() > 0.99


def test_first_level_matches_sklearn_pipeline(fitted, gist):
  cfg, state, codes = fitted
  y = PCA(8).fit_transform(gist[:, 0])
  ref = KMeans(16, n_init=1, random_state=0).fit(y)
  ours = np.asarray(state.centroids[0, 0])
  # Same objective on the same PCA space (PCA signs may differ: inertia is sign-invariant).
  y_ours = np.asarray(rkm.pca_lib.transform(state.pca[0], gist[:, 0]))
  ours_inertia = ((y_ours - ours[codes[:, 0]]) ** 2).sum()
  assert ours_inertia <= 1.02 * ref.inertia_


def test_levels_reduce_reconstruction_error(fitted, gist):
  cfg, state, codes = fitted
  full = rkm.reconstruct(state, codes)
  # Level-1-only reconstruction: zero out level-2 contributions by subtracting their centroids.
  err2 = ((full - gist) ** 2).mean()
  cents = np.asarray(state.centroids)
  comps = [np.asarray(p.components) for p in state.pca]
  lvl1 = full - np.stack([cents[p, 1][codes[:, p * 2 + 1]] @ comps[p] for p in range(2)], 1)
  assert ((lvl1 - gist) ** 2).mean() > err2
  emb = rkm.centroid_embeddings(state)
  assert emb.shape == (2, 2, 16, 48)
  # Level-0 token vectors are inverse-PCA centroids: sum of a tool's token vectors = its reconstruction.
  np.testing.assert_allclose(emb[0, 0][codes[:, 0]] + emb[0, 1][codes[:, 1]], full[:, 0], atol=1e-4)


def test_errors(gist):
  with pytest.raises(ValueError, match="codebook_size"):
    rkm.fit(rkm.ResidualKMeansConfig(codebook_size=1000), gist)
  with pytest.raises(ValueError, match="positions"):
    state, _ = rkm.fit(rkm.ResidualKMeansConfig(pca_dim=4, codebook_size=8, num_levels=1), gist[:, :1])
    rkm.encode(state, gist)
