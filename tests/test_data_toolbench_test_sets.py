"""ToolBench's official test sets (`test_instruction/`: I1, I1-Tool, I1-Cat, I2, I2-Cat, I3) read by the `toolbench`
reader as the test split, held out of the instruction pools and the answers, and kept by `data.from_config`."""

import json
import os

import pytest

from toolgen_jax import config as config_lib
from toolgen_jax.data import from_config, load_source


def api(tool, name, category="Logistics"):
  return {"category_name": category, "tool_name": tool, "api_name": name, "api_description": f"{name} of {tool}",
          "required_parameters": [], "optional_parameters": [], "method": "GET"}


def record(qid, text, tool, name, category="Logistics"):
  return {"api_list": [api(tool, name, category), api("Distractor", "noise")], "query": text,
          "relevant APIs": [[tool, name]], "query_id": qid}


def answer_for(query):
  msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": query},
          {"role": "assistant", "content": None, "function_call": {"name": "Finish", "arguments": "{}"}}]
  return {"answer_generation": {"valid_data": True, "function": [{"name": "Finish", "parameters": {}}],
                                "train_messages": [msgs]}}


TESTS = {  # file -> (query id, text, tool, api, category)
    "G1_instruction.json": (588, "track my parcel", "Parcel", "track", "Logistics"),
    "G1_tool.json": (900, "convert a currency", "Money", "convert", "Finance"),
    "G1_category.json": (901, "find a song", "Music", "search", "Media"),
    "G2_instruction.json": (30, "weather and news", "Weather", "now", "Data"),
    "G2_category.json": (31, "book a table", "Food", "book", "Travel"),
    "G3_instruction.json": (40, "plan a trip", "Trip", "plan", "Travel"),
}


@pytest.fixture
def tb(tmp_path):
  root = tmp_path / "data"
  for d in ("instruction", "test_instruction", "test_query_ids", "answer/G1_answer"):
    (root / d).mkdir(parents=True)
  pool = [record(5, "find agency", "Transitaires", "Transitaire"),
          record(588, "track my parcel please", "Parcel", "track"),   # a test query's id: held out
          record(7, "Plan  a TRIP", "Trip", "plan", "Travel"),         # a test query's text: held out
          record(8, "list agencies", "Transitaires", "Transitaires")]
  (root / "instruction" / "G1_query.json").write_text(json.dumps(pool))
  for name, (qid, text, tool, fn, cat) in TESTS.items():
    (root / "test_instruction" / name).write_text(json.dumps([record(qid, text, tool, fn, cat)]))
    (root / "test_query_ids" / name).write_text(json.dumps({str(qid): 0}))  # ids only: never read as queries
  (root / "answer" / "G1_answer" / "5_ChatGPT_DFS_woFilter_w2.json").write_text(json.dumps(answer_for("find agency")))
  (root / "answer" / "G1_answer" / "588_ChatGPT_DFS_woFilter_w2.json").write_text(
      json.dumps(answer_for("track my parcel please")))
  return root


def test_official_test_sets_are_the_test_split_held_out_of_training(tb):
  ds = load_source("toolbench", tb)
  by_split = {}
  for q in ds.queries:
    by_split.setdefault(q.split, []).append(q)
  assert set(by_split) == {"train", "test"}
  assert sorted(q.group for q in by_split["test"]) == sorted(["I1", "I1-Tool", "I1-Cat", "I2", "I2-Cat", "I3"])
  assert sorted(q.id for q in by_split["train"]) == ["I1/5", "I1/8"]
  i1_tool = next(q for q in by_split["test"] if q.group == "I1-Tool")
  assert i1_tool.id == "I1-Tool/900" and i1_tool.text == "convert a currency"
  assert [ds.corpus[t].api_name for t in i1_tool.relevant] == ["convert"]  # its unseen tool is in the corpus
  assert [t.query_id for t in ds.trajectories] == ["I1/5"]  # the test query's answer is not a training signal
  assert ds.report.issues["train_query_in_test_set"] == 2
  assert ds.report.issues["trajectory_of_test_query"] == 1
  assert ds.report.stats["official_test_queries"] == 6


def test_from_config_keeps_the_official_split(tb):
  c = config_lib.base_config()
  c.data.source, c.data.path = "toolbench", str(tb)
  ds = from_config(c.data)
  assert sorted(q.id for q in ds.queries if q.split == "test") == sorted(
      f"{g}/{TESTS[f][0]}" for g, f in [("I1", "G1_instruction.json"), ("I1-Tool", "G1_tool.json"),
                                        ("I1-Cat", "G1_category.json"), ("I2", "G2_instruction.json"),
                                        ("I2-Cat", "G2_category.json"), ("I3", "G3_instruction.json")])
  assert "resplit_queries" not in ds.report.stats


def test_without_test_sets_the_pool_stays_unsplit(tb):
  import shutil
  shutil.rmtree(tb / "test_instruction")
  ds = load_source("toolbench", tb)
  assert {q.split for q in ds.queries} == {""} and len(ds.queries) == 4


def test_stabletoolbench_solvable_test_sets_with_the_toolbench_example(shared_data, tmp_path):
  """A ToolBench folder next to StableToolBench's `solvable_queries/`: 163 / 106 / 61 I1 / I2 / I3 test queries."""
  root = tmp_path / "data"
  root.mkdir()
  os.symlink(shared_data / "StableToolBench" / "solvable_queries", root / "solvable_queries")
  os.symlink(shared_data / "ToolBench" / "data_example" / "instruction", root / "instruction")
  ds = load_source("toolbench", root)
  counts = {}
  for q in ds.queries:
    if q.split == "test":
      counts[q.group] = counts.get(q.group, 0) + 1
  assert counts == {"I1": 163, "I2": 106, "I3": 61}
  assert {q.split for q in ds.queries} == {"train", "test"}
