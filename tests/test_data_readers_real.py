"""Readers on the real files in ../shared/data: the counts stated in its README, and BFCL's from issue #2."""

import collections
import itertools
import json
import time

import numpy as np
import pytest

from toolgen_jax import assets
from toolgen_jax.data import load_source
from toolgen_jax.data.readers import bfcl

pytestmark = pytest.mark.slow  # real data: ../shared/data and the BFCL release


@pytest.fixture(scope="module")
def stb(shared_data):
  return load_source("stabletoolbench", shared_data / "StableToolBench", log=False)


def test_stabletoolbench_counts(stb, shared_data):
  groups = collections.Counter(q.group for q in stb.queries)
  assert groups == {"I1": 163, "I2": 106, "I3": 61}
  assert len(stb.corpus) == 1417  # unique (tool_name, api_name) in the union of api_lists
  assert len({t.tool_name for t in stb.corpus}) == 474
  # 43 categories over all records; '👋 Demo Project' APIs appear under 3 categories, the corpus keeps the first.
  assert stb.report.stats["categories_in_records"] == 43
  assert len(stb.corpus.categories) == 42
  assert stb.report.issues["duplicate_tool_conflicting"] == 10
  assert len({t for q in stb.queries for t in q.relevant}) == 606
  per_group_relevant = {g: len({t for q in stb.queries if q.group == g for t in q.relevant}) for g in groups}
  assert per_group_relevant == {"I1": 354, "I2": 229, "I3": 32}
  # README histogram counts listed entries; one I2 query lists the same API three times (2 duplicates).
  assert stb.report.issues["duplicate_relevant"] == 2
  for q in stb.queries:
    assert set(q.relevant) <= set(q.candidates)
  g1 = json.loads((shared_data / "StableToolBench/solvable_queries/test_instruction/G1_instruction.json").read_text())
  q0 = next(q for q in stb.queries if q.id == str(g1[0]["query_id"]))
  assert q0.text == g1[0]["query"].strip()
  assert [stb.corpus[t].key for t in q0.relevant] == [tuple(x) for x in g1[0]["relevant APIs"]]
  assert [stb.corpus[t].key for t in q0.candidates] == [(a["tool_name"], a["api_name"]) for a in g1[0]["api_list"]]
  api0 = g1[0]["api_list"][0]
  tool0 = stb.corpus[q0.candidates[0]]
  assert tool0.description == api0["api_description"] and tool0.category == api0["category_name"]
  assert set(tool0.parameters["required"]) == {p["name"] for p in api0["required_parameters"]}


def test_stabletoolbench_single_file_and_group_filter(shared_data):
  f = shared_data / "StableToolBench/solvable_queries/test_instruction/G3_instruction.json"
  ds = load_source("stabletoolbench", f, log=False)
  assert len(ds.queries) == 61 and len(ds.corpus) == 44 and len({t.tool_name for t in ds.corpus}) == 7
  ds2 = load_source("stabletoolbench", shared_data / "StableToolBench", groups=("I2",), log=False)
  assert len(ds2.queries) == 106 and len(ds2.corpus) == 604


def test_toollens_counts_and_speed(shared_data):
  t0 = time.perf_counter()
  ds = load_source("beir", shared_data / "COLT/datasets/ToolLens", log=False)
  assert time.perf_counter() - t0 < 10.0
  assert len(ds.queries) == 18770 and len(ds.corpus) == 464
  assert collections.Counter(q.split for q in ds.queries) == {"train": 16893, "test": 1877}
  assert len({t.tool_name for t in ds.corpus}) == 314 and len(ds.corpus.categories) == 19
  hist = {s: collections.Counter(len(q.relevant) for q in ds.queries if q.split == s) for s in ("train", "test")}
  assert hist["train"] == {1: 1458, 2: 2898, 3: 12537}
  assert hist["test"] == {1: 159, 2: 326, 3: 1392}
  tool = ds.corpus[0]  # corpus _id 0: Worldwide Recipes / Suggestions
  assert (tool.category, tool.tool_name, tool.api_name, tool.description) == (
      "Food", "Worldwide Recipes", "Suggestions", "Get Suggestions")
  assert tool.parameters["required"] == ["q"] and tool.parameters["properties"]["q"]["type"] == "string"
  assert isinstance(tool.template_response, dict) and "results" in tool.template_response
  assert not ds.report.issues  # every corpus text parses


def test_toolbench_g3_is_a_co_usage_graph(shared_data):
  ds = load_source("beir", shared_data / "COLT/datasets/ToolBenchG3", log=False)
  # 1,419 docs; 4 Priceline APIs appear twice under one (tool, api) key with different docs -> first kept.
  assert len(ds.corpus) + ds.report.issues["duplicate_tool_conflicting"] == 1419
  assert len({t.tool_name for t in ds.corpus}) == 240 and len(ds.corpus.categories) == 36
  assert ds.queries == []  # no query text: nothing invented
  assert ds.report.stats["qrels_groups_without_text.train"] == 21361
  assert ds.report.stats["qrels_groups_without_text.test"] == 2373
  assert ds.cooccurrence.num_edges > 1000
  c = ds.cooccurrence.counts
  assert (c != c.T).nnz == 0 and c.diagonal().sum() == 0


def test_gorilla_counts(shared_data):
  ds = load_source("gorilla", shared_data / "gorilla", log=False)
  assert len(ds.corpus) == 94
  assert len({t.tool_name for t in ds.corpus}) == 43
  assert len(ds.corpus.categories) == 7
  assert collections.Counter(q.split for q in ds.queries) == {"train": 837, "eval": 186}
  assert len({q.relevant[0] for q in ds.queries if q.split == "train"}) == 94
  assert len({q.relevant[0] for q in ds.queries if q.split == "eval"}) == 78
  assert not any(q.text.startswith(("{", "#")) or "Output" in q.text for q in ds.queries)
  calls = {t.extra["api_call"] for t in ds.corpus}
  assert len(calls) == 94


