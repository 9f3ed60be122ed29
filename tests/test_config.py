import json
import os
import subprocess
import sys

import pytest

from toolgen_jax import config as base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_base_config_is_locked_and_typed():
  c = base.lock(base.base_config())
  with pytest.raises(AttributeError):
    c.train.stepz = 3
  with pytest.raises(TypeError):
    c.train.steps = "many"


def test_main_writes_resolved_config(tmp_path):
  out = subprocess.run([sys.executable, "-m", "toolgen_jax.main", "--config=configs/default.py",
                        f"--workdir={tmp_path}", "--config.train.steps=7", "--config.pipeline.dry_run=True"],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  resolved = json.loads((tmp_path / "config.json").read_text())
  assert resolved["train"]["steps"] == 7


def test_main_rejects_unknown_field(tmp_path):
  out = subprocess.run([sys.executable, "-m", "toolgen_jax.main", "--config=configs/default.py",
                        f"--workdir={tmp_path}", "--config.train.stepz=7"], capture_output=True, text=True)
  assert out.returncode != 0
  assert "stepz" in out.stderr
  assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("name", ["toolweaver", "toolscaler", "toolgen", "numerical", "hierarchical", "semantic"])
def test_method_configs_have_small_real_and_paper_variants(name, monkeypatch):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  monkeypatch.setenv("TOOLGEN_DATA", "/data/here")
  small, real, paper = (mod.get_config(v) for v in ("small", "real", "paper"))
  assert small.data.source == "bfcl" and small.train.frozen_layers > 0 and small.train.system_prompt == "" and small.train.memorization_max_chars == 180
  assert real.data.source == "real_protocol" and real.data.path == "/data/here"
  assert real.train.frozen_layers == small.train.frozen_layers
  assert paper.train.frozen_layers == 0 and paper.train.system_prompt is None and paper.model.remat
  gorilla = mod.get_config("gorilla")
  assert gorilla.data.source == "gorilla" and gorilla.data.path == "/data/here/gorilla/data"
  assert gorilla.train.frozen_layers == small.train.frozen_layers
  if gorilla.codebook.method in ("rqvae", "residual_kmeans"):
    assert gorilla.codebook.size ** gorilla.codebook.levels >= 94  # room for every TorchHub API
  with pytest.raises(ValueError, match="unknown config variant"):
    mod.get_config("huge")
