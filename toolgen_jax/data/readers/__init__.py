"""Readers for every supported source format, and `load_source`, the one entry point the pipeline calls.

Each reader maps its on-disk format into the shared records (`toolgen_jax.data.records`) and returns a
`ToolDataset`; recoverable problems are counted in its `LoadReport` (one summary line logged), fatal ones raise
`DataError(path, record, field, message)`.

`real_protocol` is a recipe over three format readers (`toolgen_jax.data.protocol`); it imports those readers'
modules, never this registry, so the imports only go down.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

from toolgen_jax.data import protocol
from toolgen_jax.data.dataset import EVAL_SPLITS, TRAIN_SPLITS, ToolDataset, fit_cooccurrence, restrict, split_queries
from toolgen_jax.data.readers import beir, bfcl, gorilla, stabletoolbench, toolbench, toolgen_names

__all__ = ["DEFAULT_PATHS", "EVAL_SPLITS", "READERS", "TRAIN_SPLITS", "from_config", "load_source"]

READERS: dict[str, Callable[..., ToolDataset]] = {
    "bfcl": bfcl.read,
    "stabletoolbench": stabletoolbench.read,
    "toolbench": toolbench.read,
    "beir": beir.read,
    "gorilla": gorilla.read,
    "toolgen_names": toolgen_names.read,
    "real_protocol": protocol.read,
}
DEFAULT_PATHS = {"bfcl": None}  # sources with an embedded default (None = the reader's own default)


def load_source(source: str, path: str | pathlib.Path | None = None, **opts: Any) -> ToolDataset:
  """Reads `path` (a file or folder) as `source`; path None or '' = the embedded default where one exists (bfcl).

  opts go to the reader: bfcl `categories=`, stabletoolbench `groups=`, `split=`; every reader takes `log=`.
  """
  if source not in READERS:
    raise ValueError(f"unknown data source {source!r}; supported: {', '.join(sorted(READERS))}")
  if not path:
    if source not in DEFAULT_PATHS:
      raise ValueError(f"source {source!r} has no embedded default: give a path (file or folder)")
    return READERS[source](DEFAULT_PATHS[source], **opts)
  return READERS[source](path, **opts)


def from_config(data_config, seed: int = 0) -> ToolDataset:
  """The dataset a pipeline run uses: `load_source(data.source, data.path)`, re-split when the source lacks its
  own train and test/eval splits, then `restrict(max_tools, max_queries)`.

  Sources with both (ToolLens train/test, Gorilla train/eval) keep theirs. Others (BFCL: none; StableToolBench:
  test only) get `split_queries` with fractions (1 - dev - test, dev, test) from `data.dev_fraction` and
  `data.test_fraction`, stratified by group when `data.split_by_group` (counted in stats `resplit_queries`).
  Sources with their own splits get `data.dev_fraction` of their training queries as dev (`dev_queries_from_train`).
  The co-occurrence graph is refitted after the split, on the training episodes only (`fit_cooccurrence`).
  """
  ds = load_source(data_config.source, data_config.path or None)
  splits = {q.split for q in ds.queries}
  if ds.queries and not (splits & set(TRAIN_SPLITS) and splits & set(EVAL_SPLITS)):
    test, dev = float(data_config.test_fraction), float(data_config.dev_fraction)
    parts = split_queries(ds.queries, (1.0 - dev - test, dev, test), seed=seed,
                          by_group=bool(data_config.split_by_group))
    order = {q.id: i for i, q in enumerate(ds.queries)}
    ds.queries = sorted((q for v in parts.values() for q in v), key=lambda q: order[q.id])
    ds.report.stat("resplit_queries", len(ds.queries))
    ds = fit_cooccurrence(ds)
  elif ds.queries and float(data_config.dev_fraction) > 0 and "dev" not in splits:
    # The source has its own train and test splits: the dev queries come out of its training split.
    train = [q for q in ds.queries if q.split in TRAIN_SPLITS]
    dev = float(data_config.dev_fraction)
    moved = {q.id for q in split_queries(train, (1.0 - dev, dev), seed=seed, names=("train", "dev"),
                                         by_group=bool(data_config.split_by_group))["dev"]}
    ds.queries = [dataclasses.replace(q, split="dev") if q.split in TRAIN_SPLITS and q.id in moved else q
                  for q in ds.queries]
    ds.report.stat("dev_queries_from_train", len(moved))
    ds = fit_cooccurrence(ds)  # dev queries leave the training graph too
  return restrict(ds, int(data_config.max_tools), int(data_config.max_queries))