def test_toolgen_names_count_and_speed(shared_data):
  t0 = time.perf_counter()
  ds = load_source("toolgen_names", shared_data / "ToolGen", log=False)
  assert time.perf_counter() - t0 < 10.0
  assert len(ds.corpus) == 46984
  assert len({t.tool_name for t in ds.corpus}) == 10387
  assert ds.report.stats["non_tool_token"] == 1  # <<Finish>>
  assert ds.corpus[0].key == ("Thai Drivers License OCR", "Driver's  License")


def test_toolbench_data_example(shared_data):
  ds = load_source("toolbench", shared_data / "ToolBench", log=False)
  assert collections.Counter(q.group for q in ds.queries) == {"I1": 5, "I2": 3, "I3": 2}
  assert len(ds.trajectories) == 13 and ds.report.issues["answer_without_messages"] == 2
  t = next(t for t in ds.trajectories if t.id == "I1/10_ChatGPT_DFS_woFilter_w2")
  assert [m.role for m in t.messages] == ["system", "user", "assistant", "observation", "assistant",
                                          "observation", "assistant"]
  calls = [m for m in t.messages if m.role == "assistant"]
  assert [m.action_name for m in calls] == ["transitaires_for_transitaires", "transitaire_for_transitaires",
                                            "Finish"]
  assert calls[-1].action is None and calls[0].action is not None
  assert ds.corpus[calls[1].action].api_name == "transitaire"
  assert json.loads(calls[1].action_input) == {"is_id": "ACT_AGENCE_CALEDONIENNE_DE_TRANSIT"}
  # G3 answer 3 calls 'list_of_cocktails_for_the_cocktail_db', which maps to the instruction corpus' real name.
  t3 = next(t for t in ds.trajectories if t.id == "I3/3_ChatGPT_DFS_woFilter_w2")
  first = next(m for m in t3.messages if m.role == "assistant")
  assert ds.corpus[first.action].key == ("The Cocktail DB", "List of Cocktails")


@pytest.fixture(scope="module")
def bfcl_ds():
  try:
    assets.bfcl_data_dir()
  except assets.MissingAssetError as e:
    pytest.skip(str(e))
  return load_source("bfcl", None, log=False)


def test_bfcl_counts(bfcl_ds):
  assert len(bfcl_ds.queries) == 2501
  assert len(bfcl_ds.corpus) == 2555
  assert len({t.api_name for t in bfcl_ds.corpus}) == 1437
  assert collections.Counter(q.group for q in bfcl_ds.queries) == {
      "simple_python": 400, "simple_java": 100, "simple_javascript": 50, "multiple": 200, "parallel": 200,
      "parallel_multiple": 200, "live_simple": 258, "live_multiple": 1053, "live_parallel": 16,
      "live_parallel_multiple": 24}
  for q in bfcl_ds.queries:
    assert q.relevant and set(q.relevant) <= set(q.candidates)


def test_bfcl_keys_and_schema(bfcl_ds):
  root = assets.bfcl_data_dir()
  first = json.loads((root / "BFCL_v4_simple_python.json").open().readline())
  q = next(q for q in bfcl_ds.queries if q.id == first["id"])
  tool = bfcl_ds.corpus[q.relevant[0]]
  assert tool.api_name == first["function"][0]["name"] == "calculate_triangle_area"
  assert tool.parameters["type"] == "object"  # BFCL 'dict'
  assert json.dumps(first["function"][0], sort_keys=True) == bfcl.canonical_doc(first["function"][0])
  names = collections.Counter(t.api_name for t in bfcl_ds.corpus)
  for t in bfcl_ds.corpus:
    if names[t.api_name] > 1:
      assert t.tool_name.startswith(t.api_name + "#") and t.name == t.tool_name
    else:
      assert t.tool_name == t.api_name == t.name
  keys = [t.key for t in bfcl_ds.corpus]
  assert len(set(keys)) == len(keys)
  types = set()

  def walk(s):
    if isinstance(s, dict):
      if isinstance(s.get("type"), str) and ("properties" in s or "items" in s or "description" in s):
        types.add(s["type"])
      for k in ("properties",):
        for v in (s.get(k) or {}).values():
          walk(v)
      if isinstance(s.get("items"), dict):
        walk(s["items"])

  for t in bfcl_ds.corpus:
    walk(t.parameters)
  assert types <= {"string", "number", "integer", "boolean", "array", "object", "null"}, types
  java = [t for t in bfcl_ds.corpus if t.category == "java"]
  assert java and any(p.get("x-source-type") for t in java for p in t.parameters["properties"].values())


def test_bfcl_parallel_relevance_in_answer_order(bfcl_ds):
  root = assets.bfcl_data_dir()
  answers = [json.loads(l) for l in (root / "possible_answer/BFCL_v4_parallel_multiple.json").open()]
  by_id = {q.id: q for q in bfcl_ds.queries}
  for a in answers[:50]:
    names = list(dict.fromkeys(next(iter(c)) for c in a["ground_truth"]))
    assert [bfcl_ds.corpus[t].api_name for t in by_id[a["id"]].relevant] == names
  # The co-usage graph counts, for every pair of tools one question calls together, the questions that do (brute force).
  want = collections.Counter(p for q in bfcl_ds.queries for p in itertools.combinations(sorted(set(q.relevant)), 2))
  pairs, counts = bfcl_ds.cooccurrence.edges()
  assert dict(zip(map(tuple, pairs.tolist()), counts.tolist())) == dict(want) and len(want) > 100
