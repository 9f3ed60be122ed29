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


def test_plots_are_written(tmp_path, monkeypatch):
  """The plots show the numbers they claim (hand-computed loads and shares), at the expected size, not blank."""
  import matplotlib.figure
  import matplotlib.image

  figures = []
  savefig = matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (figures.append(fig),
                                                                                  savefig(fig, *a, **k))[1])
  codes = np.array([[0, 0, -1], [0, 1, -1], [1, 0, -1], [0, 0, 5]])
  p = stats.plot_code_usage(codes[:, :2], [4, 2], tmp_path / "usage.png")
  # level 0: codes 0, 0, 1, 0 -> loads sorted [3, 1, 0, 0]; level 1: 0, 1, 0, 0 -> [3, 1].
  lines = [ax.get_lines()[0].get_ydata() for ax in figures[0].axes]
  np.testing.assert_array_equal(lines[0], [3, 1, 0, 0])
  np.testing.assert_array_equal(lines[1], [3, 1])
  edges = np.array([[0, 1], [0, 2], [0, 3]])
  apart = np.array([[0, 0, -1], [1, 0, -1], [2, 0, -1], [3, 0, -1]])  # no pair shares its first level
  q = stats.plot_collab_effect({"lambda=0": codes, "lambda=1": apart}, edges, tmp_path / "collab.png")
  heights = [round(b.get_height(), 6) for b in figures[1].axes[0].patches]
  assert heights == [round(2 / 3, 6), round(1 / 3, 6), 0.0, 0.0, 0.0, 0.0]
  labels = [t.get_text() for t in figures[1].axes[0].get_legend().get_texts()]
  assert labels == ["lambda=0 (dist 2.00)", "lambda=1 (dist 3.00)"]  # distances (2 + 3 + 1) / 3 and 3
  for f, shape in ((p, (240, 640)), (q, (240, 400))):  # figsize x dpi 80
    data = open(f, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(f)
    assert img.shape[:2] == shape, img.shape
    assert (img[..., :3] < 0.5).any(axis=-1).mean() > 0.01  # dark pixels: axes, text and data were drawn
