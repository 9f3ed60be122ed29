"""Issue #17, configs and the main CLI: enumerated and ranged fields are validated up front (with a did-you-mean),
a bad workdir is refused before anything is written, and every such error is one line with exit status 2."""

import importlib.util
import os
import subprocess
import sys

import pytest

from toolgen_jax import config as base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd=REPO):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "toolgen_jax.main", f"--config={REPO}/configs/default.py", *args],
                        capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def _one_line_error(out, *needles):
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


def _bad(**overrides):
  c = base.base_config()
  for path, v in overrides.items():
    node = c
    *parents, leaf = path.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = v
  with pytest.raises(base.ConfigError) as e:
    base.validate(c)
  return str(e.value)


def test_validate_enumerated_fields_with_did_you_mean():
  assert "codebook.method='rqvea' is not one of rqvae" in _bad(codebook__method="rqvea")
  assert "(did you mean 'rqvae'?)" in _bad(codebook__method="rqvea")
  assert "data.source='bogus' is not one of bfcl" in _bad(data__source="bogus")
  assert "(did you mean 'gorilla'?)" in _bad(data__source="gorila")
  msg = _bad(train__stages=("memorisation", "bogus_stage"))
  assert "train.stages member 'memorisation'" in msg and "(did you mean 'memorization'?)" in msg
  assert "train.stages member 'bogus_stage'" in msg
  assert "eval.settings member 'in_domain'" in _bad(eval__settings=("in_domain",))


def test_validate_ranges_and_reports_every_field_at_once():
  msg = _bad(train__steps=-5, train__learning_rate=0.0, data__max_tools=0, eval__ks=(0, 5), codebook__size=1)
  assert "train.steps=-5 must be a number >= 1" in msg
  assert "train.learning_rate=0.0 must be a number > 0" in msg
  assert "data.max_tools=0 must be -1 (all) or >= 1" in msg
  assert "eval.ks=0 must be a number >= 1" in msg and "codebook.size=1" in msg
  assert msg.count(";") == 4 and "\n" not in msg
  assert "leaves no training queries" in _bad(data__test_fraction=0.6, data__dev_fraction=0.4)


def test_every_shipped_config_validates():
  for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
    if not name.endswith(".py") or name.startswith("_"):
      continue
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "configs", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    variants = base.SCALES if "apply_scale" in open(spec.origin).read() else (None,)
    for v in variants:
      cfg = mod.get_config(v) if v else mod.get_config()
      assert base.validate(cfg) is cfg, (name, v)


def test_choices_agree_with_the_modules_that_own_them():
  from toolgen_jax import artifact, evaluate
  from toolgen_jax.codebook import codebook, collisions
  from toolgen_jax.data import readers, views
  from toolgen_jax.evaluation import bm25, harness
  from toolgen_jax.models import lora, vocab
  from toolgen_jax.decoding import beam_search
  from toolgen_jax.training import code_loss, input_pipeline, stages
  owners = {"data.source": readers.READERS, "codebook.method": codebook.METHODS, "vocab.init": vocab.INITS,
            "train.trainable": lora.MODES, "train.packing": input_pipeline.PAD_MODES,
            "train.multi_target": stages.MULTI_TARGET, "eval.bm25_analyzer": bm25.ANALYZERS,
            "train.engine": stages.ENGINES, "train.code_loss": code_loss.MODES, "decode.normalize": beam_search.NORMALIZE,
            "codebook.collisions": collisions.POLICIES, "train.schedule": stages.SCHEDULES}
  for path, owned in owners.items():
    assert set(base.CHOICES[path]) == set(owned), path
  members = {"train.stages": stages.STAGES, "eval.settings": harness.SETTINGS, "eval.baselines": evaluate.BASELINES,
             "pipeline.redo": artifact.STEPS, "train.memorization_views": views.KINDS}
  for path, owned in members.items():
    assert set(base.MEMBER_CHOICES[path]) == set(owned), path
  c = base.base_config()  # every validated field exists (a renamed field would be skipped silently)
  for path in [*base.CHOICES, *base.MEMBER_CHOICES, *base.RANGES, *base.POSITIVE, *base.ALL_OR_POSITIVE]:
    assert base._get(c, path) is not base._MISSING, path


def test_unused_fields_are_gone():
  c = base.base_config()
  assert "lora" not in c and not hasattr(base, "check_paths")


# ---------------------------------------------------------------------------------------------------------------
# The CLI: one line, exit 2, nothing written.


@pytest.mark.parametrize("override,needle", [
    ("--config.codebook.method=bogus", "codebook.method='bogus'"),
    ("--config.data.source=bogus", "data.source='bogus'"),
    ("--config.train.steps=-5", "train.steps=-5"),
    ("--config.train.stages=('bogus_stage',)", "train.stages member 'bogus_stage'"),
])
def test_main_refuses_bad_values_before_work(tmp_path, override, needle):
  out = _main(f"--workdir={tmp_path / 'w'}", override, "--config.pipeline.dry_run=True")
  _one_line_error(out, needle)
  assert not (tmp_path / "w").exists()


def test_main_traceback_only_with_verbosity(tmp_path):
  out = _main(f"--workdir={tmp_path / 'w'}", "--config.codebook.method=bogus", "--verbosity=0")
  assert out.returncode == 2 and "Traceback" in out.stderr and out.stderr.strip().splitlines()[-1].startswith("error:")


def test_main_workdir_empty_file_or_below_a_file(tmp_path):
  _one_line_error(_main("--workdir=", "--config.pipeline.dry_run=True", cwd=tmp_path), "--workdir is empty")
  assert not (tmp_path / "config.json").exists()
  f = tmp_path / "afile"
  f.write_text("x")
  _one_line_error(_main(f"--workdir={f}", "--config.pipeline.dry_run=True"), "is a file")
  _one_line_error(_main(f"--workdir={f}/sub/dir", "--config.pipeline.dry_run=True"), f"is below {f}, which is a file")


def test_main_data_error_is_one_line(tmp_path):
  bad = tmp_path / "G1_instruction.json"
  bad.write_text('[{"query": 1}]')
  out = _main(f"--workdir={tmp_path / 'w'}", "--config.data.source=stabletoolbench", f"--config.data.path={bad}")
  _one_line_error(out, str(bad), "record 0", "field 'query'")
