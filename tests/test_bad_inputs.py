"""Issue #17, data readers: every bad input found by trying files built for the purpose is a DataError naming file,
record and field, or a counted issue in the LoadReport; never a traceback, never a silent accept. The property tests
feed random JSON documents into each reader: only DataError may come out."""

import copy
import json
import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolgen_jax.data import DataError, load_source
from toolgen_jax.data import inspect as data_inspect


def api(tool="T", name="a", desc="does a", **kw):
  return {"category_name": "C", "tool_name": tool, "api_name": name, "api_description": desc, "method": "GET", **kw}


def write(path, obj, jsonl=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "".join(json.dumps(r) + "\n" for r in obj) if jsonl else (obj if isinstance(obj, str) else json.dumps(obj))
  path.write_text(text, encoding="utf-8")
  return path


def stb_file(tmp_path, records):
  return write(tmp_path / "G1_instruction.json", records)


def data_error(source, path):
  with pytest.raises(DataError) as e:
    load_source(source, path, log=False)
  assert "\n" not in str(e.value)
  return e.value


# ---------------------------------------------------------------------------------------------------------------
# Crashes that are now DataErrors.


def test_json_nested_100k_deep(tmp_path):
  deep = "[" * 100_000 + "]" * 100_000
  e = data_error("stabletoolbench", write(tmp_path / "G1_instruction.json", deep))
  assert "nested deeper" in str(e) and e.path.endswith("G1_instruction.json")
  # one JSON-lines record: the record index is named
  d = tmp_path / "beir"
  write(d / "corpus.jsonl", json.dumps({"_id": "0", "text": "x"}) + "\n" + deep + "\n")
  e = data_error("beir", d)
  assert e.record == 1 and "nested deeper" in str(e)
  # shallow enough for Python's parser, still refused before a reader recurses through it
  e = data_error("stabletoolbench", write(tmp_path / "G1_instruction.json", "[" * 500 + "]" * 500))
  assert "nested deeper than 64" in str(e)


def test_huge_integer_literal_is_a_data_error(tmp_path):
  e = data_error("stabletoolbench", write(tmp_path / "G1_instruction.json", "[" + "9" * 5000 + "]"))
  assert "unreadable JSON value" in str(e)


def toolbench_root(tmp_path, answer, tools=True):
  root = tmp_path / "tb"
  if tools:
    write(root / "toolenv" / "tools" / "Cat" / "t.json",
          {"tool_name": "T", "standardized_name": "t", "api_list": [{"name": "a", "description": "d"}]})
  write(root / "answer" / "G1_answer" / "5_dfs.json", answer)
  return root


def answer(messages, functions=None, **ag):
  fns = functions if functions is not None else [{"name": "a_for_t"}, {"name": "Finish"}]
  return {"answer_generation": {"valid_data": True, "function": fns, "train_messages": [messages], **ag}}


def test_toolbench_assistant_content_not_a_string(tmp_path):
  msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": 123}]
  e = data_error("toolbench", toolbench_root(tmp_path, answer(msgs)))
  assert e.path.endswith("5_dfs.json")
  assert e.field == "answer_generation.train_messages[-1][1].content" and "expected string, got integer" in str(e)
  msgs = [{"role": "user", "content": ["q"]}]
  e = data_error("toolbench", toolbench_root(tmp_path, answer(msgs)))
  assert e.field == "answer_generation.train_messages[-1][0].content"


def test_toolbench_answer_generation_wrong_type(tmp_path):
  e = data_error("toolbench", toolbench_root(tmp_path, {"answer_generation": [1]}))
  assert e.field == "answer_generation" and "expected object, got array" in str(e)


def test_toolbench_function_parameters_properties_a_list(tmp_path):
  fns = [{"name": "b_for_u", "parameters": {"type": "object", "properties": ["x"]}}]
  e = data_error("toolbench", toolbench_root(tmp_path, answer([{"role": "user", "content": "q"}], fns)))
  assert e.field == "answer_generation.function[0].parameters.properties"
  fns = [{"name": "b_for_u", "parameters": [1, 2]}]
  e = data_error("toolbench", toolbench_root(tmp_path, answer([{"role": "user", "content": "q"}], fns)))
  assert e.field == "answer_generation.function[0].parameters"


def bfcl_dir(tmp_path, questions, answers):
  d = tmp_path / "bfcl"
  write(d / "BFCL_v4_simple_python.json", questions, jsonl=True)
  write(d / "possible_answer" / "BFCL_v4_simple_python.json", answers, jsonl=True)
  return d


def bfcl_q(qid, content="find x", fn="f", params=None, extra_msgs=()):
  doc = {"name": fn, "description": "does f", "parameters": params or {"type": "dict", "properties": {}}}
  return {"id": qid, "question": [[*extra_msgs, {"role": "user", "content": content}]], "function": [doc]}


def bfcl_read(d):
  from toolgen_jax.data.readers import bfcl
  return bfcl.read(d, categories=("simple_python",), log=False)


def test_bfcl_user_content_not_a_string(tmp_path):
  d = bfcl_dir(tmp_path, [bfcl_q("q0", content=123)], [{"id": "q0", "ground_truth": [{"f": {}}]}])
  with pytest.raises(DataError) as e:
    bfcl_read(d)
  assert (e.value.record, e.value.field) == (0, "question[0][0].content")


def test_bfcl_parameters_not_an_object(tmp_path):
  d = bfcl_dir(tmp_path, [bfcl_q("q0", params=[1, 2])], [{"id": "q0", "ground_truth": [{"f": {}}]}])
  with pytest.raises(DataError) as e:
    bfcl_read(d)
  assert (e.value.record, e.value.field) == (0, "function[0].parameters") and "got array" in str(e.value)


def test_bfcl_non_object_message_is_an_error(tmp_path):
  d = bfcl_dir(tmp_path, [bfcl_q("q0", extra_msgs=("hello",))], [{"id": "q0", "ground_truth": [{"f": {}}]}])
  with pytest.raises(DataError) as e:
    bfcl_read(d)
  assert e.value.field == "question[0][0]" and "expected a JSON object, got string" in str(e.value)


def test_folder_where_a_file_is_expected(tmp_path):
  (tmp_path / "G1_instruction.json").mkdir()
  e = data_error("stabletoolbench", tmp_path)
  assert "is a folder, expected a file" in str(e) and e.path.endswith("G1_instruction.json")
  d = tmp_path / "bfcl"
  (d / "BFCL_v4_simple_python.json").mkdir(parents=True)
  with pytest.raises(DataError, match="is a folder"):
    bfcl_read(d)


# ---------------------------------------------------------------------------------------------------------------
# Silent accepts that are now counted (or refused).


def test_toolgen_names_empty_names_are_counted(tmp_path):
  f = write(tmp_path / "virtual_tokens.txt", "<<T&&a>>\n<<&&>>\n<<&&x>>\n<<Finish>>\n")
  ds = load_source("toolgen_names", f, log=False)
  assert len(ds.corpus) == 3 and ds.report.issues["empty_name"] == 2
  assert "empty_name=2" in ds.report.summary()


def test_query_id_boolean_is_refused(tmp_path):
  e = data_error("stabletoolbench", stb_file(tmp_path, [
      {"query": "q", "query_id": True, "api_list": [api()], "relevant APIs": [["T", "a"]]}]))
  assert (e.record, e.field) == (0, "query_id") and "got boolean" in str(e)


def test_empty_tool_and_api_name_are_counted(tmp_path):
  ds = load_source("stabletoolbench", stb_file(tmp_path, [
      {"query": "q", "query_id": 1, "api_list": [api(tool=""), api(name=" ")], "relevant APIs": [["", "a"]]}]),
      log=False)
  assert ds.report.issues["empty_name"] == 2 and len(ds.queries) == 1


def test_bfcl_duplicate_id_is_counted_and_first_kept(tmp_path):
  d = bfcl_dir(tmp_path, [bfcl_q("q0", content="first"), bfcl_q("q0", content="second", fn="g")],
               [{"id": "q0", "ground_truth": [{"f": {}}]}, {"id": "q0", "ground_truth": [{"g": {}}]}])
  ds = bfcl_read(d)
  assert [q.text for q in ds.queries] == ["first"]
  assert ds.report.issues["duplicate_query_id"] == 1 and ds.report.issues["duplicate_answer_id"] == 1
  assert len(ds.corpus) == 1  # the duplicate record's function is not loaded either


def test_toolbench_zero_message_trajectory_is_counted(tmp_path):
  ds = load_source("toolbench", toolbench_root(tmp_path, answer([])), log=False)
  assert ds.trajectories == [] and ds.report.issues["empty_trajectory"] == 1


def test_file_holding_an_empty_list(tmp_path):
  e = data_error("stabletoolbench", stb_file(tmp_path, []))
  assert "no tools in this source" in str(e)
  # inside a folder with another good file: counted, the rest loads
  stb_file(tmp_path, [{"query": "q", "query_id": 1, "api_list": [api()], "relevant APIs": [["T", "a"]]}])
  write(tmp_path / "G2_instruction.json", [])
  ds = load_source("stabletoolbench", tmp_path, log=False)
  assert len(ds.corpus) == 1 and ds.report.issues["empty_file"] == 1


def gorilla_dir(tmp_path, example):
  d = tmp_path / "gorilla"
  write(d / "api" / "torchhub_api.jsonl", [{"api_name": "MiDaS", "api_call": "torch.hub.load(model='DPT')",
                                            "domain": "vision", "description": "depth"}], jsonl=True)
  write(d / "apibench" / "torchhub_train.json", [example], jsonl=True)
  return d


def test_gorilla_wrong_or_non_string_api_call_is_counted(tmp_path):
  base = {"code": "###Instruction: estimate depth\n###Output: x",
          "api_data": {"api_call": "torch.hub.load(model='DPT')"}}
  ds = load_source("gorilla", gorilla_dir(tmp_path, {**base, "api_call": "torch.hub.load(model='nope')"}), log=False)
  assert len(ds.queries) == 1 and ds.report.issues["api_call_resolved_from_api_data"] == 1
  ds = load_source("gorilla", gorilla_dir(tmp_path, {**base, "api_call": 7}), log=False)
  assert len(ds.queries) == 1 and ds.report.issues["api_call_not_a_string"] == 1
  ds = load_source("gorilla", gorilla_dir(tmp_path, {**base, "api_call": "torch.hub.load(model='DPT')"}), log=False)
  assert not ds.report.issues  # the right call is not an issue
  # api_data.api_call not a string (a list cannot be looked up): counted as unresolved, not a TypeError
  ds = load_source("gorilla", gorilla_dir(tmp_path, {**base, "api_call": None, "api_data": {"api_call": [1]}}),
                   log=False)
  assert ds.report.issues["query_dropped_no_relevant"] == 1


# ---------------------------------------------------------------------------------------------------------------
# The CLI prints one line.


def test_inspect_prints_one_line_and_exits_2(tmp_path, capsys):
  f = stb_file(tmp_path, [{"query": "q", "query_id": True, "api_list": [api()], "relevant APIs": []}])
  assert data_inspect.main(["--source=stabletoolbench", f"--path={f}"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith("error: ") and "field 'query_id'" in err
  assert data_inspect.main(["--source=stabletoolbench", f"--path={f}", "--verbosity=1"]) == 2
  assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Property tests: random JSON documents, and valid documents with random parts replaced or deleted, into every
# reader; only DataError comes out.

_SCALARS = st.none() | st.booleans() | st.integers(-10, 10) | st.floats() | st.text(max_size=8)
_KEYS = st.sampled_from(["query", "query_id", "api_list", "relevant APIs", "tool_name", "api_name", "name", "id",
                         "question", "function", "ground_truth", "role", "content", "parameters", "properties",
                         "required", "_id", "text", "api_call", "code", "api_data", "answer_generation",
                         "train_messages", "function_call", "arguments", "required_parameters", "type", "x"])
_JSON = st.recursive(_SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_KEYS, kids, max_size=5),
                     max_leaves=20)
_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(doc, prefix=()):
  yield prefix
  items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
  for k, v in items:
    yield from _paths(v, prefix + (k,))


@st.composite
def mutated(draw, valid):
  """`valid` with 1-3 random parts replaced by random JSON or deleted (or the whole document replaced)."""
  doc = copy.deepcopy(valid)
  rnd = draw(st.randoms(use_true_random=True))  # uniform over paths (sampled_from favours the first: the root)
  for _ in range(draw(st.integers(1, 3))):
    paths = list(_paths(doc))
    path = rnd.choice(paths[1:]) if len(paths) > 1 and rnd.random() > 0.03 else ()
    if not path:
      return draw(_JSON)
    parent = doc
    for k in path[:-1]:
      parent = parent[k]
    if draw(st.booleans()):
      parent[path[-1]] = draw(_JSON)
    else:
      del parent[path[-1]]
  return doc


def _only_data_error(source, path, **kw):
  try:
    load_source(source, path, log=False, **kw)
  except DataError as e:
    assert "\n" not in str(e)


_STB = [{"query": "q", "query_id": 1, "api_list": [api(required_parameters=[{"name": "x", "type": "STRING"}]),
                                                   api(name="b")], "relevant APIs": [["T", "a"], ["T", "b"]]}]


@_SETTINGS
@given(doc=_JSON | mutated(_STB))
def test_property_stabletoolbench(doc):
  with tempfile.TemporaryDirectory() as t:
    _only_data_error("stabletoolbench", write(pathlib.Path(t) / "G1_instruction.json", doc))


_BFCL = [[bfcl_q("q0", params={"type": "dict", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
                 extra_msgs=({"role": "system", "content": "s"},)), bfcl_q("q1", fn="g")],
         [{"id": "q0", "ground_truth": [{"f": {"x": [1]}}]}, {"id": "q1", "ground_truth": [{"g": {}}]}]]


@_SETTINGS
@given(docs=mutated(_BFCL))
def test_property_bfcl(docs):
  questions, answers = (docs + [[], []])[:2] if isinstance(docs, list) else (docs, docs)
  with tempfile.TemporaryDirectory() as t:
    d = pathlib.Path(t)
    write(d / "BFCL_v4_simple_python.json", questions if isinstance(questions, list) else [questions], jsonl=True)
    write(d / "possible_answer" / "BFCL_v4_simple_python.json", answers if isinstance(answers, list) else [answers],
          jsonl=True)
    _only_data_error("bfcl", d, categories=("simple_python",))


_TOOLBENCH = {
    "tool": {"tool_name": "T", "standardized_name": "t", "tool_description": "x",
             "api_list": [{"name": "a", "description": "d", "required_parameters": [{"name": "x", "type": "NUMBER"}]}]},
    "query": _STB,
    "answer": answer([{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "hm", "function_call": {"name": "a_for_t", "arguments": "{}"}},
                      {"role": "function", "name": "a_for_t", "content": "ok"},
                      {"role": "assistant", "content": "Thought: x\nAction: Finish\nAction Input: {}"}],
                     [{"name": "a_for_t"}, {"name": "c_for_u", "description": 'subfunction for tool "u"',
                                           "parameters": {"properties": {"y": {}}, "required": ["y"]}},
                      {"name": "Finish"}]),
}


@_SETTINGS
@given(docs=mutated(_TOOLBENCH))
def test_property_toolbench(docs):
  docs = docs if isinstance(docs, dict) else {"tool": docs}
  with tempfile.TemporaryDirectory() as t:
    root = pathlib.Path(t)
    write(root / "toolenv" / "tools" / "Cat" / "t.json", docs.get("tool", {}))
    write(root / "instruction" / "G1_query.json", docs.get("query", []))
    write(root / "answer" / "G1_answer" / "1_dfs.json", docs.get("answer", {}))
    _only_data_error("toolbench", root)


_COLT = ('category_name:C, tool_name:T, api_name:a, api_description:d, required_params: [{"name": "q", "type": '
         '"STRING"}], optional_params: [], return_schema: {"a": "str"}')
_BEIR = {"corpus": [{"_id": "0", "text": _COLT}, {"_id": 1, "text": "free", "title": "t"}],
         "queries": [{"_id": "q", "text": "find"}, {"_id": "r", "text": "other"}]}


@_SETTINGS
@given(docs=mutated(_BEIR))
def test_property_beir(docs):
  docs = docs if isinstance(docs, dict) else {"corpus": docs}
  listify = lambda v: v if isinstance(v, list) else [v]
  with tempfile.TemporaryDirectory() as t:
    d = pathlib.Path(t)
    write(d / "corpus.jsonl", listify(docs.get("corpus", [])), jsonl=True)
    write(d / "queries.jsonl", listify(docs.get("queries", [])), jsonl=True)
    write(d / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq\t0\t1\nq\t1\t1\nr\t1\t1\n")
    _only_data_error("beir", d)


_GORILLA = {"apis": [{"api_name": "MiDaS", "api_call": "torch.hub.load(model='DPT')", "domain": "v",
                      "api_arguments": {"a": 1}}, {"api_name": "R", "api_call": "r()", "api_arguments": ["x"]}],
            "examples": [{"code": "###Instruction: depth\n###Output: x", "api_call": "r()",
                          "api_data": {"api_call": "torch.hub.load(model='DPT')"}},
                         {"code": "{'Instruction': 'go', 'Output': 1}", "api_call": "torch.hub.load(model='DPT')"}]}


@_SETTINGS
@given(docs=mutated(_GORILLA))
def test_property_gorilla(docs):
  docs = docs if isinstance(docs, dict) else {"apis": docs}
  listify = lambda v: v if isinstance(v, list) else [v]
  with tempfile.TemporaryDirectory() as t:
    d = pathlib.Path(t)
    write(d / "api" / "h_api.jsonl", listify(docs.get("apis", [])), jsonl=True)
    write(d / "apibench" / "h_train.json", listify(docs.get("examples", [])), jsonl=True)
    _only_data_error("gorilla", d)


@_SETTINGS
@given(lines=st.lists(st.text(max_size=12).map(lambda s: f"<<{s}>>") | st.text(max_size=12), max_size=6))
def test_property_toolgen_names(lines):
  with tempfile.TemporaryDirectory() as t:
    _only_data_error("toolgen_names", write(pathlib.Path(t) / "virtual_tokens.txt", "\n".join(lines)))
