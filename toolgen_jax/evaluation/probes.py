"""The queries a pipeline run is scored on: the test split, plus two diagnostic probes.

* train: a seeded sample of `eval.train_queries` training queries (split "train"): whether retrieval was learnt on
  what the model saw.
* memorisation: `eval.memorization_tools` tools of the test queries (seeded sample), each queried by its own
  memorisation document (split "memorisation"): whether doc -> code was learnt at all, which generalising to
  queries about those tools needs first. Tools whose memorisation text is identical count as relevant too.
The harness scores every split separately, and excludes both probes from the in-domain candidate pools.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation.harness import select_split
from toolgen_jax.training.stages import memorization_documents

PROBE_SPLITS = ("train", "memorisation")


def memorization_queries(config: Any, dataset: Any, test: list[Query]) -> list[Query]:
  n = int(config.eval.get("memorization_tools", 0))
  if n <= 0 or "memorization" not in config.train.stages:
    return []
  tools = sorted({t for q in test if q.split != "train" for t in q.relevant}) or list(range(len(dataset.corpus)))
  pick = sorted(np.random.default_rng(int(config.seed)).permutation(tools)[:n].tolist())
  max_chars = int(config.train.memorization_max_chars or config.data.doc_max_chars)
  first: dict[int, str] = {}  # each tool's first memorisation document (its first view when training on views)
  owners: dict[str, set[int]] = {}  # every memorisation text -> the tools trained on exactly that text
  for tid, _, text in memorization_documents(dataset.corpus, template=config.data.doc_template, max_chars=max_chars,
                                             views=tuple(config.train.get("memorization_views", ()))):
    owners.setdefault(text, set()).add(int(tid))
    first.setdefault(int(tid), text)
  # A text that is the memorisation document of several tools (BFCL repeats a function across categories with only
  # parameter types changed; cut documents can coincide) cannot name one of them: every tool trained on that exact
  # text is relevant, the probed tool first. `benchmarks/probe_ceiling.py` gives the strict reading beside it.
  return [Query(id=f"memorisation/{t}", text=first[t], relevant=(int(t),) + tuple(sorted(owners[first[t]] - {int(t)})),
                group="documents", split="memorisation") for t in pick if t in first]


def evaluation_queries(config: Any, dataset: Any) -> list[Query]:
  """Test queries (`eval.split`, at most `eval.max_queries`), then the training-query and own-document probes."""
  test = [q for q in select_split(dataset.queries, str(config.eval.split), config.data.source) if q.split != "train"]
  if int(config.eval.max_queries) > 0:
    test = test[:int(config.eval.max_queries)]
  if int(config.eval.train_queries) > 0:  # a seeded sample of training queries, scored as split "train"
    train_q = [q for q in dataset.queries if q.split == "train"]
    pick = np.random.default_rng(int(config.seed)).permutation(len(train_q))[:int(config.eval.train_queries)]
    test = test + [train_q[i] for i in sorted(pick)]
  return test + memorization_queries(config, dataset, test)


def summary(report: dict, source: str, method: str) -> dict:
  """The run's four headline figures (x100, multi-domain, every tool a candidate): the model's NDCG@1 on its own
  documents, on training queries and on the test queries, and tuned / base held-out perplexity. None where the run
  did not measure one."""
  def ndcg1(split):
    try:
      return round(100 * report["files"][source]["methods"][method]["multi-domain"][split]["all"]["ndcg@1"], 1)
    except KeyError:
      return None
  splits = report.get("files", {}).get(source, {}).get("methods", {}).get(method, {}).get("multi-domain", {})
  test = next((s for s in splits if s not in PROBE_SPLITS), None)
  ppl = report.get("perplexity") or {}
  ratio = None
  if "base" in ppl and "tuned" in ppl:
    ratio = round(ppl["tuned"]["perplexity"] / ppl["base"]["perplexity"], 3)
  return {"own_document_ndcg@1": ndcg1("memorisation"), "train_queries_ndcg@1": ndcg1("train"),
          "test_ndcg@1": ndcg1(test) if test else None, "perplexity_ratio": ratio}
