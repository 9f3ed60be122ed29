"""Every bad-input case from issue #2 on small fixture files: fatal ones raise DataError naming file, record and
field; recoverable ones are counted in the LoadReport and logged as one summary line."""

import json
import logging

import pytest

from toolgen_jax.data import DataError, load_source


def api(tool="T", name="a", desc="does a", cat="Cat", **kw):
  return {"category_name": cat, "tool_name": tool, "api_name": name, "api_description": desc,
          "required_parameters": [{"name": "x", "type": "STRING", "description": "the x", "default": "1"}],
          "optional_parameters": [{"name": "n", "type": "NUMBER", "description": "", "default": ""}],
          "method": "GET", **kw}


def record(qid, apis, relevant, query="find things"):
  return {"api_list": apis, "query": query, "relevant APIs": relevant, "query_id": qid}


def write(path, obj):
  path.write_text(json.dumps(obj), encoding="utf-8")
  return path


# ---------------------------------------------------------------------------------------------------------------
# StableToolBench / instruction format


def test_good_fixture_maps_fields(tmp_path):
  f = write(tmp_path / "G2_instruction.json", [record(7, [api(), api(name="b")], [["T", "b"], ["T", "a"]])])
  ds = load_source("stabletoolbench", f, log=False)
  (q,) = ds.queries
  assert (q.id, q.group, q.split, q.text) == ("7", "I2", "test", "find things")
  assert [ds.corpus[t].api_name for t in q.relevant] == ["b", "a"]  # source order kept
  t = ds.corpus[0]
  assert t.parameters == {"type": "object", "required": ["x"], "properties": {
      "x": {"type": "string", "x-source-type": "STRING", "description": "the x", "default": "1"},
      "n": {"type": "number", "x-source-type": "NUMBER", "description": ""}}}
  assert ds.cooccurrence.num_edges == 0 and not ds.report.issues  # a test query never feeds the co-use graph


def test_malformed_json_is_fatal(tmp_path):
  f = tmp_path / "G1_instruction.json"
  f.write_text('[{"query": "x", ', encoding="utf-8")
  with pytest.raises(DataError, match="malformed JSON") as e:
    load_source("stabletoolbench", f, log=False)
  assert e.value.path == str(f)


def test_missing_required_field_names_record_and_field(tmp_path):
  recs = [record(1, [api()], [["T", "a"]]), record(2, [api()], [["T", "a"]])]
  del recs[1]["query"]
  f = write(tmp_path / "G1_instruction.json", recs)
  with pytest.raises(DataError) as e:
    load_source("stabletoolbench", f, log=False)
  assert (e.value.path, e.value.record, e.value.field) == (str(f), 1, "query")
  recs = [record(1, [api(), {"api_name": "b"}], [["T", "a"]])]
  f = write(tmp_path / "G1_instruction.json", recs)
  with pytest.raises(DataError) as e:
    load_source("stabletoolbench", f, log=False)
  assert (e.value.record, e.value.field) == (0, "api_list[1].tool_name")
  f = write(tmp_path / "G1_instruction.json", [record(1, [api()], [["T"]])])
  with pytest.raises(DataError) as e:
    load_source("stabletoolbench", f, log=False)
  assert e.value.field == "relevant APIs[0]"


def test_duplicates_identical_and_conflicting(tmp_path):
  recs = [record(1, [api(), api(name="b")], [["T", "a"]]),
          record(2, [api(), api(name="b", desc="something else")], [["T", "b"]])]
  ds = load_source("stabletoolbench", write(tmp_path / "G1_instruction.json", recs), log=False)
  assert len(ds.corpus) == 2
  assert ds.corpus.get_id("T", "b") is not None and ds.corpus[ds.corpus.id_of("T", "b")].description == "does a"
  assert ds.report.stats["duplicate_tool_identical"] == 1
  assert ds.report.issues["duplicate_tool_conflicting"] == 1


