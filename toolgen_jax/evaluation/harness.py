"""Scores any `Retriever` on a list of queries, per setting, split and group, with the metrics of `metrics.py`.

Settings (`SETTINGS`; their one-line definitions in `SETTING_DESCRIPTIONS`, which the report prints):
  "multi-domain": every tool of the corpus is a candidate (or every tool of `universe` when given).
  "in-domain":    the papers' in-domain (ToolGen / ToolWeaver / Toolscaler tables): every tool of the query's group,
                  the I1/I2/I3 pool = the union of the candidate lists and relevant tools of all the group's queries
                  (`pools_by_group`; ToolBench's per-group retrieval corpus is built the same way). Pass
                  `group_pools=pools_by_group(dataset.queries)` (every split); without it the pools come from the
                  evaluated queries and result["config"]["in_domain_pools"] says so.
  "candidates":   the query's own candidate list (`Query.candidates`, StableToolBench `api_list`, 1-13 tools); a
                  query without one is skipped (and counted).

Result layout (plain dict, JSON-ready):
  result[setting][split][group] = {"ndcg@1": ..., "ndcg@3": ..., "ndcg@5": ..., "recall@5": ...,
                                   "toolgen_ndcg@k": ..., "n": number of queries}
where `split` and `group` also take the value "all" (the aggregate over every query of that setting), and
result["skipped"] counts the queries left out and why. result["config"] records the cut-offs, the depth asked of
the retriever, the depth of the peers' NDCG (`toolgen_depth`, ToolGen's 100) and what each setting means.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import metrics as metrics_lib
from toolgen_jax.evaluation.retriever import Retriever, check_rankings

SETTINGS = ("multi-domain", "in-domain", "candidates")
SETTING_DESCRIPTIONS = {
    "multi-domain": "every tool of the corpus is a candidate",
    "in-domain": "the papers' in-domain: every tool of the query's group (I1/I2/I3 pool)",
    "candidates": "the query's own candidate list (StableToolBench api_list)",
}
ALL = "all"


def pools_by_group(queries: Sequence[Query]) -> dict[str, tuple[int, ...]]:
  """{group: sorted tool ids}: the union of the candidate lists and relevant tools of every query of the group (the
  papers' in-domain pool). Pass every split's queries: the pool is the group's tool set, not a training signal."""
  pools: dict[str, set[int]] = {}
  for q in queries:
    pool = pools.setdefault(q.group, set())
    pool.update(int(t) for t in q.relevant)
    if q.candidates is not None:
      pool.update(int(t) for t in q.candidates)
  return {g: tuple(sorted(p)) for g, p in sorted(pools.items())}


def candidate_pools(queries: Sequence[Query], setting: str,
                    group_pools: Mapping[str, Sequence[int]] | None = None,
                    universe: Sequence[int] | None = None) -> list[tuple[int, ...] | None | bool]:
  """Per query: None (every tool), a tuple of tool ids, or False (no pool in this setting: skip).

  in-domain: `group_pools[query.group]` (a query of a group without a pool is skipped); candidates: the query's own.
  """
  if setting == "multi-domain":
    return [None if universe is None else tuple(universe)] * len(queries)
  if setting == "in-domain":
    pools = {} if group_pools is None else group_pools
    return [tuple(pools[q.group]) if q.group in pools else False for q in queries]
  if setting == "candidates":
    return [tuple(q.candidates) if q.candidates is not None else False for q in queries]
  raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")


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
             pool_exclude: Sequence[str] = (), toolgen_depth: int = metrics_lib.TOOLGEN_DEPTH) -> dict:
  """Scores `retriever` on `queries` in each setting (layout in the module docstring).

  ks: NDCG cut-offs (the papers: 1, 3, 5). recall_ks: Recall cut-offs (default ks + (5,)).
  depth: how many tools to ask the retriever for. Default max(ks, recall_ks), the least our metrics need; give
    `toolgen_depth` (config.eval.depth) for retrievers that rank the whole corpus cheaply, so that the peers'
    variant sees as many tools as in the papers (a generative retriever ranks its beam: leave it None there).
  toolgen_depth: the peers' `toolgen_ndcg@k` counts relevant tools among the first min(depth, toolgen_depth)
    ranked tools (ToolGen: 100, for every method); result["config"] records both.
  group_pools: the in-domain pools (`pools_by_group(dataset.queries)`); None = built from the evaluated queries
    outside `pool_exclude`.
  With return_rankings, result["rankings"][setting] = {query id: ranked ids} (for reports and error analysis).
  universe: the multi-domain candidate set when it is not the whole corpus (one benchmark's tools inside a pooled
    corpus); a relevant tool outside it raises ValueError.
  pool_exclude: splits scored on their own but left out of the pooled split "all" (diagnostic probes such as
    training queries or memorisation documents, which would otherwise inflate the headline row).
  """
  recall_ks = tuple(sorted(set(recall_ks if recall_ks is not None else tuple(ks) + (5,))))
  need = max(max(ks), max(recall_ks))
  depth = need if depth is None else max(int(depth), need)
  pools_from = "given"
  if group_pools is None and "in-domain" in settings:
    group_pools = pools_by_group([q for q in queries if q.split not in pool_exclude])
    pools_from = "evaluated queries"
  result: dict = {"skipped": {"no_relevant": 0}, "config": {
      "ks": list(ks), "recall_ks": list(recall_ks), "depth": depth, "toolgen_depth": int(toolgen_depth),
      "toolgen_depth_effective": min(depth, int(toolgen_depth)), "in_domain_pools": pools_from,
      "settings": {s: SETTING_DESCRIPTIONS.get(s, s) for s in settings}}}
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
      row = metrics_lib.query_metrics(r, q.relevant, ks, recall_ks, depth=int(toolgen_depth))
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
