"""Collision rates per tokenizer (ToolWeaver section 3: Sinkhorn-Knopp re-assignment "ensures" distinct codes;
Toolscaler reports its rate; ToolGen's atomic ids are distinct by construction): the share of tools whose full code
tuple another tool also has, before and after each method's own collision policy (`codebook/collisions.py`).

  python experiments/collisions.py [--methods ...] [--full-size-toolweaver 256] [--full-size-toolscaler 128]

Two scales: the experiments' point (first 200 BFCL tools, K = 32, L = 2: the codebook of the very workdir the
other scripts train, so building it here is not extra work) and the whole BFCL corpus (2,555 tools, K as the
methods' `:small` configs: ToolWeaver 256, Toolscaler 128). Codebook only: corpus, MiniLM embeddings, codebook
(`pipeline.load_corpus` / `load_embeddings` / `load_codebook`); no training, under a minute per codebook here except
the RQ-VAE at 2,555 tools (~1-2 min). Policies as each paper: ToolWeaver `sinkhorn` (what it cannot separate stays
shared), Toolscaler `report` (counted, not resolved), the baselines `unique`. The policy-by-policy comparison at
full scale is `benchmarks/collision_policies.py`.
"""

import json
import time

import common

NAME = "collisions"
COLUMNS = [("method", "tokenizer"), ("tools", "tools"), ("K", "codes per level"), ("L", "L"), ("policy", "policy"),
           ("rate_before", "rate before", ".4f"), ("rate_after", "rate after", ".4f"), ("shared_tools", "tools sharing"),
           ("largest_group", "largest group"), ("moved_by_sinkhorn", "moved"), ("seconds", "wall s")]


def codebook_row(method: str, config, args) -> dict:
  """The point's codebook (built in its workdir when absent): its collision report, and the share of the training
  co-occurrence graph's edges whose tools got one first code (`codebook/stats.py:edge_prefix_sharing`)."""
  from toolgen_jax import pipeline
  from toolgen_jax.artifact import Workdir
  t0 = time.perf_counter()
  wd = Workdir(common.pathlib.Path(args.runs) / common.point_key(method, config))
  with common.point_lock(wd.root):  # another script building or training this point: wait for it
    common.reuse_embeddings(wd.root)
    ds = pipeline.load_corpus(config, wd)
    cb = pipeline.load_codebook(config, wd, ds, pipeline.load_embeddings(config, wd, ds))
  rep = cb.collision_report
  stats = json.loads((wd / "codebook" / "stats.json").read_text())
  sharing = stats.get("cooccurring_prefix_sharing")
  return {"edges": int(ds.cooccurrence.num_edges), "edges_sharing_level1": round(sharing[0], 4) if sharing else None,
          "method": method, "tools": cb.num_tools, "K": "/".join(map(str, cb.level_sizes)), "L": cb.num_levels,
          "policy": rep.get("policy", cb.collision_policy), **{k: rep.get(k) for k, *_ in COLUMNS[5:10]},
          "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None):
  ap = common.parser(NAME, __doc__)
  ap.add_argument("--methods", default=",".join(common.METHOD_CONFIGS))
  ap.add_argument("--full-size-toolweaver", type=int, default=256)
  ap.add_argument("--full-size-toolscaler", type=int, default=128)
  ap.add_argument("--no-full", action="store_true", help="only the experiments' scale")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  sc = common.scale(args)
  methods = args.methods.split(",")
  full_k = {"toolweaver": args.full_size_toolweaver, "toolscaler": args.full_size_toolscaler}
  rows = [codebook_row(m, common.point_config(m, **sc), args) for m in methods]
  if not (args.no_full or args.smoke):
    rows += [codebook_row(m, common.point_config(m, **{**sc, "tools": -1, "size": full_k.get(m, sc["size"])}), args)
             for m in methods]
  scales = sorted({r["tools"] for r in rows})
  plot = common.bar_plot(methods, {f"{n} tools, {when}": [next((r[f"rate_{when}"] for r in rows if r["method"] == m
                                                                 and r["tools"] == n), None) for m in methods]
                                   for n in scales for when in ("before", "after")}, ylabel="collision rate")
  return common.write(NAME, args, title="Collision rate per tokenizer (before / after its policy), BFCL",
                      columns=COLUMNS, rows=rows, plot=plot, t0=t0,
                      notes="Rate = (tools - distinct code tuples) / tools. 'tools sharing': tools left on a trie leaf "
                            "with another tool. Codes per level: the codebook's own (atomic: one per tool; semantic: "
                            "the LLM's sub-words, L = the longest name).")


if __name__ == "__main__":
  main()
