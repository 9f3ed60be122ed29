"""Writes an evaluation report: `report.json`, `report.md` (Markdown tables) and PNG plots (NDCG per group/method).

The report dict the writers take (what `toolgen_jax.evaluate` builds):

  {"files": {label: {"path": str, "n_queries": int,
                     "methods": {method: harness.evaluate(...) result}}},
   "perplexity": {model label: perplexity.heldout_perplexity(...) result},   # optional
   "codebook": {label: toolgen_jax.codebook.stats.code_stats(...) result},     # optional
   "meta": {...}}                                                           # optional: command, versions, ...

Tables print metrics x 100, as the papers do. Under each table a line says what the setting's candidate pool is
(`harness.SETTING_DESCRIPTIONS`: "in-domain" is the papers' group pool, "candidates" the query's own api_list) and
at which depth each method's peers' NDCG variant (`toolgen_ndcg@k`) was computed.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Sequence

from toolgen_jax.evaluation.harness import SETTING_DESCRIPTIONS, SETTINGS

TABLE_METRICS = ("ndcg@1", "ndcg@3", "ndcg@5", "recall@5")


def _slug(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


def _cells(file_entry: dict, setting: str):
  """Yields (split, group, method, metrics) for one file and setting, groups in sorted order with 'all' last."""
  methods = file_entry["methods"]
  keys = set()
  for res in methods.values():
    for split, groups in res.get(setting, {}).items():
      keys.update((split, g) for g in groups)
  real = {sp for sp, _ in keys} - {"all"}
  if len(real) == 1:  # one split holding every query: its rows and the "all" rows are the same queries
    (only,) = real
    n = lambda res, sp: res.get(setting, {}).get(sp, {}).get("all", {}).get("n")
    if all(n(res, only) == n(res, "all") for res in methods.values()):
      keys = {(sp, g) for sp, g in keys if sp != "all"}
  order = sorted(keys, key=lambda sg: (sg[0] == "all", sg[0], sg[1] == "all", sg[1]))
  for split, group in order:
    for method, res in methods.items():
      cell = res.get(setting, {}).get(split, {}).get(group)
      if cell:
        yield split, group, method, cell


def setting_note(file_entry: dict, setting: str) -> str:
  """What the setting's pool is, where the in-domain pools came from, and the peers' NDCG depth per method."""
  configs = {m: r.get("config", {}) for m, r in file_entry["methods"].items() if setting in r}
  first = next(iter(configs.values()), {})
  note = f"Setting: {first.get('settings', {}).get(setting) or SETTING_DESCRIPTIONS.get(setting, setting)}"
  if setting == "in-domain" and first.get("in_domain_pools"):
    note += f" (pools from {first['in_domain_pools']})"
  depths = {m: c["toolgen_depth_effective"] for m, c in configs.items() if "toolgen_depth_effective" in c}
  if depths:
    note += ". toolgen_ndcg@k (the papers' variant) at depth " + ", ".join(f"{m} {d}" for m, d in depths.items())
  return note + "."


def markdown_tables(report: dict, metrics: Sequence[str] = TABLE_METRICS) -> str:
  """One Markdown table per (file, setting): rows (split, group, method), columns n and metrics x 100."""
  out = []
  for label, entry in report.get("files", {}).items():
    for setting in SETTINGS:
      rows = list(_cells(entry, setting))
      if not rows:
        skipped = next(iter(entry["methods"].values()), {}).get("skipped", {}).get(f"{setting}/no_candidates")
        if skipped:
          out.append(f"### {label} — {setting}\n\nNo query has a candidate pool here ({skipped} skipped).\n")
        continue
      out.append(f"### {label} — {setting}\n")
      out.append("| split | group | method | n | " + " | ".join(metrics) + " |")
      out.append("|---|---|---|---:|" + "---:|" * len(metrics))
      for split, group, method, cell in rows:
        vals = " | ".join("—" if m not in cell else f"{100 * cell[m]:.2f}" for m in metrics)
        out.append(f"| {split} | {group} | {method} | {cell['n']} | {vals} |")
      out.append(f"\n{setting_note(entry, setting)}")
      skipped = {m: r.get("skipped", {}) for m, r in entry["methods"].items()}
      first = next(iter(skipped.values()), {})
      notes = {k: v for k, v in first.items() if v and (k == "no_relevant" or k.startswith(setting + "/"))}
      if notes:
        out.append(f"\nSkipped queries: {notes}")
      out.append("")
  if report.get("perplexity"):
    out.append("### Language preservation (held-out perplexity)\n")
    out.append("| model | perplexity | tokens scored | text |")
    out.append("|---|---:|---:|---|")
    for name, p in report["perplexity"].items():
      text = p.get("text", {})
      out.append(f"| {name} | {p['perplexity']:.3f} | {p['n_scored']} | {text.get('source', '')} "
                 f"(Python {text.get('python', '?')}) |")
    out.append("")
  if report.get("codebook"):
    out.append("### Codebook statistics\n")
    out.append("| codebook | collision rate | utilisation per level | perplexity per level | tools per prefix |")
    out.append("|---|---:|---|---|---|")
    fmt = lambda xs, f: " / ".join(f.format(x) for x in xs)
    for name, c in report["codebook"].items():
      rate = c.get("collision_rate", float("nan"))
      out.append(f"| {name} | {rate:.4f} | {fmt(c.get('utilisation', []), '{:.3f}')} | "
                 f"{fmt(c.get('perplexity', []), '{:.1f}')} | {fmt(c.get('tools_per_prefix', []), '{:.2f}')} |")
    out.append("")
  return "\n".join(out)


def plot_ndcg(report: dict, out_dir: str | pathlib.Path, ks: Sequence[int] = (1, 3, 5)) -> list[pathlib.Path]:
  """Grouped bars of NDCG@k per group (x) and method (bars), one PNG per (file, setting); split 'all' only."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for label, entry in report.get("files", {}).items():
    for setting in SETTINGS:
      cells = list(_cells(entry, setting))
      last_split = cells[-1][0] if cells else "all"  # "all", or the only split when there is one
      rows = [(g, m, c) for s, g, m, c in cells if s == last_split]
      if not rows:
        continue
      groups = list(dict.fromkeys(g for g, _, _ in rows))
      methods = list(dict.fromkeys(m for _, m, _ in rows))
      table = {(g, m): c for g, m, c in rows}
      fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 3.2), squeeze=False, sharey=True)
      width = 0.8 / len(methods)
      x = np.arange(len(groups))
      for ax, k in zip(axes[0], ks):
        for j, m in enumerate(methods):
          ys = [100 * table.get((g, m), {}).get(f"ndcg@{k}", np.nan) for g in groups]
          ax.bar(x + (j - (len(methods) - 1) / 2) * width, ys, width, label=m)
        ax.set_xticks(x, groups, rotation=30 if len(groups) > 4 else 0)
        ax.set_title(f"NDCG@{k}")
        ax.set_ylim(0, 100)
      axes[0][0].set_ylabel("x 100")
      axes[0][-1].legend(fontsize=8)
      fig.suptitle(f"{label} — {setting}")
      fig.tight_layout()
      path = out_dir / f"ndcg_{_slug(label)}_{setting}.png"
      fig.savefig(path, dpi=100)
      plt.close(fig)
      paths.append(path)
  return paths


