"""Toolscaler Table 13: retrieval as the tool set grows, the same method trained on 1%, 10%, 50% and 100% of a corpus.

  python experiments/toolset_scale.py [--tools 200] [--fractions 0.01,0.1,0.5,1] [--methods toolscaler]

Each point keeps the first fraction x `--tools` BFCL tools (`data.max_tools`: tool ids below it and the questions
whose tools all are; a question keeps its train/test split at every size) and trains Toolscaler's codes (PCA +
residual k-means, K = min(32, tools) per level, L = 2, collisions reported as the paper does) on them with the code
engine, scored multi-domain over that point's tools. The test set therefore grows with the tool set (5 questions
at 20 tools, 34 at 100, 68 at 200; 1% = 2 tools may have none, and its row then says so): the small points say
little, and the table gives their counts.

Scale (`common.py`): 200 BFCL tools at 100% (the demo's 2,555 would take ~25 min per point here, and 400 twice a
200-tool point), SmolLM2-135M frozen, 1 view per tool, 40 epochs; the 100% point is `tokenizations.py`'s Toolscaler
point, the others cost less (their cache pass is over fewer examples).
"""

import time

import common

NAME = "toolset_scale"
COLUMNS = [("method", "tokenizer"), ("fraction", "fraction", ".2f"), ("tools", "tools"), ("test_queries", "test q"),
           ("test_ndcg@1", "test NDCG@1"), ("test_ndcg@5", "test NDCG@5"), ("train_ndcg@1", "train q NDCG@1"),
           ("bm25_ndcg@1", "BM25"), ("minilm_ndcg@1", "MiniLM"), ("collision_rate", "collision rate", ".3f"),
           ("seconds", "wall s")]


def main(argv=None):
  ap = common.parser(NAME, __doc__)
  ap.add_argument("--fractions", default="0.01,0.1,0.5,1")
  ap.add_argument("--methods", default="toolscaler")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  sc = common.scale(args)
  fractions = [float(f) for f in args.fractions.split(",")]
  if args.smoke:
    fractions = [f for f in fractions if f >= 0.5]
  rows = []
  for m in args.methods.split(","):
    for f in fractions:
      n = max(2, round(f * sc["tools"]))
      rows.append(common.point_row(m, common.point_config(m, **{**sc, "tools": n}), args, method=m, fraction=f,
                                   tools=n))
  series = {f"{m} {k}": [r.get(f"{k}_ndcg@1") for r in rows if r["method"] == m]
            for m in args.methods.split(",") for k in ("test", "bm25")}
  plot = common.line_plot(fractions, series, xlabel="fraction of the tool set", logx=True)
  return common.write(NAME, args, title=f"Toolscaler Table 13: tool-set scale (of {sc['tools']} BFCL tools), NDCG@1",
                      columns=COLUMNS, rows=rows, plot=plot, t0=t0,
                      notes="Multi-domain over each point's own tools. BM25: the same queries and tools.")


if __name__ == "__main__":
  main()
