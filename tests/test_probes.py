"""The evaluation queries of a run (test split + probes) and the report's headline summary."""

import types

from toolgen_jax import config as config_lib
from toolgen_jax.data.records import Query, Tool, ToolCorpus
from toolgen_jax.evaluation import probes


def test_evaluation_queries_and_probes():
  corpus = ToolCorpus([Tool(id=i, tool_name=f"t{i}", api_name="a", description=f"does {i}") for i in range(6)])
  qs = [Query(id=f"q{i}", text=f"q{i}", relevant=(i % 6,), split="test" if i < 4 else "train") for i in range(10)]
  c = config_lib.base_config()
  c.eval.max_queries, c.eval.train_queries, c.eval.memorization_tools = 3, 2, 2
  out = probes.evaluation_queries(c, types.SimpleNamespace(queries=qs, corpus=corpus))
  splits = [q.split for q in out]
  assert splits == ["test"] * 3 + ["train"] * 2 + ["memorisation"] * 2
  mem = [q for q in out if q.split == "memorisation"]
  assert all(q.relevant[0] in (0, 1, 2) for q in mem)  # tools of the scored test queries
  assert all(q.text.startswith(corpus[q.relevant[0]].category or "") for q in mem)


def test_summary_reads_the_multi_domain_cells():
  cell = lambda v: {"all": {"ndcg@1": v}}
  rep = {"files": {"bfcl": {"methods": {"rqvae": {"multi-domain": {
      "test": cell(0.25), "train": cell(0.5), "memorisation": cell(0.9)}}}}},
         "perplexity": {"base": {"perplexity": 10.0}, "tuned": {"perplexity": 12.5}}}
  assert probes.summary(rep, "bfcl", "rqvae") == {"own_document_ndcg@1": 90.0, "train_queries_ndcg@1": 50.0,
                                                  "test_ndcg@1": 25.0, "perplexity_ratio": 1.25}
  assert probes.summary({}, "bfcl", "rqvae")["test_ndcg@1"] is None
