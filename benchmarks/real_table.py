"""The real-data table (issue #7): trained workdirs of the `:real` protocol side by side with BM25, MiniLM and
MiniLM fine-tuned on the training queries (the dense baseline, `eval.baselines` 'dense' in the `:real` configs).

  for m in toolweaver toolgen toolscaler; do
    python -m toolgen_jax.main --config=configs/$m.py:real --workdir=workdirs/real_$m
  done
  python benchmarks/real_table.py workdirs/real_toolweaver workdirs/real_toolgen workdirs/real_toolscaler

Reads each workdir's `report.json` (the pipeline's evaluation: the same queries, the same harness, baselines computed
beside the model), prints one Markdown table per setting (NDCG@1 / NDCG@5 x100 per test group: ToolLens, the
StableToolBench test folds I1/I2/I3, Gorilla TorchHub eval; all relevant tools counted), the diagnostic probes
(training queries, memorised documents), perplexity, the number of test relevant tools with no training query, and
one JSON line with every figure. Baselines are taken from the first workdir (all workdirs score the same queries).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/tokenizers.py would shadow the
# `tokenizers` package: drop that folder, put the repo root first.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from toolgen_jax.evaluation.baseline_retrievers import BASELINES  # noqa: E402

GROUPS = ("ToolLens", "I1", "I2", "I3", "Gorilla-torchhub")
LABELS = {"rqvae": "ToolWeaver codes (RQ-VAE)", "residual_kmeans": "Toolscaler codes (residual k-means)",
          "atomic": "ToolGen atomic", "bm25": "BM25", "embedding": "MiniLM similarity",
          "dense": "MiniLM fine-tuned (dense, in-batch negatives)"}


def cell(methods: dict, method: str, setting: str, split: str, group: str, metric: str) -> float | None:
  try:
    return round(100 * methods[method][setting][split][group][metric], 1)
  except KeyError:
    return None


def fmt(x) -> str:
  return "-" if x is None else f"{x:.1f}"


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("workdirs", nargs="+")
  a = ap.parse_args()
  rows: list[tuple[str, str, dict, str]] = []  # (label, method key, methods dict, workdir)
  extra: dict[str, dict] = {}
  for i, wd in enumerate(a.workdirs):
    rep = json.loads((pathlib.Path(wd) / "report.json").read_text())
    (name, f), = rep["files"].items()
    methods = f["methods"]
    gen = [m for m in methods if m not in BASELINES]
    for m in gen:
      rows.append((LABELS.get(m, m), m, methods, wd))
      tuned = (rep.get("perplexity") or {}).get("tuned", {})
      extra[m] = {"workdir": wd, "seconds": rep.get("meta", {}).get("seconds"),
                  "perplexity_base": round((rep.get("perplexity") or {}).get("base", {}).get("perplexity", 0), 2),
                  "perplexity_tuned": round(tuned.get("perplexity", 0), 2)}
    if i == 0:
      base = [(LABELS[m], m, methods, wd) for m in BASELINES if m in methods]
  rows += base
  out: dict = {"groups": GROUPS, "rows": {}}
  for setting in ("multi-domain", "in-domain", "candidates"):  # in-domain: the group pool; candidates: api_list
    print(f"\n### {setting} (NDCG@1 / NDCG@5 x100, test split)\n")
    probes = setting == "multi-domain"  # the probes carry no candidate lists: scored multi-domain only
    print("| method | " + " | ".join(GROUPS) + (" | train queries N@1 | own documents N@1 |" if probes else " |"))
    print("|---|" + "---:|" * (len(GROUPS) + 2 * probes))
    for label, m, methods, wd in rows:
      vals = {g: (cell(methods, m, setting, "test", g, "ndcg@1"), cell(methods, m, setting, "test", g, "ndcg@5"))
              for g in GROUPS}
      tr = cell(methods, m, setting, "train", "all", "ndcg@1")
      mem = cell(methods, m, setting, "memorisation", "all", "ndcg@1")
      if all(v == (None, None) for v in vals.values()):
        continue
      print(f"| {label} | " + " | ".join(f"{fmt(a1)} / {fmt(a5)}" for a1, a5 in vals.values())
            + (f" | {fmt(tr)} | {fmt(mem)} |" if probes else " |"))
      out["rows"].setdefault(m, {})[setting] = {g: {"ndcg@1": v[0], "ndcg@5": v[1]} for g, v in vals.items()} | (
          {"train_ndcg@1": tr, "memorisation_ndcg@1": mem} if probes else {})
  print("\n| method | perplexity base -> tuned | wall s |\n|---|---|---:|")
  for m, e in extra.items():
    print(f"| {LABELS.get(m, m)} | {e['perplexity_base']} -> {e['perplexity_tuned']} | {e['seconds']} |")
  out["runs"] = extra
  from toolgen_jax.data import dataset as dataset_lib
  from toolgen_jax.data import protocol
  ds = dataset_lib.load(pathlib.Path(a.workdirs[0]) / "dataset", verify=False)
  out["test_tools_without_training_query"] = unseen = protocol.unseen_test_tools(ds)
  print("\ntest relevant tools with no training query: " + ", ".join(
      f"{g} {unseen[g]}/{unseen[g + '_total']}" for g in GROUPS if g in unseen))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
