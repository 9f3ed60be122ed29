"""Ranking metrics for tool retrieval: NDCG@k and Recall@k with binary gains, plus the peers' NDCG variant.

A ranking is a sequence of distinct tool ids, best first; `relevant` is the set of tool ids the query needs.

NDCG@k (Jarvelin & Kekalainen 2002, binary gains, log2 discount):

  DCG@k  = sum_{i=1..k} rel_i / log2(i + 1)               rel_i = 1 if the i-th ranked tool is relevant
  IDCG@k = sum_{i=1..min(k, |R|)} 1 / log2(i + 1)          R = *all* relevant tools of the query
  NDCG@k = DCG@k / IDCG@k

The ideal DCG counts every relevant tool, including the ones the retriever never returned. The ToolBench
retrieval evaluator (`compute_ndcg_for_query`, reported as OpenBMB/ToolBench#184) and ToolGen's `compute_ndcg`
(Reason-Wang/ToolGen `evaluation/retrieval/eval_*.py`) build the ideal ranking only from the relevant tools found
among the top `depth` hits (ToolGen: depth 100), so a miss does not lower the score: a query with three relevant
tools of which one is returned first scores 1.0 there and 0.47 here (NDCG@3). The published ToolGen / ToolWeaver /
Toolscaler tables use that variant; it is offered as `toolgen_ndcg_at_k` only to compare with them.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np

TOOLGEN_DEPTH = 100  # ToolGen's retrieval depth for `toolgen_ndcg_at_k`, used for every method in the papers' tables


def _discounts(n: int) -> np.ndarray:
  """[n] 1 / log2(i + 1) for ranks i = 1..n."""
  return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def _check_ranking(ranked: Sequence[int]) -> list[int]:
  ranked = [int(t) for t in ranked]
  if len(set(ranked)) != len(ranked):
    raise ValueError(f"ranking has repeated tool ids: {ranked}")
  return ranked


def _check_k(k: int) -> int:
  if int(k) < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  return int(k)


def dcg_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
  """DCG@k with binary gains: sum over the first k ranks of 1[relevant] / log2(rank + 1)."""
  k = _check_k(k)
  ranked = _check_ranking(ranked)[:k]
  rel = set(int(t) for t in relevant)
  gains = np.array([t in rel for t in ranked], dtype=np.float64)
  return float(gains @ _discounts(len(ranked)))


def ndcg_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
  """NDCG@k where the ideal DCG counts all relevant tools (those the ranking missed included); in [0, 1].

  Raises ValueError when `relevant` is empty (NDCG is undefined; the harness skips and counts such queries).
  """
  rel = set(int(t) for t in relevant)
  if not rel:
    raise ValueError("NDCG is undefined for a query without relevant tools")
  k = _check_k(k)
  idcg = float(_discounts(min(k, len(rel))).sum())
  return dcg_at_k(ranked, rel, k) / idcg


def recall_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
  """Recall@k = |top-k ∩ R| / |R|."""
  rel = set(int(t) for t in relevant)
  if not rel:
    raise ValueError("Recall is undefined for a query without relevant tools")
  k = _check_k(k)
  top = _check_ranking(ranked)[:k]
  return len(rel.intersection(top)) / len(rel)


def toolgen_ndcg_at_k(ranked: Sequence[int], relevant: Collection[int], k: int, depth: int | None = None) -> float:
  """The peers' NDCG@k (ToolGen `compute_ndcg`, ToolBench#184): only *retrieved* relevant tools count.

  The relevance vector is 1 only for relevant tools among the first `depth` ranked tools (ToolGen retrieves
  depth = 100; None = the whole given ranking), so the ideal DCG is built from those alone; 0.0 when none was
  retrieved (scikit-learn's `ndcg_score` convention for an all-zero relevance vector). Equal to `ndcg_at_k` when
  every relevant tool is within `depth`, higher otherwise. For comparison with published numbers only.
  """
  k = _check_k(k)
  ranked = _check_ranking(ranked)
  if depth is not None:
    ranked = ranked[:int(depth)]
  rel = set(int(t) for t in relevant)
  found = [t for t in ranked if t in rel]
  if not found:
    return 0.0
  idcg = float(_discounts(min(k, len(found))).sum())
  return dcg_at_k(ranked, rel, k) / idcg


def query_metrics(ranked: Sequence[int], relevant: Collection[int], ks: Sequence[int],
                  recall_ks: Sequence[int] | None = None, depth: int | None = None) -> dict[str, float]:
  """All metrics of one query: `ndcg@k`, `toolgen_ndcg@k` for k in ks and `recall@k` for k in recall_ks (= ks)."""
  out = {}
  for k in ks:
    out[f"ndcg@{k}"] = ndcg_at_k(ranked, relevant, k)
  for k in (ks if recall_ks is None else recall_ks):
    out[f"recall@{k}"] = recall_at_k(ranked, relevant, k)
  for k in ks:
    out[f"toolgen_ndcg@{k}"] = toolgen_ndcg_at_k(ranked, relevant, k, depth=depth)
  return out


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
  """Mean of each metric over queries (macro average, as the papers report), plus `n` = number of queries."""
  if not rows:
    return {"n": 0}
  keys = rows[0].keys()
  out: dict[str, float] = {key: float(np.mean([r[key] for r in rows])) for key in keys}
  out["n"] = len(rows)
  return out
