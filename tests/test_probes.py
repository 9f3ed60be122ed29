"""The queries a pipeline run is scored on: test split, seeded training-query probe, own-document probe."""

import types

from toolgen_jax import config as config_lib
from toolgen_jax.data.records import Query, Tool
from toolgen_jax.evaluation import probes


def _setup(train_queries, memorization_tools, max_queries=-1):
  c = config_lib.base_config()
  c.unlock()
  c.eval.max_queries, c.eval.train_queries, c.eval.memorization_tools = max_queries, train_queries, memorization_tools
  corpus = [Tool(id=i, tool_name=f"tool{i}", api_name=f"api{i}", description=f"does thing {i}") for i in range(6)]
  queries = ([Query(f"tr{i}", f"train query {i}", (i,), split="train") for i in range(5)]
             + [Query(f"te{i}", f"test query {i}", (i % 3,), split="test") for i in range(4)])
  return c, types.SimpleNamespace(corpus=corpus, queries=queries)


def test_test_split_then_seeded_probes():
  c, ds = _setup(train_queries=2, memorization_tools=2, max_queries=3)
  qs = probes.evaluation_queries(c, ds)
  assert [q.id for q in qs[:3]] == ["te0", "te1", "te2"]  # max_queries cuts the test split
  train = [q for q in qs if q.split == "train"]
  assert len(train) == 2 and {q.id for q in train} <= {f"tr{i}" for i in range(5)}
  mem = [q for q in qs if q.split == "memorisation"]
  # Two of the test queries' relevant tools (0, 1, 2), each queried by its own document.
  assert len(mem) == 2 and all(q.relevant[0] in (0, 1, 2) and q.id == f"memorisation/{q.relevant[0]}" for q in mem)
  assert all(f"thing {q.relevant[0]}" in q.text for q in mem)
  assert [q.id for q in probes.evaluation_queries(c, ds)] == [q.id for q in qs]  # seeded
  assert set(probes.PROBE_SPLITS) == {"train", "memorisation"}


def test_no_probes_when_switched_off():
  c, ds = _setup(train_queries=0, memorization_tools=0)
  assert [q.id for q in probes.evaluation_queries(c, ds)] == [f"te{i}" for i in range(4)]
  c, ds = _setup(train_queries=0, memorization_tools=3)
  c.train.stages = ("retrieval",)  # no memorisation stage: nothing to probe
  assert probes.memorization_queries(c, ds, ds.queries) == []


def test_summary_reads_the_multi_domain_cells():
  cell = lambda v: {"all": {"ndcg@1": v}}
  rep = {"files": {"bfcl": {"methods": {"rqvae": {"multi-domain": {
      "test": cell(0.25), "train": cell(0.5), "memorisation": cell(0.9)}}}}},
         "perplexity": {"base": {"perplexity": 10.0}, "tuned": {"perplexity": 12.5}}}
  assert probes.summary(rep, "bfcl", "rqvae") == {"own_document_ndcg@1": 90.0, "train_queries_ndcg@1": 50.0,
                                                  "test_ndcg@1": 25.0, "perplexity_ratio": 1.25}
  assert probes.summary({}, "bfcl", "rqvae")["test_ndcg@1"] is None


def test_identical_memorisation_texts_make_every_owner_relevant():
  c, ds = _setup(train_queries=0, memorization_tools=3)
  # Tools 1 and 4 share their document (the same function in two categories): a query by that text names both.
  ds.corpus[4] = Tool(id=4, tool_name="tool1", api_name="api1", description="does thing 1")
  mem = {q.relevant[0]: q for q in probes.memorization_queries(c, ds, ds.queries)}
  assert set(mem) == {0, 1, 2}
  assert mem[1].relevant == (1, 4) and mem[0].relevant == (0,) and mem[2].relevant == (2,)
