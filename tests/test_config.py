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


def _method_config(name, variant):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


@pytest.mark.parametrize("variant", base.SCALES)
def test_collision_handling_follows_each_paper(variant):
  """ToolWeaver: Sinkhorn-Knopp; Toolscaler: report only; ToolGen's atomic ids: unique by construction."""
  assert _method_config("toolweaver", variant).codebook.collisions == "sinkhorn"
  assert _method_config("toolscaler", variant).codebook.collisions == "report"
  assert _method_config("toolgen", variant).codebook.collisions == "unique"
  assert base.base_config().codebook.collisions == "unique"  # our guarantee: the default outside the methods


def test_paper_stages_encoder_and_rqvae_optimisation():
  from toolgen_jax.codebook import codebook as cb_lib
  tw = _method_config("toolweaver", "paper")
  assert tw.train.stages == ("retrieval", "trajectory")  # two-stage alignment, no memorisation
  assert tw.encoder.kind == "mpnet"
  assert (tw.codebook.learning_rate, tw.codebook.batch_size, tw.codebook.epochs) == (1e-5, 5096, 5000)
  assert cb_lib.rqvae_steps(tw.codebook, 46_985) == 5000 * 10  # 10 batches of 5096 per epoch
  assert cb_lib.rqvae_steps(base.base_config().codebook, 46_985) == base.base_config().codebook.steps
  ts = _method_config("toolscaler", "paper")
  assert ts.train.stages == ("retrieval", "trajectory")
  assert (ts.train.stage_epochs.retrieval, ts.train.stage_epochs.trajectory) == (5.0, 2.0)
  assert ts.train.stage_epochs.memorization == 0.0
  assert ts.train.seq_len == 6144 and ts.model.max_seq_len >= 6144
  assert _method_config("toolgen", "paper").train.stages == ("memorization", "retrieval", "trajectory")
