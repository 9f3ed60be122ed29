"""Report writers: JSON round trip, Markdown rows and values, PNG files."""

import json

import numpy as np
import pytest

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import harness, report


class Fixed:
  def __init__(self, order):
    self.order = order

  def rank(self, queries, k, candidates):
    return [[t for t in self.order if c is None or t in c][:k] for c in candidates]


@pytest.fixture
def sample_report():
  qs = [Query("a", "x", (0,), group="I1", candidates=(0, 1)), Query("b", "y", (1,), group="I2", candidates=(0, 1)),
        Query("c", "z", (2,), group="I2")]
  methods = harness.evaluate_methods({"good": Fixed([0, 1, 2, 3]), "bad": Fixed([3, 2, 1, 0])}, qs)
  return {"files": {"toy.json": {"path": "/tmp/toy.json", "n_queries": 3, "methods": methods}},
          "perplexity": {"base": {"perplexity": 12.5, "n_scored": 99, "text": {"source": "pydoc", "python": "3"}}}}


def test_write_report(tmp_path, sample_report):
  paths = report.write_report(sample_report, tmp_path)
  loaded = json.loads(paths["json"].read_text())
  assert loaded["files"]["toy.json"]["methods"]["good"]["multi-domain"]["all"]["I1"]["ndcg@1"] == 1.0
  md = paths["markdown"].read_text()
  assert "### toy.json — multi-domain" in md and "### toy.json — in-domain" in md and "### toy.json — candidates" in md
  # each table says which pool its setting uses and the depth of the papers' NDCG variant
  assert "Setting: the papers' in-domain: every tool of the query's group (I1/I2/I3 pool)" in md
  assert "Setting: the query's own candidate list (StableToolBench api_list)." in md
  assert "toolgen_ndcg@k (the papers' variant) at depth good 5, bad 5." in md
  # good ranks tool 0 first: I1 NDCG@1 = 100, I2 (tools 1, 2 at ranks 2, 3) = 0.
  assert "| all | I1 | good | 1 | 100.00 |" in md
  assert "| all | I2 | good | 2 | 0.00 |" in md
  assert "| all | all | bad | 3 |" in md
  assert "Skipped queries: {'candidates/no_candidates': 1}" in md
  assert "| base | 12.500 | 99 |" in md
  assert len(paths["plots"]) == 3
  import matplotlib.image
  for p in paths["plots"]:
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    img = matplotlib.image.imread(p)
    assert min(img.shape[:2]) >= 100 and (img[..., :3] < 0.5).any(axis=-1).mean() > 0.01  # drawn, not blank


def test_group_order_puts_all_last(sample_report):
  md = report.markdown_tables(sample_report)
  lines = [l for l in md.splitlines() if l.startswith("| all |")]
  groups = [l.split("|")[2].strip() for l in lines[:6]]
  assert groups == ["I1", "I1", "I2", "I2", "all", "all"]


def test_single_split_rows_not_repeated(tmp_path):
  qs = [Query("a", "x", (0,), group="I1", split="test"), Query("b", "y", (1,), group="I1", split="test")]
  methods = harness.evaluate_methods({"good": Fixed([0, 1, 2])}, qs, settings=("multi-domain", "candidates"))
  rep = {"files": {"f": {"n_queries": 2, "methods": methods}}}
  md = report.markdown_tables(rep)
  assert "| test | I1 | good | 2 |" in md and "| test | all | good | 2 |" in md
  assert not [l for l in md.splitlines() if l.startswith("| all |")]
  assert "No query has a candidate pool here (2 skipped)" in md
  assert len(report.plot_ndcg(rep, tmp_path)) == 1


def test_codebook_section():
  from toolgen_jax.codebook import stats

  codes = np.array([[0, 1], [0, 2], [1, 1], [1, 1]])
  md = report.markdown_tables({"codebook": {"rqvae": stats.code_stats(codes, (4, 4))}})
  assert "### Codebook statistics" in md
  # 2 of 4 codes used per level; the last two tools collide on (1, 1); 4 tools over 3 distinct full codes.
  assert "| rqvae | 0.2500 | 0.500 / 0.500 | 2.0 / 1.8 | 2.00 / 1.33 |" in md


def test_combine_puts_runs_side_by_side_and_keeps_shared_baselines_once(tmp_path, sample_report):
  import copy
  a = copy.deepcopy(sample_report)
  b = copy.deepcopy(sample_report)
  b["files"]["toy.json"]["methods"] = {"good": a["files"]["toy.json"]["methods"]["good"],  # shared, identical
                                       "bad": a["files"]["toy.json"]["methods"]["good"]}  # same name, other numbers
  out = report.combine([a, b], ["run_a", "run_b"])
  methods = out["files"]["toy.json"]["methods"]
  assert list(methods) == ["good", "bad", "bad (run_b)"]
  assert set(out["perplexity"]) == {"base", "base (run_b)"}
  b["files"]["toy.json"]["n_queries"] = 4
  with pytest.raises(ValueError, match="same queries"):
    report.combine([a, b], ["run_a", "run_b"])
  for name, rep in (("a", a), ("c", sample_report)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "report.json").write_text(json.dumps(rep))
  report.main([str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "out")])
  assert "| all | all | good | 3 |" in (tmp_path / "out" / "report.md").read_text()
