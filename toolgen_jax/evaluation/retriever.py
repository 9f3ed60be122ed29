"""The `Retriever` protocol every method is scored through, and top-k selection from a score matrix.

The harness only asks a retriever for rankings, so BM25, embedding similarity and the generative model (trie-
constrained beam search over tool codes, plugged in by the pipeline) are scored by the same code on the same
queries. `candidates[i]` restricts query i to a pool of tool ids (the in-domain setting); None = every tool.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from toolgen_jax.data.records import Query

Candidates = Sequence[tuple[int, ...] | None]


@runtime_checkable
class Retriever(Protocol):
  """Anything with `rank`: per query, at most k distinct tool ids, best first, drawn from its candidates."""

  def rank(self, queries: Sequence[Query], k: int, candidates: Candidates) -> list[list[int]]:
    ...


def top_k_from_scores(scores: np.ndarray, k: int, candidates: Candidates | None = None) -> list[list[int]]:
  """Top-k tool ids per row of `scores` [Q, N], highest first; ties go to the lower tool id (deterministic).

  With `candidates[i]` given, only those ids compete for row i (ids outside [0, N) raise IndexError).
  Returns min(k, pool size) ids per row.
  """
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2:
    raise ValueError(f"scores must be [Q, N], got shape {scores.shape}")
  n_q, n_tools = scores.shape
  if candidates is not None and len(candidates) != n_q:
    raise ValueError(f"{len(candidates)} candidate pools for {n_q} queries")
  out = []
  for i in range(n_q):
    pool = None if candidates is None else candidates[i]
    if pool is None:
      ids = np.arange(n_tools)
    else:
      ids = np.unique(np.asarray(pool, dtype=np.int64))  # sorted: the stable sort below breaks ties by id
      if ids.size and (ids[0] < 0 or ids[-1] >= n_tools):
        raise IndexError(f"query {i}: candidate ids outside [0, {n_tools}): {ids[(ids < 0) | (ids >= n_tools)]}")
    row = scores[i, ids]
    order = np.argsort(-row, kind="stable")[:k]
    out.append(ids[order].tolist())
  return out


def check_rankings(rankings: Sequence[Sequence[int]], n_queries: int, k: int, candidates: Candidates) -> None:
  """Validates a retriever's answer (the harness calls this): one list per query, distinct, <= k, in the pool."""
  if len(rankings) != n_queries:
    raise ValueError(f"retriever returned {len(rankings)} rankings for {n_queries} queries")
  for i, r in enumerate(rankings):
    if len(r) > k:
      raise ValueError(f"query {i}: ranking has {len(r)} > k={k} ids")
    if len(set(r)) != len(r):
      raise ValueError(f"query {i}: ranking repeats a tool id: {list(r)}")
    pool = candidates[i]
    if pool is not None and not set(r) <= set(pool):
      raise ValueError(f"query {i}: ranking has ids outside its candidates: {sorted(set(r) - set(pool))}")


class SubsetRetriever:
  """A retriever built over the documents of `ids` only (local ids 0..n-1), answering in corpus ids. Per-file BM25
  needs its own index: IDF and the mean document length are statistics of the indexed corpus."""

  def __init__(self, retriever, ids: Sequence[int]):
    self.retriever, self.ids = retriever, list(ids)
    self.local = {g: i for i, g in enumerate(self.ids)}

  def rank(self, queries, k, candidates):
    local = [None if c is None else tuple(self.local[t] for t in c if t in self.local) for c in candidates]
    return [[self.ids[i] for i in r] for r in self.retriever.rank(queries, k, local)]
