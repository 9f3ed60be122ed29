"""Fast-tier coverage of the real-data protocol's merge/split logic (on tiny in-memory sources, no real data) and of
the agent's workdir loader (the model-free path and its one-line refusal)."""

import pytest

from toolgen_jax.agent import loader
from toolgen_jax.data import protocol
from toolgen_jax.data.dataset import finalize
from toolgen_jax.data.records import Query, Tool, ToolCorpus
from toolgen_jax.data.report import LoadReport


def _source(name, n_tools, queries):
  corpus = ToolCorpus([Tool(id=i, tool_name=f"{name}{i}", api_name="a", description=f"{name} tool {i}")
                       for i in range(n_tools)])
  qs = [Query(id=f"{name}-{i}", text=f"{name} query {i}", relevant=(rel,), split=split, group=group)
        for i, (rel, split, group) in enumerate(queries)]
  return finalize(corpus, qs, [], LoadReport(source=name), name, log=False)


def test_real_protocol_merges_splits_and_counts_unseen_tools(monkeypatch):
  toollens = _source("lens", 3, [(0, "train", "x"), (1, "test", "x")])
  stb = _source("stb", 4, [(i % 4, "", "I1") for i in range(10)])
  gorilla = _source("gor", 2, [(0, "train", "y"), (1, "eval", "y")])
  monkeypatch.setattr(protocol, "read_beir", lambda path, log: toollens)
  monkeypatch.setattr(protocol, "read_stabletoolbench", lambda path, log: stb)
  monkeypatch.setattr(protocol, "read_gorilla", lambda path, log: gorilla)
  ds = protocol.load_real_protocol("/nowhere", seed=0, log=False)
  assert ds.source == "real_protocol" and len(ds.corpus) == 9
  groups = {q.id.split(":")[-1]: (q.group, q.split) for q in ds.queries}
  assert groups["lens-1"] == ("ToolLens", "test") and groups["gor-1"] == ("Gorilla-torchhub", "test")
  stb_splits = sorted(s for i, (g, s) in groups.items() if g == "I1")
  assert stb_splits.count("train") == 6 and stb_splits.count("dev") == 2 and stb_splits.count("test") == 2
  unseen = protocol.unseen_test_tools(ds)
  assert unseen["ToolLens"] == 1 and unseen["Gorilla-torchhub"] == 1 and unseen["ToolLens_total"] == 1


def test_loader_demo_backend_and_missing_workdir(tmp_path):
  backend = loader.load_backend("demo")
  assert len(backend.corpus) > 0
  with pytest.raises(FileNotFoundError, match="--workdir=demo"):
    loader.load_backend(tmp_path / "missing")
