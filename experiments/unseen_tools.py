"""Generalisation to unseen tools (ToolWeaver's and Toolscaler's argument against atomic tokens; Toolscaler
Algorithm 1, new tools coded by the frozen encoder + quantiser): a model trained without a set of tools is given
them from their documents alone (`artifact.Trained.add_tools` -> `Codebook.add_tools`, no training, what
`toolgen_jax.evaluate --add-tools-from` does) and retrieves them, next to the same tokenizer trained with them.

  python experiments/unseen_tools.py [--methods atomic,toolweaver] [--held-out 50]   # toolscaler: add it

Held out: the last `--held-out` of the first `--tools` BFCL tools (ids 150-199 by default). "added" = the point
trained on the first 150 tools only (it never sees a held-out tool's document or question), then the 50 added; it
is scored over all 200 tools. "trained" = the 200-tool point of `tokenizations.py` (documents and training questions
of every tool). Query sets: the test questions whose tools are all held out (14), the test questions of the other
tools (52; 2 mixed questions are left out), and, for "added" only, the training questions of held-out tools (42),
which that model has not seen either. Atomic tokens have nothing to code a new tool with: `add_tools` gives the new
tool a fresh token with a random row, the papers' point. BM25 / MiniLM rank the same queries over the 200 tools.

Scale (`common.py`): SmolLM2-135M frozen with the code engine, 1 view per tool, 40 epochs, K = 32, L = 2; one extra
150-tool point per method (4-8 min each on the shared CPU) plus scoring (~2 min per model). Toolscaler
(`--methods atomic,toolweaver,toolscaler`) codes new tools the same way; it is left out of the default for time.
"""

import json
import time

import common

NAME = "unseen_tools"
COLUMNS = [("method", "tokenizer"), ("condition", "held-out tools"), ("heldout_test", "held-out test q NDCG@1"),
           ("heldout_test_ndcg@5", "NDCG@5"), ("heldout_train", "held-out train q NDCG@1"),
           ("seen_test", "other test q NDCG@1"), ("collision_rate_added", "added: on a taken code", ".3f"),
           ("moved_added", "added: moved")]
GROUPS = {"heldout_test": ("test", "held-out"), "heldout_train": ("train", "held-out"), "seen_test": ("test", "seen")}


def query_sets(dataset, first_held_out: int):
  """The scored queries, their group set to held-out / seen (mixed questions dropped); splits kept."""
  import dataclasses
  out = []
  for q in dataset.queries:
    held = [t >= first_held_out for t in q.relevant]
    if all(held) or (not any(held) and q.split == "test"):
      out.append(dataclasses.replace(q, group="held-out" if all(held) else "seen"))
  return out


def score(retriever, queries, config) -> dict:
  from toolgen_jax.evaluation import harness
  r = harness.evaluate(retriever, queries, ks=(1, 5), settings=("multi-domain",),
                       batch_size=int(config.eval.batch_size) * 8)["multi-domain"]
  out = {}
  for key, (split, group) in GROUPS.items():
    cell = r.get(split, {}).get(group, {})
    out[key] = common.pct(cell, "ndcg@1")
    out[key + "_n"] = cell.get("n")
    if key == "heldout_test":
      out[key + "_ndcg@5"] = common.pct(cell, "ndcg@5")
  return out


def evaluate_method(method: str, args, sc: dict, held: int, cache) -> list[dict]:
  """The method's rows: added (trained on the first tools - held, the rest coded from documents) and trained."""
  full = common.run_point(method, common.point_config(method, **sc), args.runs, smoke=args.smoke)
  part = common.run_point(method, common.point_config(method, **{**sc, "tools": sc["tools"] - held}), args.runs,
                          smoke=args.smoke)
  rows = []
  for condition, point in (("added from documents", part), ("trained", full)):
    path = cache / f"{point['workdir'].name}.json"
    with common.point_lock(cache / "locks" / path.stem):  # another script scoring it: wait, then read its file
      if not path.exists():
        _score_point(point, full, part, path, sc["tools"] - held)
    rows.append({"method": method, "condition": condition, **json.loads(path.read_text()),
                 "command": point["command"]})
  return rows