def test_empty_description_and_unresolvable_relevant(tmp_path, caplog):
  recs = [record(1, [api(desc="  ")], [["T", "a"], ["T", "zzz"]]),
          record(2, [api()], [["Other", "x"]])]
  with caplog.at_level(logging.INFO, logger="toolgen_jax.data"):
    ds = load_source("stabletoolbench", write(tmp_path / "G1_instruction.json", recs))
  assert ds.report.issues["empty_description"] == 1
  assert ds.report.issues["relevant_not_in_corpus"] == 2
  assert ds.report.issues["query_dropped_no_relevant"] == 1
  assert [q.id for q in ds.queries] == ["1"] and len(ds.queries[0].relevant) == 1
  lines = [r for r in caplog.records if r.name == "toolgen_jax.data"]
  assert len(lines) == 1 and "relevant_not_in_corpus=2" in lines[0].getMessage()


def test_relevant_outside_own_candidates_is_counted(tmp_path):
  recs = [record(1, [api(name="a"), api(name="b")], [["T", "a"]]), record(2, [api(name="c")], [["T", "a"]])]
  ds = load_source("stabletoolbench", write(tmp_path / "G1_instruction.json", recs), log=False)
  assert ds.report.issues["relevant_not_in_candidates"] == 1 and len(ds.queries) == 2


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
  text = json.dumps([record(1, [api(desc="caf\u00e9")], [["T", "a"]])], ensure_ascii=False)
  data = text.encode("utf-8").replace("é".encode("utf-8"), b"\xe9")  # a Latin-1 byte inside UTF-8 text
  f = tmp_path / "G1_instruction.json"
  f.write_bytes(data)
  ds = load_source("stabletoolbench", f, log=False)
  assert ds.report.issues["undecodable_bytes"] == 1
  assert ds.corpus[0].description == "caf\ufffd"


def test_missing_path_and_empty_folder(tmp_path):
  with pytest.raises(DataError, match="no such file"):
    load_source("stabletoolbench", tmp_path / "nope", log=False)
  with pytest.raises(DataError, match="no G<n>_instruction"):
    load_source("stabletoolbench", tmp_path, log=False)
  with pytest.raises(ValueError, match="unknown data source"):
    load_source("nosuch", tmp_path)
  with pytest.raises(ValueError, match="no embedded default"):
    load_source("beir", None)


# ---------------------------------------------------------------------------------------------------------------
# BEIR / COLT


def colt_text(tool, name, desc="d", cat="C"):
  return (f"category_name:{cat}, tool_name:{tool}, api_name:{name}, api_description:{desc}, required_params: "
          '[{"name": "q", "type": "STRING", "description": "query, with commas"}], optional_params: [], '
          'return_schema: {"a": "str"}')


