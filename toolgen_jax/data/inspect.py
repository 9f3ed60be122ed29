"""Corpus statistics for any supported source.

  python -m toolgen_jax.data.inspect --source=bfcl
  python -m toolgen_jax.data.inspect --source=stabletoolbench --path=../shared/data/StableToolBench
  python -m toolgen_jax.data.inspect --source=beir --path=../shared/data/COLT/datasets/ToolLens --json

Prints tools, categories, queries per group and split, the relevant-per-query histogram, trajectories,
co-occurrence edges and the load report. `statistics(dataset)` returns the same figures as a dict.

A bad input file is one line on stderr, `error: <file>, record <i>, field '<f>': <what>`, and exit status 2; the
traceback is printed only with `--verbosity=1`.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import traceback
from typing import Any, Sequence

import numpy as np

from toolgen_jax.data.dataset import ToolDataset
from toolgen_jax.data.readers import READERS, load_source
from toolgen_jax.data.records import DataError
from toolgen_jax.data.report import histogram


def statistics(ds: ToolDataset, top_categories: int = 10) -> dict[str, Any]:
  cats = ds.corpus.categories
  deg = ds.cooccurrence.degree()
  cand = [len(q.candidates) for q in ds.queries if q.candidates is not None]
  return {
      "source": ds.source,
      "content_hash": ds.content_hash,
      "tools": len(ds.corpus),
      "distinct_tool_names": len({t.tool_name for t in ds.corpus}),
      "distinct_api_names": len({t.api_name for t in ds.corpus}),
      "categories": len(cats),
      "largest_categories": dict(sorted(((k or "(none)", len(v)) for k, v in cats.items()),
                                        key=lambda kv: (-kv[1], kv[0]))[:top_categories]),
      "tools_without_description": sum(1 for t in ds.corpus if not t.description.strip()),
      "queries": len(ds.queries),
      "queries_per_group": dict(sorted(collections.Counter(q.group for q in ds.queries).items())),
      "queries_per_split": dict(sorted(collections.Counter(q.split for q in ds.queries).items())),
      "relevant_per_query": histogram(len(q.relevant) for q in ds.queries),
      "tools_relevant_to_some_query": len({t for q in ds.queries for t in q.relevant}),
      "candidates_per_query": ({"min": min(cand), "mean": round(float(np.mean(cand)), 2), "max": max(cand)}
                               if cand else None),
      "trajectories": len(ds.trajectories),
      "assistant_turns": sum(1 for t in ds.trajectories for m in t.messages if m.role == "assistant"),
      "cooccurrence_edges": ds.cooccurrence.num_edges,
      "tools_with_edges": int((deg > 0).sum()),
      "max_weighted_degree": int(deg.max()) if deg.size else 0,
      "report": ds.report.summary(),
  }


def _print(stats: dict[str, Any], out=None) -> None:
  out = out if out is not None else sys.stdout
  width = max(len(k) for k in stats)
  for k, v in stats.items():
    if isinstance(v, dict):
      v = ", ".join(f"{kk or '(none)'}: {vv}" for kk, vv in v.items()) or "-"
    print(f"{k:<{width}}  {v}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m toolgen_jax.data.inspect", description=__doc__.split("\n\n")[0])
  p.add_argument("--source", required=True, choices=sorted(READERS))
  p.add_argument("--path", default="", help="file or folder; empty = the embedded default (bfcl)")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
  p.add_argument("--verbosity", type=int, default=0, help=">= 1: print the traceback of a data error too")
  args = p.parse_args(argv)
  try:
    ds = load_source(args.source, args.path or None, log=False)
  except (DataError, ValueError) as e:  # ValueError: a source without an embedded default
    if args.verbosity >= 1:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    return 2
  stats = statistics(ds)
  if args.json:
    print(json.dumps(stats, ensure_ascii=False, default=str))
  else:
    _print(stats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
