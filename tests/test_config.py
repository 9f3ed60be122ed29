import json
import subprocess
import sys

import pytest

from toolgen_jax import config as base


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
