"""Sinkhorn: marginals, agreement with a float64 NumPy reference, balance of the hard assignment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.codebook import sinkhorn


def _numpy_reference(cost, eps, iters):
  """Plain float64 log-domain Sinkhorn with uniform marginals (independent implementation, scipy logsumexp)."""
  from scipy.special import logsumexp
  c = np.asarray(cost, np.float64)
  hi, lo = c.max(), c.min()
  c = (c - (hi + lo) / 2) / (hi - (hi + lo) / 2 + 1e-5)
  n, k = c.shape
  lk = -c / eps
  f, g = np.zeros(n), np.zeros(k)
  for _ in range(iters):
    f = -np.log(n) - logsumexp(lk + g[None], axis=1)
    g = -np.log(k) - logsumexp(lk + f[:, None], axis=0)
  return lk + f[:, None] + g[None]


def _cost(n, k, d=8, seed=0):
  x = jax.random.normal(jax.random.key(seed), (n, d))
  c = jax.random.normal(jax.random.key(seed + 1), (k, d))
  return ((x[:, None] - c[None]) ** 2).sum(-1)


@pytest.mark.parametrize("absorb_every", [0, 7])
@pytest.mark.parametrize("eps", [0.05, 0.01])
def test_marginals_and_float64_reference(eps, absorb_every):
  n, k = 300, 16
  cost = _cost(n, k)
  iters = 400 if eps == 0.01 else 150
  logp = np.asarray(sinkhorn.sinkhorn_log_plan(cost, eps, iters, absorb_every=absorb_every), np.float64)
  p = np.exp(logp)
  np.testing.assert_allclose(p.sum(1) * n, 1.0, atol=1e-3)  # rows: relative to a_i = 1/N
  np.testing.assert_allclose(p.sum(0) * k, 1.0, atol=1e-3)  # columns
  ref = np.exp(_numpy_reference(cost, eps, iters))
  # Same plan as the float64 reference: total variation and per-entry error relative to the mass scale 1/N.
  assert np.abs(p - ref).sum() < 2e-3
  assert np.abs(p - ref).max() * n < 1e-3


def test_default_50_iterations_matches_reference_and_absorption_equals_log_domain():
  cost = _cost(2000, 64, seed=3)
  ref = _numpy_reference(cost, 0.01, 50)
  a = np.asarray(sinkhorn.sinkhorn_assign(cost))
  b = np.asarray(sinkhorn.sinkhorn_assign(cost, absorb_every=12))
  assert (a == ref.argmax(1)).mean() > 0.995
  assert (a == b).mean() > 0.995
  p = np.exp(np.asarray(sinkhorn.sinkhorn_log_plan(cost, 0.01, 50, absorb_every=12), np.float64))
  np.testing.assert_allclose(p.sum(0) * 64, 1.0, atol=1e-3)


def test_assignment_is_balanced_where_argmin_is_not():
  # Points concentrated near a few centroids: nearest-centroid assignment piles up, Sinkhorn spreads.
  x = jax.random.normal(jax.random.key(0), (4096, 4)) * 0.1
  c = jax.random.normal(jax.random.key(1), (32, 4))
  cost = ((x[:, None] - c[None]) ** 2).sum(-1)
  nearest = np.bincount(np.asarray(jnp.argmin(cost, 1)), minlength=32)
  counts = np.bincount(np.asarray(sinkhorn.sinkhorn_assign(cost, 0.01, 200)), minlength=32)
  assert nearest.max() > 4 * 128
  assert counts.max() <= 1.5 * 128 and counts.min() >= 0.5 * 128, counts


def test_no_nan_with_dead_columns():
  cost = _cost(500, 32).at[:, 5].set(1e4)  # a code far from everything
  f, g = sinkhorn.sinkhorn_potentials(cost, 0.01, 50, absorb_every=8)
  assert np.isfinite(np.asarray(f)).all() and np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("k", [256, 384, 100])
def test_row_argmin_equals_argmin_with_ties(k):
  rng = np.random.default_rng(k)
  x = rng.integers(0, 7, size=(300, k)).astype(np.float32)  # many ties: the lowest index must win, as jnp.argmin
  x[5] = 3.0  # a row of equal values
  got = np.asarray(sinkhorn.row_argmin(jnp.asarray(x)))
  np.testing.assert_array_equal(got, np.argmin(x, axis=1))
