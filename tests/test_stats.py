"""Codebook statistics against hand-computed values, and the PNG plots."""

import numpy as np
import pytest

from toolgen_jax.codebook import stats


def test_code_stats_hand_computed():
  codes = np.array([[0, 0], [0, 1], [1, 0], [1, 0]])
  s = stats.code_stats(codes, [4, 2])
  assert s["utilisation"] == [0.5, 1.0]
  np.testing.assert_allclose(s["perplexity"], [2.0, np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))])
  assert s["max_load"] == [2, 3] and s["distinct_prefixes"] == [2, 3]
  assert s["collision_rate"] == pytest.approx(0.25)


def test_prefix_sharing_and_distance():
  codes = np.array([[0, 0, -1], [0, 1, -1], [1, 0, -1], [0, 0, 5]])
  edges = np.array([[0, 1], [0, 2], [0, 3]])
  np.testing.assert_array_equal(stats.common_prefix_length(codes[edges[:, 0]], codes[edges[:, 1]]), [1, 0, 2])
  assert stats.edge_prefix_sharing(codes, edges) == pytest.approx([2 / 3, 1 / 3, 0.0])
  assert stats.mean_code_distance(codes, edges) == pytest.approx((2 + 3 + 1) / 3)
  assert stats.mean_code_distance(codes, edges, weights=[1, 0, 0]) == pytest.approx(2.0)


def test_plots_are_written(tmp_path):
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 8, (100, 2))
  p = stats.plot_code_usage(codes, [8, 8], tmp_path / "usage.png")
  edges = rng.integers(0, 100, (50, 2))
  q = stats.plot_collab_effect({"lambda=0": codes, "lambda=1": codes[::-1]}, edges, tmp_path / "collab.png")
  for f in (p, q):
    data = open(f, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
