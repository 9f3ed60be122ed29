"""Metrics against scikit-learn's ndcg_score and against a re-statement of ToolGen's compute_ndcg."""

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from toolgen_jax.evaluation import metrics


def _sklearn_full(ranked, relevant, n_tools, k):
  """Reference: relevance over the whole corpus (every relevant tool), scores decreasing along the ranking."""
  true = np.zeros(n_tools)
  true[list(relevant)] = 1
  scores = np.full(n_tools, -1.0) - np.arange(n_tools) * 1e-6  # unranked tools: distinct, below every ranked one
  for i, t in enumerate(ranked):
    scores[t] = len(ranked) - i
  return ndcg_score([true], [scores], k=k)


def _toolgen_reference(ranked, relevant, n_tools, k, depth):
  """ToolGen eval_bm25.compute_ndcg restated: relevance set only for relevant tools among the top `depth` hits."""
  true = np.zeros(n_tools)
  pred = np.zeros(n_tools)
  for i, t in enumerate(ranked[:depth]):
    pred[t] = depth - i
    if t in relevant:
      true[t] = 1
  return ndcg_score([true], [pred], k=k)


def test_regression_full_vs_toolgen_variant():
  # Three relevant tools, only one retrieved, at rank 1. The peers' variant calls this perfect.
  ranked, relevant = [7, 1, 2, 3, 4], {7, 8, 9}
  ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
  assert metrics.ndcg_at_k(ranked, relevant, 3) == pytest.approx(1 / ideal)
  assert metrics.ndcg_at_k(ranked, relevant, 3) == pytest.approx(0.4693, abs=1e-4)
  assert metrics.toolgen_ndcg_at_k(ranked, relevant, 3) == pytest.approx(1.0)
  # NDCG@1 agrees (one slot), NDCG@5 differs again.
  assert metrics.ndcg_at_k(ranked, relevant, 1) == metrics.toolgen_ndcg_at_k(ranked, relevant, 1) == 1.0
  assert metrics.ndcg_at_k(ranked, relevant, 5) < metrics.toolgen_ndcg_at_k(ranked, relevant, 5)
  # Nothing relevant retrieved: both 0.
  assert metrics.ndcg_at_k([1, 2], {9}, 5) == 0.0 == metrics.toolgen_ndcg_at_k([1, 2], {9}, 5)


def test_depth_of_the_toolgen_variant():
  # Relevant tool at rank 4 is inside depth 5 but outside depth 3.
  ranked, relevant = [0, 1, 2, 3, 4], {0, 3}
  assert metrics.toolgen_ndcg_at_k(ranked, relevant, 3, depth=3) == pytest.approx(1.0)
  full = metrics.ndcg_at_k(ranked, relevant, 3)
  assert metrics.toolgen_ndcg_at_k(ranked, relevant, 3, depth=5) == pytest.approx(full)


@pytest.mark.parametrize("seed", range(20))
def test_against_sklearn(seed):
  rng = np.random.default_rng(seed)
  n_tools = int(rng.integers(8, 40))
  relevant = set(rng.choice(n_tools, size=int(rng.integers(1, 6)), replace=False).tolist())
  ranked = rng.permutation(n_tools)[: int(rng.integers(5, n_tools))].tolist()
  depth = int(rng.integers(1, len(ranked) + 1))
  for k in (1, 3, 5):
    assert metrics.ndcg_at_k(ranked, relevant, k) == pytest.approx(_sklearn_full(ranked, relevant, n_tools, k))
    assert metrics.toolgen_ndcg_at_k(ranked, relevant, k, depth=depth) == pytest.approx(
        _toolgen_reference(ranked, relevant, n_tools, k, depth))
    top = set(ranked[:k])
    assert metrics.recall_at_k(ranked, relevant, k) == pytest.approx(len(top & relevant) / len(relevant))
    assert metrics.toolgen_ndcg_at_k(ranked, relevant, k) >= metrics.ndcg_at_k(ranked, relevant, k) - 1e-12


def test_perfect_and_bounds():
  assert metrics.ndcg_at_k([3, 5, 1], {3, 5}, 5) == pytest.approx(1.0)
  assert metrics.ndcg_at_k([1, 3, 5], {3, 5}, 1) == 0.0
  assert metrics.recall_at_k([1, 3, 5], {3, 5}, 2) == 0.5
  # A short ranking is not padded with credit.
  assert metrics.ndcg_at_k([3], {3, 5}, 5) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_bad_input():
  with pytest.raises(ValueError, match="repeated"):
    metrics.ndcg_at_k([1, 1, 2], {1}, 3)
  with pytest.raises(ValueError, match="without relevant"):
    metrics.ndcg_at_k([1, 2], set(), 3)
  with pytest.raises(ValueError, match="k must be"):
    metrics.recall_at_k([1, 2], {1}, 0)


def test_query_and_mean_metrics():
  rows = [metrics.query_metrics([0, 1], {0}, ks=(1, 3)), metrics.query_metrics([1, 0], {0}, ks=(1, 3))]
  assert set(rows[0]) == {"ndcg@1", "ndcg@3", "recall@1", "recall@3", "toolgen_ndcg@1", "toolgen_ndcg@3"}
  mean = metrics.mean_metrics(rows)
  assert mean["n"] == 2
  assert mean["ndcg@1"] == pytest.approx(0.5)
  assert mean["recall@3"] == pytest.approx(1.0)
  assert metrics.mean_metrics([]) == {"n": 0}
