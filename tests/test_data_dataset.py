"""ToolDataset save/load round trip and content hash, merge with id remapping, deterministic split_queries."""

import collections
import dataclasses
import json

import numpy as np
import pytest

from toolgen_jax.data import DataError, load_dataset, load_source, merge, split_queries
from toolgen_jax.data.records import Query


def instruction_file(path, recs):
  path.write_text(json.dumps(recs), encoding="utf-8")
  return path


def api(tool, name, desc="d"):
  return {"category_name": "C", "tool_name": tool, "api_name": name, "api_description": desc,
          "required_parameters": [], "optional_parameters": [], "method": "GET", "template_response": {"a": "str"}}


@pytest.fixture
def small(tmp_path):
  recs = [{"query_id": 1, "query": "q one", "api_list": [api("A", "x"), api("A", "y"), api("B", "z")],
           "relevant APIs": [["A", "x"], ["B", "z"]]},
          {"query_id": 2, "query": "q two", "api_list": [api("A", "y"), api("B", "z")],
           "relevant APIs": [["A", "y"], ["B", "z"]]}]
  # split="train": the graph counts training episodes only (a StableToolBench file is a test set by default)
  return load_source("stabletoolbench", instruction_file(tmp_path / "G1_instruction.json", recs), split="train",
                     log=False)


def test_round_trip(small, tmp_path):
  h = small.save(tmp_path / "saved")
  back = load_dataset(tmp_path / "saved")
  assert back.content_hash == h == small.content_hash
  assert list(back.corpus) == list(small.corpus)
  assert back.queries == small.queries
  np.testing.assert_array_equal(back.cooccurrence.counts.toarray(), small.cooccurrence.counts.toarray())
  assert back.report.issues == small.report.issues and back.source == "stabletoolbench"
  manifest = json.loads((tmp_path / "saved" / "manifest.json").read_text())
  assert manifest["num_tools"] == 3 and manifest["content_hash"] == h


def test_round_trip_real_with_trajectories(shared_data, tmp_path):
  ds = load_source("toolbench", shared_data / "ToolBench", log=False)
  ds.save(tmp_path / "tb")
  back = load_dataset(tmp_path / "tb")
  assert back.trajectories == ds.trajectories and back.queries == ds.queries
  assert [t.to_json() for t in back.corpus] == [t.to_json() for t in ds.corpus]
  assert back.content_hash == ds.content_hash


def test_hash_detects_edits_and_changes_with_content(small, tmp_path):
  small.save(tmp_path / "s")
  p = tmp_path / "s" / "queries.jsonl"
  p.write_text(p.read_text().replace("q one", "q 1"))
  with pytest.raises(DataError, match="content hash"):
    load_dataset(tmp_path / "s")
  assert load_dataset(tmp_path / "s", verify=False).queries[0].text == "q 1"
  other = dataclasses.replace(small, queries=small.queries[:1])
  assert other.content_hash != small.content_hash
  with pytest.raises(DataError, match="manifest"):
    load_dataset(tmp_path)


def test_merge_remaps_ids_and_graphs(small, tmp_path):
  recs = [{"query_id": 1, "query": "other", "api_list": [api("C", "w"), api("B", "z"), api("A", "x", "conflict")],
           "relevant APIs": [["C", "w"], ["B", "z"]]}]
  second = load_source("stabletoolbench", instruction_file(tmp_path / "G2_instruction.json", recs), split="train",
                       log=False)
  second.source = "second"
  m = merge([small, second])
  assert [t.key for t in m.corpus] == [("A", "x"), ("A", "y"), ("B", "z"), ("C", "w")]
  assert m.report.issues["duplicate_tool_conflicting"] == 1 and m.corpus[0].description == "d"
  assert m.report.issues["query_id_renamed"] == 1
  q = {x.id: x for x in m.queries}["second:1"]
  assert [m.corpus[t].key for t in q.relevant] == [("C", "w"), ("B", "z")]
  assert [m.corpus[t].key for t in q.candidates] == [("C", "w"), ("B", "z"), ("A", "x")]
  c = m.cooccurrence.counts.toarray()
  assert c[0, 2] == 1 and c[1, 2] == 1 and c[3, 2] == 1 and (c == c.T).all()


def test_split_queries_deterministic_and_stratified():
  qs = [Query(id=f"{g}-{i}", text="t", relevant=(0,), group=g) for g in ("I1", "I2") for i in range(50)]
  a = split_queries(qs, (0.6, 0.2, 0.2), seed=3)
  b = split_queries(list(reversed(qs)), (0.6, 0.2, 0.2), seed=3)
  assert {k: [q.id for q in v] for k, v in a.items()} == {k: [q.id for q in v] for k, v in b.items()}
  assert {k: len(v) for k, v in a.items()} == {"train": 60, "dev": 20, "test": 20}
  assert collections.Counter(q.group for q in a["test"]) == {"I1": 10, "I2": 10}
  assert all(q.split == k for k, v in a.items() for q in v)
  ids = [q.id for v in a.values() for q in v]
  assert sorted(ids) == sorted(q.id for q in qs)
  c = split_queries(qs, (0.6, 0.2, 0.2), seed=4)
  assert [q.id for q in c["test"]] != [q.id for q in a["test"]]
  d = split_queries(qs, (0.8, 0.2), seed=0, by_group=False, names=("train", "test"))
  assert len(d["test"]) == 20
  with pytest.raises(ValueError):
    split_queries(qs, (0.5, 0.2, 0.2))


