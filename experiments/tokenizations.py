"""Toolscaler Tables 3 and 10 (and ToolGen's Table 4 ablation): the tool tokenizations side by side, every one trained
and scored the same way, so only the codes differ.

  python experiments/tokenizations.py [--methods atomic,numerical,hierarchical,semantic,toolweaver,toolscaler]

atomic = ToolGen's one token per tool; numerical = the tool index in base-10 digits; hierarchical = ToolGen's
clustering tree (10 children per node); semantic = the tool name in the LLM's own sub-words; toolweaver = RQ-VAE with
the collaborative loss (Eq. 6, lambda = 1) and Sinkhorn; toolscaler = PCA + residual k-means over MiniLM embeddings
(no gist model and no post-guided rounds on this CPU: the code engine trains no backbone; `configs/toolscaler.py`).

Scale (`common.py`): the first 200 BFCL tools, 242 training / 68 test questions, SmolLM2-135M frozen with the code
engine, 1 view per tool, 40 epochs, K = 32, L = 2, multi-domain (all 200 tools candidates). About 3-5 min per
method on the shared 2-core CPU. Table 10's "with and without the trajectory stage" is not run: BFCL has no
trajectories, and the code engine trains memorisation + retrieval only (trajectories train on the recipe engine,
`configs/agent.py`, ToolBench's 13 example trajectories: too few to move retrieval), so the table has no such column.
"""

import time

import common

NAME = "tokenizations"
COLUMNS = [("method", "tokenizer"), ("test_ndcg@1", "test NDCG@1"), ("test_ndcg@5", "test NDCG@5"),
           ("train_ndcg@1", "train q NDCG@1"), ("docs_ndcg@1", "own doc NDCG@1"), ("new_tokens", "new tokens"),
           ("collision_rate", "collision rate", ".3f"), ("ppl_ratio", "ppl tuned/base", ".3f"), ("bm25_ndcg@1", "BM25"),
           ("minilm_ndcg@1", "MiniLM"), ("seconds", "wall s")]


def method_rows(methods, args) -> list[dict]:
  """One row per tokenizer: its point at the common scale (trained once, shared with perplexity.py)."""
  return [common.point_row(m, common.point_config(m, **common.scale(args)), args, method=m) for m in methods]


def main(argv=None):
  ap = common.parser(NAME, __doc__)
  ap.add_argument("--methods", default=",".join(common.METHOD_CONFIGS))
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  methods = args.methods.split(",")
  rows = method_rows(methods, args)
  plot = common.bar_plot(methods, {"test": [r.get("test_ndcg@1") for r in rows],
                                   "training queries": [r.get("train_ndcg@1") for r in rows],
                                   "own documents": [r.get("docs_ndcg@1") for r in rows]})
  return common.write(NAME, args, title="Tool tokenizations (Toolscaler Tables 3, 10), BFCL, NDCG@1",
                      columns=COLUMNS, rows=rows, plot=plot, t0=t0,
                      notes="Multi-domain: every tool of the corpus is a candidate. BM25 / MiniLM: the same test "
                            "queries. No trajectory column: BFCL has no trajectories (module docstring).")


if __name__ == "__main__":
  main()
