"""Harness: settings, per-group / per-split aggregation and skip counts, against hand-computed values."""

import math

import pytest

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import harness

N_TOOLS = 10


class Fixed:
  """Ranks tools in a fixed global order, filtered to the candidate pool."""

  def __init__(self, order):
    self.order = order
    self.calls = []

  def rank(self, queries, k, candidates):
    self.calls.append((len(queries), k))
    return [[t for t in self.order if c is None or t in c][:k] for c in candidates]


class Oracle:
  def rank(self, queries, k, candidates):
    out = []
    for q, c in zip(queries, candidates):
      rest = [t for t in range(N_TOOLS) if t not in q.relevant and (c is None or t in c)]
      out.append((list(q.relevant) + rest)[:k])
    return out


QUERIES = [
    Query("q1", "a", (0,), group="I1", split="test", candidates=(0, 5, 6)),
    Query("q2", "b", (1, 2), group="I1", split="test", candidates=(1, 2, 7)),
    Query("q3", "c", (3,), group="I2", split="test", candidates=None),
    Query("q4", "d", (), group="I2", split="test"),  # no relevant tool: skipped and counted
]


def test_oracle_is_perfect():
  res = harness.evaluate(Oracle(), QUERIES, group_pools=harness.pools_by_group(QUERIES))
  for setting in harness.SETTINGS:
    cell = res[setting]["all"]["all"]
    assert cell["n"] == (2 if setting == "candidates" else 3)  # q3 has no candidate list of its own
    assert cell["ndcg@1"] == cell["ndcg@5"] == cell["recall@5"] == 1.0
  assert res["skipped"]["no_relevant"] == 1


def test_fixed_ranking_by_hand():
  order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
  r = Fixed(order)
  res = harness.evaluate(r, QUERIES, ks=(1, 3, 5), settings=("multi-domain", "candidates"))
  # multi-domain: top-5 = 9 8 7 6 5, no relevant tool for anyone.
  md = res["multi-domain"]
  assert md["all"]["all"]["ndcg@5"] == 0.0 and md["all"]["all"]["n"] == 3
  assert set(md["test"]) == {"all", "I1", "I2"} and set(md) == {"all", "test"}
  # candidates: q1 pool (0,5,6) -> [6,5,0]: relevant at rank 3; q2 pool (1,2,7) -> [7,2,1]; q3 has none: skipped.
  ind = res["candidates"]["test"]["I1"]
  assert ind["n"] == 2
  d3 = 1 / math.log2(4)
  q1 = d3 / 1.0
  q2 = (1 / math.log2(3) + d3) / (1 + 1 / math.log2(3))
  assert ind["ndcg@3"] == pytest.approx((q1 + q2) / 2)
  assert ind["ndcg@1"] == 0.0
  assert ind["recall@5"] == 1.0
  assert res["skipped"]["candidates/no_candidates"] == 1
  assert "I2" not in res["candidates"]["test"]
  # depth defaults to the largest cut-off, and the peers' variant is reported next to ours.
  assert r.calls[0][1] == 5
  # Every relevant tool is within the retrieved depth here, so the two NDCG variants agree.
  assert ind["toolgen_ndcg@3"] == pytest.approx(ind["ndcg@3"])


def test_group_pools_and_depth():
  r = Fixed(list(range(N_TOOLS))[::-1])
  res = harness.evaluate(r, QUERIES, settings=("in-domain",), group_pools={"I2": (3, 4)}, depth=7,
                         recall_ks=(1, 7), return_rankings=True)
  assert r.calls[0][1] == 7
  assert res["rankings"]["in-domain"]["q3"] == [4, 3]
  assert res["in-domain"]["test"]["I2"]["recall@1"] == 0.0
  assert res["in-domain"]["test"]["I2"]["recall@7"] == 1.0
  assert "multi-domain" not in res
  assert res["skipped"]["in-domain/no_candidates"] == 2  # group I1 has no pool here
  assert res["config"]["in_domain_pools"] == "given"


