"""ToolWeaver Fig. 5: retrieval as the codebook size K (codes per level) and the number of levels L change.

  python experiments/kl_sweep.py [--ks 8,32,128] [--ls 1,2,3]

The K sweep holds L = 2, the L sweep holds K = `--size` (32). With few codes (K^L below the number of tools) many
tools must share a code tuple: ToolWeaver's Sinkhorn re-assignment moves what it can, the rest stays shared (a trie
leaf with several tools, ranked in tool-id order), so the collision column is the price of a small K or L; a large
K spends one token row per code on few tools each. Every point: ToolWeaver's codebook (Eq. 6, lambda = 1, Sinkhorn).

Scale (`common.py`): the first 200 BFCL tools (242 training / 68 test questions), SmolLM2-135M frozen with the code
engine, 1 view per tool, 40 epochs, multi-domain. About 3-5 min per point on the shared 2-core CPU; (K=32, L=2) is
`tokenizations.py`'s ToolWeaver point.
"""

import time

import common

NAME = "kl_sweep"
COLUMNS = [("sweep", "sweep"), ("K", "K"), ("L", "L"), ("test_ndcg@1", "test NDCG@1"), ("test_ndcg@5", "test NDCG@5"),
           ("train_ndcg@1", "train q NDCG@1"), ("docs_ndcg@1", "own doc NDCG@1"), ("new_tokens", "new tokens"),
           ("collision_rate", "collision rate", ".3f"), ("seconds", "wall s")]


def main(argv=None):
  ap = common.parser(NAME, __doc__)
  ap.add_argument("--ks", default="8,32,128")
  ap.add_argument("--ls", default="1,2,3")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  sc = common.scale(args)
  ks = [int(x) for x in args.ks.split(",")]
  ls = [int(x) for x in args.ls.split(",")]
  point = lambda sweep, k, l: common.point_row("toolweaver", common.point_config(
      "toolweaver", **{**sc, "size": k, "levels": l}), args, sweep=sweep, K=k, L=l)
  k_rows = [point("K", k, 2) for k in ks]
  l_rows = [point("L", sc["size"], l) for l in ls]

  def plot(ax):
    for label, rows, xs in (("K sweep (L=2)", k_rows, ks), (f"L sweep (K={sc['size']})", l_rows, ls)):
      pts = [(x, r["test_ndcg@1"]) for x, r in zip(xs, rows) if r.get("test_ndcg@1") is not None]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{label}: x = {label[0]}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (codes per level) or L (levels)")
    ax.set_ylabel("test NDCG@1 x100")
    ax.legend(fontsize=8)
  return common.write(NAME, args, title="ToolWeaver Fig. 5: codebook size K and depth L, BFCL, NDCG@1",
                      columns=COLUMNS, rows=k_rows + l_rows, plot=plot, t0=t0,
                      notes="Multi-domain: every tool a candidate. Collision rate: (tools - distinct code tuples) / "
                            "tools after Sinkhorn (tools left sharing a trie leaf).")


if __name__ == "__main__":
  main()
