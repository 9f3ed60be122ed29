"""k-means against scikit-learn: same inertia (within 2%), same Lloyd fixed point from the same init."""

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from toolgen_jax.codebook import kmeans as km


@pytest.fixture(scope="module")
def blobs():
  x, _ = make_blobs(3000, n_features=16, centers=40, cluster_std=2.0, random_state=0)
  return x.astype(np.float32)


@pytest.mark.slow
def test_inertia_within_two_percent_of_sklearn(blobs):
  ours = km.kmeans(jax.random.key(0), blobs, 32, n_init=3)
  ref = KMeans(32, n_init=3, random_state=0, algorithm="lloyd").fit(blobs)
  assert float(ours.inertia) <= 1.02 * ref.inertia_, (float(ours.inertia), ref.inertia_)
  np.testing.assert_allclose(float(ours.inertia), km.inertia(blobs, ours.centroids), rtol=1e-4)
  assert np.bincount(np.asarray(ours.labels), minlength=32).min() > 0


def test_lloyd_matches_sklearn_from_the_same_init(blobs):
  init = blobs[np.random.default_rng(1).choice(len(blobs), 24, replace=False)]
  ours = km.lloyd(blobs, init, max_iter=300, tol=1e-6)
  ref = KMeans(24, init=init, n_init=1, max_iter=300, tol=1e-6, algorithm="lloyd").fit(blobs)
  np.testing.assert_allclose(np.asarray(ours.centroids), ref.cluster_centers_, atol=1e-3)
  assert (np.asarray(ours.labels) == ref.labels_).mean() > 0.999
  np.testing.assert_allclose(float(ours.inertia), ref.inertia_, rtol=1e-4)


def test_assign_matches_brute_force_including_padding_chunks(blobs):
  x = blobs[:1001]
  c = blobs[1001:1051]
  labels, d = km.assign(x, c, chunk=128)
  ref = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
  assert (np.asarray(labels) == ref.argmin(1)).mean() > 0.999
  np.testing.assert_allclose(np.asarray(d), ref.min(1), rtol=1e-3, atol=1e-2)


def test_kmeanspp_seeds_are_distinct_data_points(blobs):
  c = np.asarray(km.kmeans_plusplus(jax.random.key(3), blobs, 40))
  d = ((c[:, None] - blobs[None]) ** 2).sum(-1)
  assert (d.min(1) < 1e-6).all()
  assert len({tuple(r) for r in c}) == 40
  # k-means++ alone already beats uniform random seeding by a wide margin on separated blobs
  rand = blobs[np.random.default_rng(0).choice(len(blobs), 40, replace=False)]
  assert km.inertia(blobs, c) < km.inertia(blobs, rand)


def test_empty_clusters_are_relocated(blobs):
  init = np.repeat(blobs[:1], 8, axis=0)  # 7 clusters start empty (ties go to the lowest index)
  res = km.lloyd(blobs, init)
  assert np.bincount(np.asarray(res.labels), minlength=8).min() > 0


def test_deterministic_and_clear_errors(blobs):
  a = km.kmeans(jax.random.key(5), blobs[:500], 10)
  b = km.kmeans(jax.random.key(5), blobs[:500], 10)
  np.testing.assert_array_equal(np.asarray(a.centroids), np.asarray(b.centroids))
  with pytest.raises(ValueError, match="points < k"):
    km.kmeans(jax.random.key(0), blobs[:5], 10)
