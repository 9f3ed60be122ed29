"""experiments/: every script writes its Markdown table and PNG and ends with a JSON line.

Fast tier: each script's main() on stand-in points (the pipeline replaced by a report of the same layout), so the
table, plot and JSON code runs in seconds; the configs the points would train are real and validated. Slow tier:
each script's `--smoke` mode end to end (configs/tiny.py's random 2-layer model, 48 tools; minutes in all).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
# Each script's smallest mode: --smoke (configs/tiny.py) and the fewest points that still make its table.
SMOKE_FLAGS = {"tokenizations": ["--methods", "atomic,toolweaver"], "perplexity": ["--methods", "atomic,toolweaver"],
               "unseen_tools": ["--methods", "atomic,toolweaver"], "lambda_sweep": ["--lambdas", "0,1"],
               "kl_sweep": ["--ks", "8", "--ls", "1,2"], "collisions": [], "toolset_scale": []}


def _load(name: str):
  """A script as a fresh module; `common` is the one module every script imports (so a monkeypatch reaches all)."""
  if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))
  if name in ("common", "collisions_module"):  # the modules scripts import by name (`import collisions`)
    return importlib.import_module(name.replace("_module", ""))
  spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _fake_report(method: str) -> dict:
  cell = lambda v: {"all": {"ndcg@1": v, "ndcg@5": min(1.0, v + 0.1), "n": 5}}
  split = {"test": cell(0.2), "train": cell(0.6), "memorisation": cell(0.5)}
  return {"files": {"bfcl": {"methods": {method: {"multi-domain": split}, "bm25": {"multi-domain": split},
                                         "embedding": {"multi-domain": split}}}},
          "perplexity": {"base": {"perplexity": 15.0}, "tuned": {"perplexity": 16.5},
                         "tuned (tool tokens masked)": {"perplexity": 15.0}},
          "meta": {"codebook": {"rate_after": 0.0, "new_tokens": 64}},
          "codebook": {method: {"cooccurring_prefix_sharing": [0.4, 0.1]}}}


@pytest.fixture
def fake_points(monkeypatch):
  common = _load("common")
  seen = []

  def run_point(method, config, runs, *, smoke=False):
    seen.append(common.point_key(method, config))
    return {"report": _fake_report(config.codebook.method), "workdir": pathlib.Path(runs) / "x", "config": config,
            "seconds": 1.0, "command": f"python -m toolgen_jax.main ... {method}"}
  monkeypatch.setattr(common, "run_point", run_point)
  monkeypatch.setattr(_load("collisions_module"), "codebook_row", _fake_codebook_row)
  return seen


def _fake_codebook_row(method, config, args):
  return {"method": method, "tools": config.data.max_tools, "K": "32/32", "L": 2, "edges": 344,
          "edges_sharing_level1": 0.3, "policy": config.codebook.collisions, "rate_before": 0.1, "rate_after": 0.0,
          "shared_tools": 0, "largest_group": 1, "moved_by_sinkhorn": 3}


def _check_outputs(out: pathlib.Path, name: str, line: dict):
  lines = (out / f"{name}.md").read_text().splitlines()
  assert sum(l.startswith("|---") for l in lines) >= 1 and len([l for l in lines if l.startswith("| ")]) > 1
  assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
  assert line["experiment"] == name and line["rows"]
  json.dumps(line, default=str)


@pytest.mark.parametrize("name", ["tokenizations", "lambda_sweep", "kl_sweep", "perplexity", "toolset_scale"])
def test_training_experiments_write_table_png_and_json(name, fake_points, tmp_path, capsys):
  mod = _load(name)
  line = mod.main(["--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
  _check_outputs(tmp_path, name, line)
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed["experiment"] == name and printed["png"] == str(tmp_path / f"{name}.png")
  assert fake_points  # every row came from a point


def test_unseen_tools_and_collisions_write_their_outputs(monkeypatch, tmp_path, capsys):
  unseen = _load("unseen_tools")
  row = {"heldout_test": 10.0, "heldout_test_n": 14, "heldout_train": 5.0, "heldout_train_n": 42, "seen_test": 20.0,
         "seen_test_n": 52, "heldout_test_ndcg@5": 12.0}
  monkeypatch.setattr(unseen, "evaluate_method", lambda m, *a: [{"method": m, "condition": c, **row}
                                                                  for c in ("added from documents", "trained")])
  monkeypatch.setattr(unseen, "baseline_rows", lambda *a: [{"method": "bm25", "condition": "(no training)", **row}])
  _check_outputs(tmp_path, "unseen_tools", unseen.main(["--out", str(tmp_path)]))
  collisions = _load("collisions")
  monkeypatch.setattr(collisions, "codebook_row", _fake_codebook_row)
  line = collisions.main(["--out", str(tmp_path)])
  _check_outputs(tmp_path, "collisions", line)
  assert {r["tools"] for r in line["rows"]} == {200, -1}
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["experiment"] == "collisions"


def test_shared_points_have_one_workdir_and_configs_validate():
  common = _load("common")
  key = lambda m, **kw: common.point_key(m, common.point_config(m, **kw))
  assert key("toolweaver") == key("toolweaver", overrides={"codebook.collab_lambda": 1.0})  # lambda sweep = table
  assert key("toolweaver") != key("toolweaver", overrides={"codebook.collab_lambda": 0.1})
  assert key("toolweaver") == key("toolweaver", size=32, levels=2)                           # K/L sweep = table
  c = common.point_config("toolweaver")
  assert (c.train.engine, c.codebook.collab_form, c.data.max_tools) == ("code", "paper", 200)
  for m in common.METHOD_CONFIGS:
    assert common.point_config(m, smoke=True, tools=48, size=8, epochs=2).train.frozen_layers == 2


@pytest.mark.slow
def test_every_script_smoke_mode_end_to_end(tmp_path):
  """configs/tiny.py points, trained for real (8 points shared across scripts through one --runs folder; ~10 min)."""
  runs = tmp_path / "runs"
  for name, flags in SMOKE_FLAGS.items():
    out = tmp_path / name
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / f"{name}.py"), "--smoke", "--out", str(out),
                           "--runs", str(runs), *flags], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_outputs(out, name, json.loads(proc.stdout.strip().splitlines()[-1]))