def beir_dir(tmp_path, corpus, queries=None, qrels=None):
  d = tmp_path / "set"
  (d / "qrels").mkdir(parents=True)
  (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
  if queries is not None:
    (d / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
  for split, rows in (qrels or {}).items():
    (d / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{c}\t{s}\n" for q, c, s in rows), encoding="utf-8")
  return d


def test_beir_parses_colt_text_and_qrels(tmp_path):
  d = beir_dir(tmp_path, [{"_id": "0", "text": colt_text("T, Inc.", "a, b", "x, y")},
                          {"_id": "1", "text": colt_text("T", "c")}, {"_id": "2", "text": "free text doc"}],
               [{"_id": "q1", "text": "hello"}, {"_id": "q2", "text": "bye"}, {"_id": "q3", "text": "unused"}],
               {"train": [("q1", "0", 1), ("q1", "1", 1), ("q1", "9", 1), ("q2", "2", 0), ("q2", "1", 1),
                          ("q4", "0", 1), ("q4", "1", 1)]})
  ds = load_source("beir", d, log=False)
  t = ds.corpus[0]
  assert (t.tool_name, t.api_name, t.description, t.category) == ("T, Inc.", "a, b", "x, y", "C")
  assert t.parameters["properties"]["q"]["description"] == "query, with commas"
  assert t.template_response == {"a": "str"}
  assert ds.report.issues["corpus_text_unstructured"] == 1
  assert ds.report.issues["relevant_not_in_corpus"] == 1
  assert ds.report.issues["qrels_query_without_text"] == 1  # q4: kept as a co-usage group only
  assert ds.report.issues["query_without_qrels"] == 1
  assert ds.report.stats["qrels_rows_nonpositive"] == 1
  assert [(q.id, q.relevant, q.split) for q in ds.queries] == [("q1", (0, 1), "train"), ("q2", (1,), "train")]
  assert ds.cooccurrence.counts[0, 1] == 2  # q1 and the text-less q4


def test_beir_bad_lines_are_fatal(tmp_path):
  d = beir_dir(tmp_path, [{"_id": "0", "text": "x"}])
  (d / "corpus.jsonl").write_text('{"_id": "0", "text": "x"}\n{"_id": 1, "text": \n', encoding="utf-8")
  with pytest.raises(DataError) as e:
    load_source("beir", d, log=False)
  assert e.value.record == 1 and "corpus.jsonl" in e.value.path
  (d / "corpus.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
  with pytest.raises(DataError) as e:
    load_source("beir", d, log=False)
  assert (e.value.record, e.value.field) == (0, "_id")
  (d / "corpus.jsonl").write_text('{"_id": "0", "text": "x"}\n', encoding="utf-8")
  (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1 0 1\n", encoding="utf-8")
  with pytest.raises(DataError) as e:
    load_source("beir", d, log=False)
  assert e.value.record == 2 and e.value.path.endswith("test.tsv")


# ---------------------------------------------------------------------------------------------------------------
# Gorilla, ToolGen names, BFCL


def test_gorilla_fixture(tmp_path):
  (tmp_path / "api").mkdir()
  (tmp_path / "apibench").mkdir()
  docs = [{"domain": "Vision", "api_name": "Net", "api_call": "torch.hub.load(repo_or_dir='r', model='m1')",
           "api_arguments": {"pretrained": "True"}, "description": "net one"},
          {"domain": "Vision", "api_name": "Net", "api_call": "torch.hub.load(repo_or_dir='r', model='m2')",
           "api_arguments": ["x"], "description": "net two"}]
  (tmp_path / "api" / "hub_api.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  train = [{"code": "{'Instruction': I need a net., 'Output': {'api_call': ...}}", "api_call": docs[1]["api_call"]},
           {"code": "{'Instruction': Unknown., 'Output': {}}", "api_call": "torch.hub.load('zzz')"}]
  ev = [{"code": "###Instruction: Which net?\n###Output: {'domain': 'Vision'}", "api_call": docs[0]["api_call"]}]
  (tmp_path / "apibench" / "hub_train.json").write_text("".join(json.dumps(d) + "\n" for d in train))
  (tmp_path / "apibench" / "hub_eval.json").write_text("".join(json.dumps(d) + "\n" for d in ev))
  ds = load_source("gorilla", tmp_path, log=False)
  assert [t.key for t in ds.corpus] == [("Net", "m1"), ("Net", "m2")]
  assert [(q.id, q.text, q.relevant) for q in ds.queries] == [("train/0", "I need a net.", (1,)),
                                                               ("eval/0", "Which net?", (0,))]
  assert ds.report.issues["relevant_not_in_corpus"] == 1
  (tmp_path / "apibench" / "hub_eval.json").write_text(json.dumps({"code": "no instruction", "api_call": "x"}))
  with pytest.raises(DataError) as e:
    load_source("gorilla", tmp_path, log=False)
  assert (e.value.record, e.value.field) == (0, "code")


def test_toolgen_names_fixture(tmp_path):
  f = tmp_path / "virtual_tokens.txt"
  f.write_text("<<Finish>>\n<<A&&x>>\n<<A&&y&&z>>\n<<A&&x>>\n")
  ds = load_source("toolgen_names", f, log=False)
  assert [t.key for t in ds.corpus] == [("A", "x"), ("A", "y&&z")]
  assert ds.report.issues["duplicate_tool_identical"] == 1 and ds.report.stats["non_tool_token"] == 1
  f.write_text("<<A&&x>>\nB&&y\n")
  with pytest.raises(DataError) as e:
    load_source("toolgen_names", f, log=False)
  assert e.value.record == 2


def bfcl_dir(tmp_path, queries, answers, cat="simple_python"):
  (tmp_path / "possible_answer").mkdir(exist_ok=True)
  (tmp_path / f"BFCL_v4_{cat}.json").write_text("".join(json.dumps(q) + "\n" for q in queries))
  (tmp_path / "possible_answer" / f"BFCL_v4_{cat}.json").write_text("".join(json.dumps(a) + "\n" for a in answers))
  return tmp_path


def fn(name, desc="d", ptype="dict"):
  return {"name": name, "description": desc, "parameters": {"type": ptype, "properties": {
      "n": {"type": "float", "description": "x"}, "xs": {"type": "array", "items": {"type": "dict", "properties": {}}}},
      "required": ["n"]}}


def test_bfcl_fixture_keys_and_bad_cases(tmp_path):
  qs = [{"id": "s_0", "question": [[{"role": "user", "content": "do f"}]], "function": [fn("f"), fn("g")]},
        {"id": "s_1", "question": [[{"role": "system", "content": "sys"}, {"role": "user", "content": "do f2"}]],
         "function": [fn("f", desc="another doc")]},
        {"id": "s_2", "question": [[{"role": "user", "content": "x"}]], "function": [fn("h")]},
        {"id": "s_3", "question": [[{"role": "user", "content": "y"}]], "function": [fn("k")]}]
  ans = [{"id": "s_0", "ground_truth": [{"g": {}}, {"f": {}}, {"g": {}}]}, {"id": "s_1", "ground_truth": [{"f": {}}]},
         {"id": "s_2", "ground_truth": [{"nope": {}}]}]
  ds = load_source("bfcl", bfcl_dir(tmp_path, qs, ans), categories=("simple_python",), log=False)
  names = [t.name for t in ds.corpus]
  assert names[1] == "g" and names[0].startswith("f#") and names[2].startswith("f#") and names[0] != names[2]
  q0 = ds.queries[0]
  assert [ds.corpus[t].api_name for t in q0.relevant] == ["g", "f"] and q0.text == "do f"
  assert ds.queries[1].text == "do f2" and ds.report.stats["system_prompt_not_in_text"] == 1
  assert ds.report.issues["relevant_not_in_candidates"] == 1
  assert ds.report.issues["query_dropped_no_relevant"] == 1
  assert ds.report.issues["query_dropped_no_answer"] == 1
  p = ds.corpus[0].parameters
  assert p["type"] == "object" and p["properties"]["n"]["type"] == "number"
  assert p["properties"]["n"]["x-source-type"] == "float" and p["properties"]["xs"]["items"]["type"] == "object"
  qs[1]["function"] = [{"description": "no name"}]
  with pytest.raises(DataError) as e:
    load_source("bfcl", bfcl_dir(tmp_path, qs, ans), categories=("simple_python",), log=False)
  assert (e.value.record, e.value.field) == (1, "function[0].name")


def test_unseen_tool_and_category_files_get_their_own_groups(tmp_path):
  d = tmp_path / "solvable_queries" / "test_instruction"
  d.mkdir(parents=True)
  (tmp_path / "solvable_queries" / "test_query_ids").mkdir()
  write(tmp_path / "solvable_queries" / "test_query_ids" / "G1_instruction.json", {"1": 0})  # ids only: ignored
  write(d / "G1_instruction.json", [record(1, [api()], [["T", "a"]])])
  write(d / "G1_tool.json", [record(2, [api(tool="U")], [["U", "a"]])])
  write(d / "G2_category.json", [record(3, [api(tool="V")], [["V", "a"]])])
  ds = load_source("stabletoolbench", tmp_path, log=False)
  assert sorted((q.id, q.group) for q in ds.queries) == [("1", "I1"), ("2", "I1-Tool"), ("3", "I2-Cat")]
  only = load_source("stabletoolbench", tmp_path, groups=("I1-Tool",), log=False)
  assert [q.id for q in only.queries] == ["2"] and len(only.corpus) == 1