def write_report(report: dict, workdir: str | pathlib.Path) -> dict[str, object]:
  """Writes report.json, report.md and plots/*.png into `workdir`; returns their paths."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  json_path, md_path = workdir / "report.json", workdir / "report.md"
  json_path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str))
  md_path.write_text(markdown_tables(report))
  plots = plot_ndcg(report, workdir / "plots")
  return {"json": json_path, "markdown": md_path, "plots": plots}


def combine(reports: Sequence[dict], labels: Sequence[str] | None = None) -> dict:
  """One report from several runs on the same queries (e.g. toolweaver, toolscaler, toolgen workdirs): every run's
  methods side by side per file; a method two runs share (the baselines) must have identical numbers and is kept
  once, a differing one is kept under 'method (label)'. Perplexity and codebook entries are merged by label."""
  labels = list(labels) if labels is not None else [str(i) for i in range(len(reports))]
  out: dict = {"files": {}, "perplexity": {}, "codebook": {}, "meta": {"combined": labels}}
  for label, rep in zip(labels, reports):
    for fname, entry in rep.get("files", {}).items():
      dest = out["files"].setdefault(fname, {"path": entry.get("path"), "n_queries": entry.get("n_queries"),
                                             "methods": {}})
      if dest["n_queries"] != entry.get("n_queries"):
        raise ValueError(f"report {label}: file {fname} has {entry.get('n_queries')} queries, an earlier report "
                         f"{dest['n_queries']}; combine runs on the same queries only")
      for method, res in entry["methods"].items():
        name = method
        if name in dest["methods"] and dest["methods"][name] != res:
          name = f"{method} ({label})"
        dest["methods"].setdefault(name, res)
    for key in ("perplexity", "codebook"):
      for k, v in rep.get(key, {}).items():
        out[key][k if k not in out[key] else f"{k} ({label})"] = v
  return out


def main(argv: Sequence[str] | None = None) -> None:
  """python -m toolgen_jax.evaluation.report --out DIR WORKDIR [WORKDIR ...]: one table over several runs."""
  import argparse
  ap = argparse.ArgumentParser(description=main.__doc__)
  ap.add_argument("workdirs", nargs="+")
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  reports, labels = [], []
  for wd in args.workdirs:
    path = pathlib.Path(wd) / "report.json"
    if not path.exists():
      raise SystemExit(f"{path} does not exist: run the pipeline on {wd} first")
    reports.append(json.loads(path.read_text()))
    labels.append(pathlib.Path(wd).name)
  paths = write_report(combine(reports, labels), args.out)
  print(pathlib.Path(paths["markdown"]).read_text())
  print(f"[report] {paths['json']}  {paths['markdown']}")


if __name__ == "__main__":
  main()