def test_restrict_cuts_tools_queries_and_graph(small):
  from toolgen_jax.data import restrict
  r = restrict(small, max_tools=2)
  assert len(r.corpus) == 2 and r.queries == []  # both queries need tool 2 ('B', 'z')
  assert r.cooccurrence.counts.shape == (2, 2) and r.report.stats["restrict_dropped_queries"] == 2
  r2 = restrict(small, max_queries=1)
  assert [q.id for q in r2.queries] == ["1"] and len(r2.corpus) == 3


def test_from_config_resplits_sources_without_train_and_test(tmp_path):
  from toolgen_jax.config import base_config
  from toolgen_jax.data import from_config
  recs = [{"query_id": i, "query": f"q{i}", "api_list": [api("A", "x"), api("A", "y")],
           "relevant APIs": [["A", "x"]]} for i in range(20)]
  cfg = base_config()
  cfg.data.source = "stabletoolbench"
  cfg.data.path = str(instruction_file(tmp_path / "G1_instruction.json", recs))
  cfg.data.test_fraction, cfg.data.dev_fraction, cfg.data.max_queries = 0.25, 0.25, 15
  a = from_config(cfg.data, seed=1)
  b = from_config(cfg.data, seed=1)
  assert [(q.id, q.split) for q in a.queries] == [(q.id, q.split) for q in b.queries]
  assert len(a.queries) == 15 and [q.id for q in a.queries] == [str(i) for i in range(15)]  # source order
  full = split_queries(load_source("stabletoolbench", cfg.data.path, log=False).queries, (0.5, 0.25, 0.25), seed=1)
  assert {k: len(v) for k, v in full.items()} == {"train": 10, "dev": 5, "test": 5}
  assert {q.id: q.split for q in a.queries} == {q.id: q.split for v in full.values() for q in v if int(q.id) < 15}


# --- leakage: the co-occurrence graph sees training episodes only --------------------------------------------------

def _graph_of(ds):
  return ds.cooccurrence.counts.toarray()


def _dense(groups, n):
  c = np.zeros((n, n), np.int64)
  for g in groups:
    for u in set(g):
      for v in set(g):
        c[u, v] += u != v
  return c


def test_graph_counts_training_episodes_only():
  from toolgen_jax.data import fit_cooccurrence
  from toolgen_jax.data.dataset import finalize
  from toolgen_jax.data.records import Message, Tool, ToolCorpus, Trajectory
  from toolgen_jax.data.report import LoadReport
  corpus = ToolCorpus([Tool(id=0, tool_name=f"T{i}", api_name="a") for i in range(6)])
  qs = [Query(id="tr", text="t", relevant=(0, 1), split="train"),
        Query(id="te", text="t", relevant=(2, 3), split="test"),
        Query(id="dv", text="t", relevant=(3, 4), split="dev"),
        Query(id="un", text="t", relevant=(4, 5), split=""),        # unsplit source: training until split
        Query(id="tr", text="t", relevant=(0, 5), split="eval")]    # same id in an eval split: held out entirely
  call = lambda *a: tuple(Message(role="assistant", action=x, action_name="x") for x in a)
  trajs = [Trajectory(id="1", query_id="te", messages=call(1, 2)),  # trajectory of a test query: held out
           Trajectory(id="2", query_id="zz", messages=call(1, 3))]  # query not loaded: training
  ds = finalize(corpus, qs, trajs, LoadReport(source="x"), "x",
                extra_groups={"train": [[2, 5]], "test": [[0, 4]]}, log=False)
  np.testing.assert_array_equal(_graph_of(ds), _dense([[4, 5], [1, 3], [2, 5]], 6))
  assert ds.report.stats["cooccurrence_groups_held_out"] == 1
  # relabelling the test query as training makes it count: the rule, not the records, decides
  ds2 = fit_cooccurrence(dataclasses.replace(ds, queries=[dataclasses.replace(q, split="train") if q.id == "te"
                                                            else q for q in ds.queries]))
  np.testing.assert_array_equal(_graph_of(ds2), _dense([[4, 5], [1, 3], [2, 5], [2, 3, 1]], 6))


def _stb_records(n):
  rng = np.random.default_rng(0)
  recs = []
  for i in range(n):
    rel = sorted(rng.choice(8, size=int(rng.integers(1, 4)), replace=False).tolist())
    recs.append({"query_id": i, "query": f"q{i}", "api_list": [api("T", f"a{j}") for j in range(8)],
                 "relevant APIs": [["T", f"a{j}"] for j in rel]})
  return recs


def _stb_config(tmp_path, test_fraction):
  from toolgen_jax.config import base_config
  cfg = base_config()
  cfg.data.source = "stabletoolbench"
  cfg.data.path = str(instruction_file(tmp_path / "G1_instruction.json", _stb_records(40)))
  cfg.data.test_fraction, cfg.data.dev_fraction = test_fraction, 0.0
  return cfg.data


