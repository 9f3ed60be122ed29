"""corpus -> tool embeddings -> codebook -> vocabulary extension -> stages -> evaluation -> report."""

from __future__ import annotations

import json
import pathlib

import ml_collections
from absl import logging


def write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  write_config(config, workdir)
  logging.info("resolved config written to %s", workdir / "config.json")
  if config.pipeline.dry_run:
    return {"stages": []}
  stages = ["corpus", "embeddings", "codebook", "vocabulary", "training", "evaluation", "report"]
  for s in stages:
    print(f"[{s}] not yet implemented")
  return {"stages": stages}