def test_in_domain_pools_equal_the_groups_tools():
  """The papers' in-domain pool of a query is every tool of its group (I1/I2/I3): the union of the group's
  candidate lists and relevant tools over all its queries, not the query's own api_list."""
  qs = [Query("a", "x", (0,), group="I1", split="train", candidates=(0, 1, 2)),
        Query("b", "x", (3,), group="I1", split="test", candidates=(3, 4)),
        Query("c", "x", (5, 9), group="I2", split="test", candidates=(5, 6)),
        Query("d", "x", (7,), group="I3", split="test")]
  pools = harness.pools_by_group(qs)
  assert pools == {"I1": (0, 1, 2, 3, 4), "I2": (5, 6, 9), "I3": (7,)}
  ref = {g: sorted({t for q in qs if q.group == g for t in q.relevant + (q.candidates or ())}) for g in pools}
  assert {g: list(p) for g, p in pools.items()} == ref
  assert harness.candidate_pools(qs, "in-domain", pools) == [pools["I1"], pools["I1"], pools["I2"], pools["I3"]]
  assert harness.candidate_pools(qs, "candidates") == [(0, 1, 2), (3, 4), (5, 6), False]
  r = Fixed([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
  res = harness.evaluate(r, qs, settings=("in-domain", "candidates"), group_pools=pools, return_rankings=True)
  assert res["rankings"]["in-domain"]["b"] == [4, 3, 2, 1, 0]      # the whole I1 pool, training query's tools too
  assert res["rankings"]["candidates"]["b"] == [4, 3]
  assert res["config"]["settings"]["in-domain"].startswith("the papers' in-domain")
  # Without pools the harness builds them from the evaluated queries (outside pool_exclude) and says so.
  own = harness.evaluate(r, qs, settings=("in-domain",), pool_exclude=("train",), return_rankings=True)
  assert own["config"]["in_domain_pools"] == "evaluated queries"
  assert own["rankings"]["in-domain"]["b"] == [4, 3]


def test_toolgen_ndcg_depth_is_recorded_and_applied():
  q = [Query("a", "x", (0, 1), group="g", split="test")]
  r = Fixed([5, 0, 6, 7, 1, 2])
  deep = harness.evaluate(r, q, settings=("multi-domain",), ks=(1, 3), depth=6)
  assert deep["config"]["toolgen_depth"] == 100 and deep["config"]["toolgen_depth_effective"] == 6
  cut = harness.evaluate(r, q, settings=("multi-domain",), ks=(1, 3), depth=6, toolgen_depth=3)
  # depth 100 (the papers) sees both relevant tools (ranks 2 and 5): IDCG@3 over 2 found; at depth 3 only one is
  d = lambda i: 1 / math.log2(i + 1)
  assert deep["multi-domain"]["all"]["all"]["toolgen_ndcg@3"] == pytest.approx(d(2) / (d(1) + d(2)))
  assert cut["multi-domain"]["all"]["all"]["toolgen_ndcg@3"] == pytest.approx(d(2) / d(1))
  assert cut["config"]["toolgen_depth_effective"] == 3


def test_batches_and_bad_retriever():
  r = Fixed(list(range(N_TOOLS)))
  harness.evaluate(r, QUERIES, settings=("multi-domain",), batch_size=2)
  assert [c[0] for c in r.calls] == [2, 1]

  class Bad:
    def rank(self, queries, k, candidates):
      return [[0, 0]] * len(queries)

  with pytest.raises(ValueError, match="repeats"):
    harness.evaluate(Bad(), QUERIES)
  with pytest.raises(ValueError, match="unknown setting"):
    harness.evaluate(Oracle(), QUERIES, settings=("cross-domain",))


def test_bm25_end_to_end_beats_random_order():
  from toolgen_jax.evaluation.bm25 import BM25Retriever
  docs = [f"tool number {i} does {w}" for i, w in enumerate(
      ["weather", "stocks", "translation", "recipes", "flights", "hotels", "music", "news", "maps", "jokes"])]
  qs = [Query(f"q{i}", f"I need {w} please", (i,), group="g") for i, w in enumerate(
      ["weather", "stocks", "translation", "recipes", "flights"])]
  res = harness.evaluate_methods({"bm25": BM25Retriever(docs), "fixed": Fixed(list(range(9, -1, -1)))}, qs,
                                 settings=("multi-domain",))
  assert res["bm25"]["multi-domain"]["all"]["all"]["ndcg@1"] == 1.0
  assert res["fixed"]["multi-domain"]["all"]["all"]["ndcg@1"] == 0.0


def test_universe_restricts_multi_domain():
  r = Fixed([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
  res = harness.evaluate(r, QUERIES[:3], settings=("multi-domain",), universe=(0, 1, 2, 3), return_rankings=True)
  assert res["rankings"]["multi-domain"]["q1"] == [3, 2, 1, 0]
  assert res["multi-domain"]["test"]["I2"]["ndcg@1"] == 1.0  # q3: tool 3 is first inside the universe
  with pytest.raises(ValueError, match="outside the universe"):
    harness.evaluate(r, QUERIES[:3], settings=("multi-domain",), universe=(0, 1))


def test_pool_exclude_keeps_probes_out_of_the_pooled_row():
  probe = Query("p1", "e", (9,), group="documents", split="memorisation")
  res = harness.evaluate(Fixed([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]), QUERIES + [probe], settings=("multi-domain",),
                         pool_exclude=("memorisation",))
  md = res["multi-domain"]
  assert md["memorisation"]["all"]["ndcg@1"] == 1.0  # scored on its own ...
  assert md["all"]["all"]["n"] == 3 and md["all"]["all"]["ndcg@1"] == 0.0  # ... but not pooled into "all"
  pooled = harness.evaluate(Fixed([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]), QUERIES + [probe], settings=("multi-domain",))
  assert pooled["multi-domain"]["all"]["all"]["n"] == 4
