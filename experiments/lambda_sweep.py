"""ToolWeaver Fig. 2: retrieval as the weight lambda of the collaborative loss (Eq. 6) goes 0, 0.01, 0.1, 1, 10.

  python experiments/lambda_sweep.py [--lambdas 0,0.01,0.1,1,10]

The paper finds an interior optimum: lambda = 0 ignores which tools are used together, a large lambda pulls
co-used tools onto one code and loses the tools' own semantics. Here every point is ToolWeaver's codebook (RQ-VAE,
Eq. 6 on the quantised vectors, `collab_form='paper'`, A normalised as `data.cooccurrence_normalization`,
Sinkhorn) trained and scored the same way; "edges sharing level 1" is the share of the training co-occurrence
graph's (weighted) edges whose two tools got the same first code, the quantity Eq. 6 acts on.

Scale (`common.py`): the first 200 BFCL tools (242 training / 68 test questions), SmolLM2-135M frozen with the code
engine, 1 view per tool, 40 epochs, K = 32, L = 2, multi-domain; 4-8 min per point on the shared 2-core CPU (lambda
= 1 is `tokenizations.py`'s ToolWeaver point). Caveat: most BFCL questions call one function, so the training
co-occurrence graph of those 200 tools has only 10 edges and Eq. 6 has little to act on. A second, codebook-only
table (no training, ~2 min per lambda) codes all 2,555 BFCL tools (344 training edges, K = 256 as
`configs/toolweaver.py:small`, 400 RQ-VAE steps as `configs/default.py`) at each lambda and reports the edges sharing a first code: the mechanism, where there
is a graph (`--no-graph-table` skips it).
"""

import time

import common

NAME = "lambda_sweep"
COLUMNS = [("lambda", "lambda", "g"), ("test_ndcg@1", "test NDCG@1"), ("test_ndcg@5", "test NDCG@5"),
           ("train_ndcg@1", "train q NDCG@1"), ("docs_ndcg@1", "own doc NDCG@1"),
           ("edges_sharing_level1", "edges sharing level 1", ".3f"), ("collision_rate", "collision rate", ".3f"),
           ("seconds", "wall s")]
GRAPH_K = 256
GRAPH_STEPS = 400  # RQ-VAE steps of configs/default.py (1,000 take ~4.5 min per lambda at 2,555 tools here)
GRAPH_COLUMNS = [("lambda", "lambda", "g"), ("edges_sharing_level1", "edges sharing level 1", ".4f"),
                 ("rate_before", "collision rate before Sinkhorn", ".4f"), ("rate_after", "after", ".4f")]


def main(argv=None):
  ap = common.parser(NAME, __doc__)
  ap.add_argument("--lambdas", default="0,0.01,0.1,1,10")
  ap.add_argument("--no-graph-table", action="store_true", help="skip the codebook-only table on all BFCL tools")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  lambdas = [float(x) for x in args.lambdas.split(",")]  # trained in this order, shown sorted
  rows = sorted((common.point_row("toolweaver", common.point_config(
      "toolweaver", **common.scale(args), overrides={"codebook.collab_lambda": lam}), args, **{"lambda": lam})
      for lam in lambdas), key=lambda r: r["lambda"])
  lambdas = sorted(lambdas)
  graph = [] if args.no_graph_table else graph_rows(lambdas, args)
  lines = common.line_plot(lambdas, {k: [r.get(f"{k}_ndcg@1") for r in rows] for k in ("test", "train", "docs")},
                           xlabel="lambda (collaborative loss weight)", logx=True)

  def plot(ax):
    lines(ax)
    ax.legend(fontsize=8, loc="center left")
    if graph:  # the mechanism, on the graph-rich corpus: co-used tools sharing their first code
      twin = ax.twinx()
      twin.plot(lambdas, [g["edges_sharing_level1"] for g in graph], "k--", marker="s",
                label="all BFCL: edges sharing level 1 (right)")
      twin.set_ylabel("share of co-occurrence edges")
      twin.legend(fontsize=8, loc="center right")
  notes = "x axis symlog (lambda = 0 included). Multi-domain: every tool a candidate."
  if graph:
    notes += (f"\n\nCodebook only, all {graph[0]['tools']} BFCL tools ({graph[0]['edges']} training co-occurrence "
              f"edges), K = {GRAPH_K}, L = 2:\n\n" +
              common.markdown_table(GRAPH_COLUMNS, graph))
  return common.write(NAME, args, title="ToolWeaver Fig. 2: collaborative-loss weight lambda, BFCL, NDCG@1",
                      columns=COLUMNS, rows=rows, plot=plot, t0=t0, notes=notes)


def graph_rows(lambdas, args) -> list[dict]:
  """What lambda does to the codes where there is a graph to act on: the whole BFCL corpus's codebook per lambda
  (no training; `collisions.codebook_row`), K = 256 as `configs/toolweaver.py:small`."""
  import collisions
  sc = {**common.scale(args), "tools": -1, "size": GRAPH_K}
  if args.smoke:
    sc["tools"] = common.SMOKE_TOOLS
  return [{"lambda": lam, **collisions.codebook_row("toolweaver", common.point_config(
      "toolweaver", **sc, overrides={"codebook.collab_lambda": lam, "codebook.steps": GRAPH_STEPS}), args)}
      for lam in lambdas]


if __name__ == "__main__":
  main()
