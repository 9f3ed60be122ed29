"""PCA against scikit-learn (up to sign) and inverse-transform round trip."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from toolgen_jax.codebook import pca


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  scales = np.linspace(5.0, 0.1, 48)  # distinct variances: well-defined axes
  basis = np.linalg.qr(rng.normal(size=(48, 48)))[0]
  return ((rng.normal(size=(2000, 48)) * scales) @ basis + 3.0).astype(np.float32)


def test_matches_sklearn_up_to_sign(data):
  ours = pca.fit(data, 12)
  ref = PCA(12, svd_solver="full").fit(data)
  comps = np.asarray(ours.components)
  signs = np.sign((comps * ref.components_).sum(1))
  assert np.all(np.abs((comps * ref.components_).sum(1)) > 0.9999)
  np.testing.assert_allclose(comps * signs[:, None], ref.components_, atol=2e-3)
  np.testing.assert_allclose(np.asarray(ours.explained_variance), ref.explained_variance_, rtol=1e-3)
  z = np.asarray(pca.transform(ours, data))
  np.testing.assert_allclose(z * signs, ref.transform(data), atol=5e-3)


def test_inverse_transform_roundtrip(data):
  full = pca.fit(data, 48)
  back = np.asarray(pca.inverse_transform(full, pca.transform(full, data)))
  np.testing.assert_allclose(back, data, atol=1e-3)
  part = pca.fit(data, 8)
  ref = PCA(8).fit(data)
  np.testing.assert_allclose(np.asarray(pca.inverse_transform(part, pca.transform(part, data))),
                             ref.inverse_transform(ref.transform(data)), atol=5e-3)


def test_bad_component_count(data):
  with pytest.raises(ValueError, match="n_components"):
    pca.fit(data, 49)
