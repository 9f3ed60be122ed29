"""The documented real-data protocol: one merged corpus over ToolLens, StableToolBench and Gorilla.

  memorise  every tool document of the merged corpus (doc -> codes);
  train     ToolLens `qrels/train.tsv` + the `train` part of a fixed-seed 60/20/20 split of each StableToolBench
            group (G1/G2/G3) + Gorilla torchhub train;
  dev       the 20% StableToolBench dev part;
  test      ToolLens `qrels/test.tsv`, the StableToolBench test folds (per group, both settings), Gorilla eval.

Queries keep their source in `group` (ToolLens -> "ToolLens", Gorilla -> "Gorilla-torchhub", StableToolBench -> I1/I2/I3)
so the report is per source and group.
"""

from __future__ import annotations

import dataclasses
import pathlib

from toolgen_jax.data.dataset import EVAL_SPLITS, TRAIN_SPLITS, ToolDataset, merge, split_queries
from toolgen_jax.data.readers.beir import read as read_beir
from toolgen_jax.data.readers.gorilla import read as read_gorilla
from toolgen_jax.data.readers.stabletoolbench import read as read_stabletoolbench

TOOLLENS = "COLT/datasets/ToolLens"
STABLETOOLBENCH = "StableToolBench/solvable_queries/test_instruction"
GORILLA = "gorilla/data"


def _regroup(ds: ToolDataset, group: str) -> ToolDataset:
  ds.queries = [dataclasses.replace(q, group=group) for q in ds.queries]
  return ds


def load_real_protocol(data_dir: str | pathlib.Path, seed: int = 0,
                       fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), log: bool = True) -> ToolDataset:
  """Loads and merges the three sources with the splits above; `split` is train | dev | test on every query.

  The co-occurrence graph is fitted after the splits, on the train part only (`dataset.fit_cooccurrence`).
  """
  root = pathlib.Path(data_dir)
  toollens = _regroup(read_beir(root / TOOLLENS, log=log), "ToolLens")
  stb = read_stabletoolbench(root / STABLETOOLBENCH, log=log)
  parts = split_queries(stb.queries, fractions, seed=seed, by_group=True)
  stb.queries = [q for name in ("train", "dev", "test") for q in parts[name]]
  gorilla = _regroup(read_gorilla(root / GORILLA, log=log), "Gorilla-torchhub")
  for ds in (toollens, gorilla):
    ds.queries = [dataclasses.replace(q, split="test" if q.split in EVAL_SPLITS else q.split) for q in ds.queries]
  merged = merge([toollens, stb, gorilla])  # fits the graph on the merged train part (after the splits above)
  merged.source = "real_protocol"
  return merged


def read(path: str | pathlib.Path, *, seed: int = 0, log: bool = True) -> ToolDataset:
  """The `real_protocol` source of `toolgen_jax.data.readers.load_source`: `load_real_protocol(path, seed)`."""
  return load_real_protocol(path, seed=seed, log=log)


def unseen_test_tools(ds: ToolDataset) -> dict[str, int]:
  """How many relevant tools of the test queries never appear as relevant in a training query, per group."""
  trained = {t for q in ds.queries if q.split in TRAIN_SPLITS for t in q.relevant}
  out: dict[str, set[int]] = {}
  total: dict[str, set[int]] = {}
  for q in ds.queries:
    if q.split != "test":
      continue
    total.setdefault(q.group, set()).update(q.relevant)
    out.setdefault(q.group, set()).update(t for t in q.relevant if t not in trained)
  return {g: len(out[g]) for g in sorted(out)} | {f"{g}_total": len(total[g]) for g in sorted(total)}
