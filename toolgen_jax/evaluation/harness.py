"""Scores any `Retriever` on a list of queries, per setting, split and group, with the metrics of `metrics.py`.

Settings (as in the ToolGen / ToolWeaver tables):
  "multi-domain": every tool of the corpus is a candidate (or every tool of `universe` when given).
  "in-domain":    candidates = the query's own pool (`Query.candidates`, StableToolBench `api_list`); a query
                  without one uses `group_pools[query.group]` when given, and is skipped (and counted) otherwise.

Result layout (plain dict, JSON-ready):
  result[setting][split][group] = {"ndcg@1": ..., "ndcg@3": ..., "ndcg@5": ..., "recall@5": ...,
                                   "toolgen_ndcg@k": ..., "n": number of queries}
where `split` and `group` also take the value "all" (the aggregate over every query of that setting), and
result["skipped"] counts the queries left out and why.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import metrics as metrics_lib
from toolgen_jax.evaluation.retriever import Retriever, check_rankings

SETTINGS = ("multi-domain", "in-domain")
ALL = "all"


def candidate_pools(queries: Sequence[Query], setting: str,
                    group_pools: Mapping[str, Sequence[int]] | None = None,
                    universe: Sequence[int] | None = None) -> list[tuple[int, ...] | None | bool]:
  """Per query: None (every tool), a tuple of tool ids, or False (no pool in this setting: skip)."""
  if setting == "multi-domain":
    return [None if universe is None else tuple(universe)] * len(queries)
  if setting != "in-domain":
    raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")
  out = []
  for q in queries:
    if q.candidates is not None:
      out.append(tuple(q.candidates))
    elif group_pools is not None and q.group in group_pools:
      out.append(tuple(group_pools[q.group]))
    else:
      out.append(False)
  return out


def rank_queries(retriever: Retriever, queries: Sequence[Query], k: int, candidates: Sequence[tuple[int, ...] | None],
                 batch_size: int | None = None, progress: str | None = None) -> list[list[int]]:
  """Calls `retriever.rank` in batches and checks every answer (distinct ids, <= k, inside the pool)."""
  bs = len(queries) if not batch_size else int(batch_size)
  starts = range(0, len(queries), max(bs, 1))
  if progress:
    from tqdm.auto import tqdm
    starts = tqdm(starts, desc=progress, unit="batch", leave=False)
  out: list[list[int]] = []
  for s in starts:
    qs, cs = list(queries[s:s + bs]), list(candidates[s:s + bs])
    ranked = [list(map(int, r)) for r in retriever.rank(qs, k, cs)]
    check_rankings(ranked, len(qs), k, cs)
    out.extend(ranked)
  return out


def evaluate(retriever: Retriever, queries: Sequence[Query], *, ks: Sequence[int] = (1, 3, 5),
             recall_ks: Sequence[int] | None = None, settings: Sequence[str] = SETTINGS,
             group_pools: Mapping[str, Sequence[int]] | None = None, depth: int | None = None,
             batch_size: int | None = None, progress: str | None = None,
             return_rankings: bool = False, universe: Sequence[int] | None = None,
             pool_exclude: Sequence[str] = ()) -> dict:
  """Scores `retriever` on `queries` in each setting (layout in the module docstring).

  ks: NDCG cut-offs (the papers: 1, 3, 5). recall_ks: Recall cut-offs (default ks + (5,)).
  depth: how many tools to ask the retriever for; the peers' `toolgen_ndcg@k` counts relevant tools among these
    (ToolGen: 100). Default max(ks, recall_ks), the least the metrics need.
  With return_rankings, result["rankings"][setting] = {query id: ranked ids} (for reports and error analysis).
  universe: the multi-domain candidate set when it is not the whole corpus (one benchmark's tools inside a pooled
    corpus); a relevant tool outside it raises ValueError.
  pool_exclude: splits scored on their own but left out of the pooled split "all" (diagnostic probes such as
    training queries or memorisation documents, which would otherwise inflate the headline row).
  """
  recall_ks = tuple(sorted(set(recall_ks if recall_ks is not None else tuple(ks) + (5,))))
  need = max(max(ks), max(recall_ks))
  depth = need if depth is None else max(int(depth), need)
  result: dict = {"skipped": {"no_relevant": 0}, "config": {"ks": list(ks), "recall_ks": list(recall_ks),
                                                             "depth": depth}}
  scored = [q for q in queries if q.relevant]
  if universe is not None:
    allowed = set(int(t) for t in universe)
    for q in scored:
      if not set(q.relevant) <= allowed:
        raise ValueError(f"query {q.id}: relevant tools {sorted(set(q.relevant) - allowed)} are outside the universe")
  result["skipped"]["no_relevant"] = len(queries) - len(scored)
  if return_rankings:
    result["rankings"] = {}
  for setting in settings:
    pools = candidate_pools(scored, setting, group_pools, universe)
    keep = [i for i, p in enumerate(pools) if p is not False]
    result["skipped"][f"{setting}/no_candidates"] = len(scored) - len(keep)
    qs = [scored[i] for i in keep]
    ranked = rank_queries(retriever, qs, depth, [pools[i] for i in keep], batch_size,
                          progress=f"{progress} {setting}" if progress else None)
    if return_rankings:
      result["rankings"][setting] = {q.id: r for q, r in zip(qs, ranked)}
    cells: dict[tuple[str, str], list[dict]] = {}
    for q, r in zip(qs, ranked):
      row = metrics_lib.query_metrics(r, q.relevant, ks, recall_ks, depth=depth)
      for split in {q.split or ALL} | ({ALL} if q.split not in pool_exclude else set()):
        for group in {ALL, q.group or ALL}:
          cells.setdefault((split, group), []).append(row)
    table: dict = {}
    for (split, group), rows in sorted(cells.items()):
      table.setdefault(split, {})[group] = metrics_lib.mean_metrics(rows)
    result[setting] = table
  return result


def evaluate_methods(retrievers: Mapping[str, Retriever], queries: Sequence[Query], **kwargs) -> dict:
  """`evaluate` for several methods on the same queries: {method name: result}."""
  return {name: evaluate(r, queries, **kwargs) for name, r in retrievers.items()}


def select_split(queries: Sequence[Query], split: str, label: str) -> list[Query]:
  """The queries to score: split 'auto' = 'test', else 'eval', else every query; '' = every query; else exactly
  that split (a ValueError naming `label` when no query has it)."""
  splits = sorted({q.split for q in queries})
  if split == "":
    return list(queries)
  if split == "auto":
    for s in ("test", "eval"):
      if s in splits:
        return [q for q in queries if q.split == s]
    return list(queries)
  if split not in splits:
    raise ValueError(f"{label}: no query has split {split!r}; splits present: {splits}")
  return [q for q in queries if q.split == split]
