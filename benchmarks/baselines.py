"""Zero-shot retrieval baselines (BM25, MiniLM embedding similarity) on the real data, multi-domain (every tool of
the corpus is a candidate), NDCG@k with all relevant tools counted (and the peers' variant for reference).

  python benchmarks/baselines.py                       # ~10-15 min on 2 busy cores (MiniLM encoding dominates)
  python benchmarks/baselines.py --methods=bm25        # ~1-2 min
  python benchmarks/baselines.py --data=/path/to/shared/data --cache_dir=/tmp/tg_emb

Rows: StableToolBench G1/G2/G3 (I1/I2/I3) test instructions, ToolLens test (COLT qrels/test.tsv), BFCL v4 single-
turn queries pooled over all 2,555 function docs. Reference targets (BM25 NDCG@1): 66.3 / 71.7 / 55.7 (over
"the 2.5k APIs of all StableToolBench files"), ToolLens 38.6, BFCL 46.7.

Variants, to find what a published number depends on:
  doc     config   = toolgen_jax.data.documents with the base config template (what our pipeline indexes)
          toolgen  = ToolGen's eval_bm25 document: "category, tool, api, description, required_params: <json>,
                     optional_params: <json>, return_schema: <json>" rebuilt from the raw source records
          json     = (BFCL) json.dumps of name, description, parameters (our JSON-schema form)
          raw      = (BFCL) json.dumps of the function doc exactly as in the BFCL files
  bm25    lucene | robertson IDF (bm25s), analyzer words (\\w\\w+, stop words) | nltk (ToolGen-like: punctuation kept),
          and words + Snowball stemming (needs PyStemmer; skipped without it)
  corpus  (StableToolBench) stb1417 = the 1,417 unique APIs of our 3 instruction files;
          proxy2500 = those + 1,083 real ToolBench APIs drawn (seed 0) from COLT's ToolBench-G3 corpus as stand-ins
          for the APIs of the StableToolBench files our snapshot lacks (G1_tool, G1_category, G2_category).
          (BFCL) by-name = diagnostic: a doc counts as relevant when its function *name* is relevant.
Last stdout line: a JSON object with every row.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time

import numpy as np

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/tokenizers.py would shadow the
# `tokenizers` package: drop that folder, put the repo root first.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from toolgen_jax import assets  # noqa: E402
from toolgen_jax import config as config_lib  # noqa: E402
from toolgen_jax.data.documents import documents_from_config  # noqa: E402
from toolgen_jax.data.readers import load_source  # noqa: E402
from toolgen_jax.data.readers.beir import parse_colt_text  # noqa: E402
from toolgen_jax.evaluation import harness  # noqa: E402
from toolgen_jax.evaluation.bm25 import BM25Retriever  # noqa: E402

TARGETS = {("stabletoolbench", "I1"): 66.3, ("stabletoolbench", "I2"): 71.7, ("stabletoolbench", "I3"): 55.7,
           ("toollens", "all"): 38.6, ("bfcl", "all"): 46.7}
PROXY_SIZE = 2500


def toolgen_doc(category, tool, api, description, required, optional, schema) -> str:
  """ToolGen `evaluation/retrieval/eval_bm25.py` process_retrieval_document, field for field."""
  return (f"{category or ''}, {tool or ''}, {api or ''}, {description or ''}, required_params: {json.dumps(required)}"
          f", optional_params: {json.dumps(optional)}, return_schema: {json.dumps(schema)}")


def raw_stb_docs(stb_dir: pathlib.Path) -> dict[tuple[str, str], str]:
  """(tool_name, api_name) -> ToolGen document of the first api_list entry with that key (the reader keeps the
  first one too)."""
  out = {}
  for f in sorted(stb_dir.glob("G*_instruction.json")):
    for rec in json.loads(f.read_text()):
      for a in rec["api_list"]:
        key = (a["tool_name"], a["api_name"])
        if key not in out:
          out[key] = toolgen_doc(a.get("category_name"), a["tool_name"], a["api_name"], a.get("api_description"),
                                 a.get("required_parameters", ""), a.get("optional_parameters", ""),
                                 a.get("template_response", ""))
  return out


def raw_bfcl_docs(bf) -> list[str]:
  """json.dumps of each tool's function doc exactly as in the BFCL files (a query's `function` list is aligned with
  its `candidates`, which the reader builds in the same order)."""
  from toolgen_jax.data.readers.bfcl import SINGLE_TURN

  by_id = {q.id: q for q in bf.queries}
  docs: dict[int, str] = {}
  root = assets.bfcl_data_dir()
  for cat in SINGLE_TURN:
    for line in (root / f"BFCL_v4_{cat}.json").open():
      rec = json.loads(line)
      q = by_id.get(rec["id"])
      if q is not None and len(q.candidates) == len(rec["function"]):
        for fn, tid in zip(rec["function"], q.candidates):
          docs.setdefault(tid, json.dumps(fn))
  if len(docs) != len(bf.corpus):
    raise RuntimeError(f"raw BFCL docs found for {len(docs)} of {len(bf.corpus)} tools")
  return [docs[i] for i in range(len(bf.corpus))]


def colt_toolgen_doc(text: str) -> str:
  p = parse_colt_text(text)
  if p is None:
    return text
  return toolgen_doc(p["category"], p["tool_name"], p["api_name"], p["description"], p["required"], p["optional"],
                     p["return_schema"])


def load_all(data: pathlib.Path, cfg) -> dict:
  """Every evaluation set: {name: dict(queries, docs={template: [str]}, group_key)}."""
  out = {}
  stb_dir = data / "StableToolBench" / "solvable_queries" / "test_instruction"
  stb = load_source("stabletoolbench", stb_dir, log=False)
  raw = raw_stb_docs(stb_dir)
  stb_docs = {"config": documents_from_config(stb.corpus, cfg.data),
              "toolgen": [raw[t.key] for t in stb.corpus]}
  out["stabletoolbench/stb1417"] = dict(queries=stb.queries, docs=stb_docs)

  g3_dir = data / "COLT" / "datasets" / "ToolBenchG3"
  g3 = load_source("beir", g3_dir, log=False)
  g3_text = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (g3_dir / "corpus.jsonl").open()}
  extra = [t for t in g3.corpus if t.key not in stb.corpus]
  pick = np.random.default_rng(0).choice(len(extra), size=PROXY_SIZE - len(stb.corpus), replace=False)
  extra = [extra[i] for i in sorted(pick)]
  out["stabletoolbench/proxy2500"] = dict(queries=stb.queries, docs={
      "config": stb_docs["config"] + documents_from_config(extra, cfg.data),
      "toolgen": stb_docs["toolgen"] + [colt_toolgen_doc(g3_text[t.extra["corpus_id"]]) for t in extra]},
      n_extra_available=len([t for t in g3.corpus if t.key not in stb.corpus]))

  tl_dir = data / "COLT" / "datasets" / "ToolLens"
  tl = load_source("beir", tl_dir, log=False)
  tl_text = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (tl_dir / "corpus.jsonl").open()}
  out["toollens"] = dict(queries=[q for q in tl.queries if q.split == "test"], docs={
      "config": documents_from_config(tl.corpus, cfg.data),
      "toolgen": [colt_toolgen_doc(tl_text[t.extra["corpus_id"]]) for t in tl.corpus]})

  bf = load_source("bfcl", None, log=False)
  out["bfcl"] = dict(queries=bf.queries, names=[t.api_name for t in bf.corpus], docs={
      "config": documents_from_config(bf.corpus, cfg.data),
      "json": [json.dumps({"name": t.api_name, "description": t.description, "parameters": dict(t.parameters)})
               for t in bf.corpus],
      "raw": raw_bfcl_docs(bf)})
  return out


class ByName:
  """Diagnostic: re-keys a ranking by function name (BFCL has 1,437 names over 2,555 docs), so any doc carrying a
  relevant name counts; rankings are de-duplicated by name. Paired with `name_queries`."""

  def __init__(self, retriever, names: list[str]):
    self.retriever = retriever
    vocab = {n: i for i, n in enumerate(sorted(set(names)))}
    self.name_id = [vocab[n] for n in names]

  def rank(self, queries, k, candidates):
    out = []
    for r in self.retriever.rank(queries, k, [None] * len(queries)):
      out.append(list(dict.fromkeys(self.name_id[t] for t in r)))
    return out

  def name_queries(self, queries):
    import dataclasses
    return [dataclasses.replace(q, relevant=tuple(dict.fromkeys(self.name_id[t] for t in q.relevant)),
                                candidates=None) for q in queries]


def score(retriever, queries, depth=100) -> dict:
  res = harness.evaluate(retriever, queries, settings=("multi-domain",), depth=depth)["multi-domain"]["all"]
  return {g: {m: round(100 * v, 2) if m != "n" else v for m, v in cell.items()} for g, cell in res.items()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--data", default=None, help="shared data folder (default $TOOLGEN_DATA or ../shared/data)")
  p.add_argument("--methods", default="bm25,embedding")
  p.add_argument("--cache_dir", default="/tmp/toolgen_jax_bench_cache", help="embedding cache (workdir layout)")
  a = p.parse_args(argv)
  logging.disable(logging.WARNING)
  data = pathlib.Path(a.data) if a.data else assets.shared_data_dir()
  if data is None:
    print("real data not found: set TOOLGEN_DATA or pass --data", file=sys.stderr)
    return 2
  methods = a.methods.split(",")
  try:
    import Stemmer  # noqa: F401  (PyStemmer: the stemming rows are skipped without it)
    stemmer_available = True
  except ImportError:
    stemmer_available = False
  cfg = config_lib.base_config()
  t0 = time.time()
  sets = load_all(data, cfg)
  rows = []

  def add(dataset, corpus, method, variant, retriever, queries, n_docs):
    t = time.time()
    res = score(retriever, queries)
    rows.append(dict(dataset=dataset, corpus=corpus, n_docs=n_docs, method=method, variant=variant, result=res,
                     seconds=round(time.time() - t, 1)))

  if "bm25" in methods:
    for name, s in sets.items():
      dataset, _, corpus = name.partition("/")
      for doc_kind, docs in s["docs"].items():
        for bm_method, analyzer, stem in [("lucene", "words", None), ("lucene", "nltk", None),
                                          ("robertson", "words", None), ("robertson", "nltk", None),
                                          ("lucene", "words", "english")]:
          if stem and not stemmer_available:
            continue
          r = BM25Retriever(docs, method=bm_method, analyzer=analyzer, stemmer=stem)
          add(dataset, corpus or dataset, "bm25", f"doc={doc_kind} idf={bm_method} analyzer={analyzer}"
              + (f" stem={stem}" if stem else ""), r, s["queries"], len(docs))
          if dataset == "bfcl" and bm_method == "lucene" and analyzer == "words" and not stem:
            by_name = ByName(r, s["names"])
            add(dataset, "by-name", "bm25", f"doc={doc_kind} idf={bm_method} analyzer={analyzer}", by_name,
                by_name.name_queries(s["queries"]), len(docs))
  if "embedding" in methods:
    from toolgen_jax.codebook import embed
    from toolgen_jax.evaluation.embedding import EmbeddingRetriever
    enc = embed.load_encoder(cfg.encoder.path or "minilm")
    kw = dict(batch_size=cfg.encoder.batch_size, max_len=cfg.encoder.max_len)
    for name, s in sets.items():
      dataset, _, corpus = name.partition("/")
      for doc_kind, docs in s["docs"].items():
        if doc_kind != "config" and dataset != "stabletoolbench":
          continue
        demb = embed.cached_encode(docs, a.cache_dir, enc, progress=False, **kw)
        qtexts = [q.text for q in s["queries"]]
        qemb = embed.cached_encode(qtexts, a.cache_dir, enc, progress=False, **kw)
        lookup = {t: i for i, t in enumerate(qtexts)}
        r = EmbeddingRetriever(docs, lambda texts, qemb=qemb, lookup=lookup: qemb[[lookup[t] for t in texts]],
                               doc_embeddings=demb)
        add(dataset, corpus or dataset, "embedding", f"doc={doc_kind} minilm max_len={kw['max_len']}", r,
            s["queries"], len(docs))

  print(f"{'dataset':16s} {'corpus':10s} {'n_docs':>6s} {'method':9s} {'variant':44s} "
        f"{'NDCG@1 per group (target)':s}")
  for row in rows:
    cells = []
    for g, cell in row["result"].items():
      if g == "all" and len(row["result"]) > 1 and row["dataset"] == "stabletoolbench":
        continue
      target = TARGETS.get((row["dataset"], g))
      cells.append(f"{g}:{cell['ndcg@1']:.1f}" + (f" ({target})" if target and row["method"] == "bm25" else ""))
    print(f"{row['dataset']:16s} {row['corpus']:10s} {row['n_docs']:6d} {row['method']:9s} {row['variant']:44s} "
          + "  ".join(cells))
  print(json.dumps({"rows": rows, "targets_ndcg@1": {f"{d}/{g}": v for (d, g), v in TARGETS.items()},
                    "proxy_extra_available": sets["stabletoolbench/proxy2500"]["n_extra_available"],
                    "seconds": round(time.time() - t0, 1)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