def _score_point(point, full, part, path, first: int) -> None:
  """Scores one trained point on the query sets (the 'added' point after coding the held-out tools) into `path`."""
  from toolgen_jax import artifact, data
  trained = artifact.load_trained(point["workdir"])
  dataset = data.load_dataset(full["workdir"] / artifact.DATASET_DIR)  # all the tools and their questions
  assert [t.name for t in trained.dataset.corpus][:first] == [t.name for t in dataset.corpus][:first]
  extra = {}
  if point is part:
    rep = trained.add_tools(list(dataset.corpus)[first:])
    extra["collision_rate_added"] = float(rep.collision_rate)  # quantised onto a taken code (then moved, or
    extra["moved_added"] = int(rep.moved.sum())                  # shared under Toolscaler's 'report')
  res = score(trained.retriever(), query_sets(dataset, first), trained.config)
  path.write_text(json.dumps({**res, **extra}))


def baseline_rows(args, sc: dict, held: int, cache) -> list[dict]:
  from toolgen_jax import artifact
  from toolgen_jax.data.documents import documents_from_config
  from toolgen_jax.evaluation import baseline_retrievers
  full = common.run_point("toolweaver", common.point_config("toolweaver", **sc), args.runs, smoke=args.smoke)
  path = cache / "baselines.json"
  with common.point_lock(cache / "locks" / path.stem):
    if not path.exists():
      t = artifact.load_trained(full["workdir"])
      docs = documents_from_config(t.dataset.corpus, t.config.data)
      rets = baseline_retrievers.from_config(("bm25", "embedding"), docs, t.config, cache / "embeddings")
      qs = query_sets(t.dataset, sc["tools"] - held)
      path.write_text(json.dumps({name: score(r, qs, t.config) for name, r in rets.items()}))
  return [{"method": name, "condition": "(no training)", **res}
          for name, res in json.loads(path.read_text()).items()]


def main(argv=None):
  ap = common.parser(NAME, __doc__)
  ap.add_argument("--methods", default="atomic,toolweaver")
  ap.add_argument("--held-out", type=int, default=50, help="the last N of the --tools tools (smoke: 12)")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  sc = common.scale(args)
  held = min(args.held_out, 12) if args.smoke else args.held_out
  cache = common.pathlib.Path(args.out) / "scores"
  cache.mkdir(parents=True, exist_ok=True)
  rows = []
  for m in args.methods.split(","):
    try:
      rows += evaluate_method(m, args, sc, held, cache)
    except Exception as e:  # pylint: disable=broad-except  (one failed method must not lose the others)
      rows.append({"method": m, "condition": "—", "error": f"{type(e).__name__}: {str(e)[:160]}"})
  rows += baseline_rows(args, sc, held, cache)
  labels = [f"{r['method']}\n{r['condition']}" for r in rows]
  plot = common.bar_plot(labels, {"held-out tools, test q": [r.get("heldout_test") for r in rows],
                                  "held-out tools, train q": [r.get("heldout_train") for r in rows],
                                  "other tools, test q": [r.get("seen_test") for r in rows]})
  first = next((r for r in rows if "heldout_test_n" in r), {})
  n = first.get("heldout_test_n"), first.get("heldout_train_n"), first.get("seen_test_n")
  return common.write(NAME, args, title="Unseen tools: coded from documents only vs trained, BFCL, NDCG@1",
                      columns=COLUMNS, rows=rows, plot=plot, t0=t0,
                      notes=f"Queries: {n[0]} test questions of held-out tools, {n[1]} training questions of held-out "
                            f"tools (unseen by the 'added' models; the 'trained' models trained on them, so that "
                            f"column is memory there), {n[2]} test questions of the other tools. Multi-domain: every "
                            f"one of the {sc['tools']} tools is a candidate.")


if __name__ == "__main__":
  main()