def test_graph_ignores_test_queries_after_resplit(tmp_path):
  """from_config re-splits StableToolBench, then fits the graph: removing every test query leaves it unchanged,
  adding one changes nothing, and it equals the brute-force graph of the training queries."""
  from toolgen_jax.config import base_config
  from toolgen_jax.data import from_config
  recs = _stb_records(40)
  cfg = base_config()
  cfg.data.source = "stabletoolbench"
  cfg.data.path = str(instruction_file(tmp_path / "G1_instruction.json", recs))
  cfg.data.test_fraction, cfg.data.dev_fraction = 0.25, 0.0
  ds = from_config(cfg.data, seed=2)
  test_ids = {q.id for q in ds.queries if q.split == "test"}
  train = [q for q in ds.queries if q.split == "train"]
  assert len(test_ids) == 10 and len(train) == 30
  assert ds.cooccurrence.num_edges > 0
  np.testing.assert_array_equal(_graph_of(ds), _dense([q.relevant for q in train], len(ds.corpus)))
  # Remove every test query from the file: the training split (by id) and the graph stay the same.
  kept = [r for r in recs if str(r["query_id"]) not in test_ids]
  cfg.data.path = str(instruction_file(tmp_path / "G1_train_only.json", kept))
  cfg.data.test_fraction = 0.0
  no_test = from_config(cfg.data, seed=2)
  assert {q.id for q in no_test.queries} == {q.id for q in train}
  np.testing.assert_array_equal(_graph_of(no_test), _graph_of(ds))
  # Add a test query that uses tools never used together in training: still the same graph.
  extra = Query(id="new", text="t", relevant=(0, 1, 2, 3, 4, 5, 6, 7), split="test")
  from toolgen_jax.data import fit_cooccurrence
  more = fit_cooccurrence(dataclasses.replace(ds, queries=ds.queries + [extra]))
  np.testing.assert_array_equal(_graph_of(more), _graph_of(ds))


def test_merge_follows_renamed_queries_and_keeps_extra_groups(tmp_path):
  from toolgen_jax.data.dataset import finalize
  from toolgen_jax.data.records import Message, Tool, ToolCorpus, Trajectory
  from toolgen_jax.data.report import LoadReport
  call = lambda *a: tuple(Message(role="assistant", action=x, action_name="x") for x in a)
  def part(name, split, extra):
    corpus = ToolCorpus([Tool(id=0, tool_name=f"{name}{i}", api_name="a") for i in range(3)])
    q = Query(id="q", text="t", relevant=(0,), split=split)
    t = Trajectory(id="t", query_id="q", messages=call(1))
    return finalize(corpus, [q], [t], LoadReport(source=name), name, extra_groups=extra, log=False)
  a, b = part("A", "train", [[1, 2]]), part("B", "test", [])
  m = merge([a, b])
  # b's query was renamed to 'B:q'; its trajectory follows it, so both stay held out; a's episode {0, 1} counts
  assert {t.query_id for t in m.trajectories} == {"q", "B:q"}
  np.testing.assert_array_equal(_graph_of(m), _dense([[0, 1], [1, 2]], 6))
  m.save(tmp_path / "m")
  back = load_dataset(tmp_path / "m")
  assert back.extra_groups == ((1, 2),) and back.content_hash == m.content_hash


def test_real_protocol_graph_ignores_test_queries(shared_data):
  from toolgen_jax.data import fit_cooccurrence, load_source
  ds = load_source("real_protocol", str(shared_data), log=False)
  train_only = fit_cooccurrence(dataclasses.replace(ds, queries=[q for q in ds.queries if q.split == "train"]))
  assert ds.cooccurrence.num_edges > 0
  assert (ds.cooccurrence.counts != train_only.cooccurrence.counts).nnz == 0


def test_dev_fraction_carves_dev_out_of_a_sources_own_training_split(tmp_path, monkeypatch):
  """A source with its own train/test keeps its test queries; dev_fraction moves training queries to dev, and the
  graph is refitted without them."""
  from toolgen_jax.config import base_config
  from toolgen_jax.data import from_config, readers
  base = from_config(_stb_config(tmp_path, test_fraction=0.25), seed=2)  # a train/test dataset to start from
  before = {q.id: q.split for q in base.queries}
  monkeypatch.setattr(readers, "load_source", lambda source, path=None: base)
  cfg = base_config()
  cfg.data.dev_fraction = 0.2
  ds = from_config(cfg.data, seed=2)
  after = {q.id: q.split for q in ds.queries}
  assert {i for i, s in before.items() if s == "test"} == {i for i, s in after.items() if s == "test"}
  dev = [i for i, s in after.items() if s == "dev"]
  assert len(dev) == 6 and all(before[i] == "train" for i in dev)  # 20% of the 30 training queries
  train = [q for q in ds.queries if q.split == "train"]
  np.testing.assert_array_equal(_graph_of(ds), _dense([q.relevant for q in train], len(ds.corpus)))
  assert ds.report.stats["dev_queries_from_train"] == 6
