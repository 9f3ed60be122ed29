"""How high can the demo's two probes go? Identical texts with different gold tools, measured on a trained workdir.

BFCL repeats a function across its categories with only the parameter types changed (`calculate_displacement` x 4:
'integer' vs 'number'): 773 of the demo's 2,555 tools share their `name_description` view with another tool, and
that view is the own-document probe's query (`evaluation.probes.memorization_queries`: each tool's first view). No
model can tell those tools apart from that text, so the strict probe has an expected ceiling below 100 (a query
shared by k tools is right with chance 1/k under any tie-break the model did not learn from the probe itself).
This script measures, for a finished workdir:

  ceiling        the expected strict NDCG@1 ceiling of each probe (mean over queries of 1 / #tools with that text)
  strict         the model's top-1 hit rate counting the probed tool only (trie beam search, `decode.*` of the run;
                 the report's own-document probe counts every tool trained on the same text since 269e055)
  any_identical  top-1 counted right when it is any tool whose text is identical (the query cannot say more)
  unambiguous    top-1 on the probe queries whose text belongs to one tool only
  train_level2_ceiling  the best teacher-forced level-2 accuracy (given the true prefix) any model can reach on the
                 training examples themselves (identical prompt + prefix with different level-2 codes), per source

  python benchmarks/probe_ceiling.py --workdir=workdirs/default     # final JSON line (~1-2 min on 2 cores)
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys

import numpy as np

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/tokenizers.py would shadow the
# `tokenizers` package: drop it, add the repository root.
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from toolgen_jax import artifact, prompts  # noqa: E402
from toolgen_jax.code_vocab import CodeVocabulary  # noqa: E402
from toolgen_jax.decoding.generative import GenerativeRetriever  # noqa: E402
from toolgen_jax.evaluation import probes  # noqa: E402
from toolgen_jax.training import feature_cache as fc  # noqa: E402
from toolgen_jax.training import input_pipeline as ip  # noqa: E402
from toolgen_jax.training import stages  # noqa: E402


def level2_ceiling(prompt_keys: list[bytes], codes: np.ndarray) -> float:
  """Best achievable share of examples whose level-2 code is predicted right given (prompt, level-1 code)."""
  groups: dict = collections.defaultdict(collections.Counter)
  for key, c in zip(prompt_keys, codes):
    groups[(key, int(c[0]))][int(c[1])] += 1
  return sum(max(g.values()) for g in groups.values()) / max(len(prompt_keys), 1)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="workdirs/default")
  args = ap.parse_args()
  tr = artifact.load_trained(args.workdir)
  c, ds, cb, model = tr.config, tr.dataset, tr.codebook, tr.model
  tc = c.train
  views = tuple(tc.get("memorization_views", ()))
  max_chars = int(tc.memorization_max_chars or c.data.doc_max_chars)
  tools_of_text: dict = collections.defaultdict(set)  # every training text -> the tools it is a gold text for
  for tid, _, text in stages.memorization_documents(ds.corpus, template=c.data.doc_template, max_chars=max_chars,
                                                    views=views):
    tools_of_text[text].add(tid)
  train_q = stages.training_queries(ds)
  for q in train_q:
    tools_of_text[q.text].update(q.relevant)
  queries = probes.evaluation_queries(c, ds)
  retriever = GenerativeRetriever(
      model.params, model.config, model.tokenizer, artifact.build_trie(c, cb, model.tokenizer),
      beam_size=int(c.decode.beam_size), batch_size=int(c.eval.batch_size),
      alpha=float(c.decode.length_normalization), name="model", system_prompt=tc.system_prompt,
      normalize=c.decode.normalize)
  out = {"workdir": str(args.workdir)}
  for split in probes.PROBE_SPLITS:
    qs = [q for q in queries if q.split == split]
    if not qs:
      continue
    # Strict gold: the probed tool only (the report's own-document probe also counts tools trained on the same text,
    # `probes.memorization_queries`, relevant[1:]).
    gold = [set(q.relevant[:1]) if split == "memorisation" else set(q.relevant) for q in qs]
    same = [g | tools_of_text[q.text] for g, q in zip(gold, qs)]
    top = [t[0] if len(t) else -1 for t in retriever.rank(qs, 1)]
    hit = np.array([t in g for g, t in zip(gold, top)])
    unamb = np.array([len(s) == len(g) for g, s in zip(gold, same)])
    out[split] = {
        "n": len(qs), "ceiling": round(100 * float(np.mean([min(1.0, len(g) / len(s))
                                                             for g, s in zip(gold, same)])), 1),
        "strict": round(100 * float(hit.mean()), 1),
        "any_identical": round(100 * float(np.mean([t in s for t, s in zip(top, same)])), 1),
        "unambiguous": {"n": int(unamb.sum()), "strict": round(100 * float(hit[unamb].mean()), 1)}}
  # The training examples themselves (the engine's mixed run): identical prompts under one prefix.
  vocab = CodeVocabulary(cb, model.tokenizer)
  examples = []
  for stage in tc.stages:
    examples += stages.stage_examples(stage, corpus=ds.corpus, queries=train_q, trajectories=[], codes=vocab,
                                      tokenizer=model.tokenizer, train_config=tc, data_config=c.data,
                                      finish_id=cb.finish_id)
  cex = fc.code_examples([ip.encode_example(model.tokenizer, e)[0] for e in examples], np.asarray(vocab.token_ids),
                         int(tc.seq_len), pad_id=model.tokenizer.pad_id or 0,
                         keep_tail=prompts.prompt_suffix_tokens(model.tokenizer, tc.get("system_prompt")))
  keys = [cex.tokens[i, :int(cex.code_pos[i, 0]) + 1].tobytes() for i in range(len(cex))]
  is_doc = np.array([e.id.startswith("memorization") for e in examples])
  out["train_level2_ceiling"] = {
      name: round(level2_ceiling([k for k, m in zip(keys, sel) if m], cex.codes[sel]), 4)
      for name, sel in (("all", np.ones(len(keys), bool)), ("documents", is_doc), ("queries", ~is_doc))}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
