"""ToolBench raw layout on a fixture that mimics OpenBMB/ToolBench's real files: toolenv/tools/<Category>/<tool>.json
(tool_name / standardized_name / tool_description / api_list with name, description, method, parameters,
template_response), instruction G*_query.json, a DFS answer, retrieval TSVs; and ToolBench's name
standardisation."""

import csv
import json

import pytest

from toolgen_jax.data import DataError, load_source
from toolgen_jax.data._common import standardize, toolbench_function_name

TOOL_JSON = {
    "product_id": "api_1", "tool_name": "Transitaires", "title": "Transitaires", "pricing": "FREE",
    "score": {"avgServiceLevel": 100}, "home_url": "https://rapidapi.com/x/api/transitaires",
    "host": "transitaires.p.rapidapi.com", "tool_description": "Liste des transitaires",
    "standardized_name": "transitaires",
    "api_list": [
        {"name": "Transitaire", "url": "https://transitaires.p.rapidapi.com/transitaires/X",
         "description": "Récupère un transitaire donnée", "method": "GET",
         "required_parameters": [{"name": "id", "type": "STRING", "description": "", "default": "DOUANE"}],
         "optional_parameters": [], "code": "import requests", "statuscode": 200, "body": {}, "headers": {},
         "schema": {}, "template_response": {"id": "str"}},
        {"name": "Transitaires", "url": "https://transitaires.p.rapidapi.com/transitaires",
         "description": "Renvoie tous les transitaires", "method": "GET", "required_parameters": [],
         "optional_parameters": [], "code": "", "statuscode": 200, "body": {}, "headers": {}, "schema": {}},
    ]}


def answer(messages, functions):
  return {"win": True, "tree": {}, "forward_args": {}, "compare_candidates": [],
          "answer_generation": {"valid_data": True, "final_answer": "", "finish_type": "give_answer",
                                "function": functions, "chain": [], "query": "q", "train_messages": [
                                    messages[:3], messages]}}


def tsv(name, rows, root):
  with open(root / "retrieval" / "G1" / name, "w", newline="", encoding="utf-8") as f:
    csv.writer(f, delimiter="\t").writerows(rows)


@pytest.fixture
def tb(tmp_path):
  root = tmp_path / "data"
  (root / "toolenv" / "tools" / "Logistics").mkdir(parents=True)
  (root / "toolenv" / "tools" / "Logistics" / "transitaires.json").write_text(json.dumps(TOOL_JSON))
  (root / "instruction").mkdir()
  inst = [{"api_list": [{"category_name": "Logistics", "tool_name": "Transitaires", "api_name": "Transitaire",
                         "api_description": "Récupère un transitaire donnée", "required_parameters": [
                             {"name": "id", "type": "STRING", "description": "", "default": "DOUANE"}],
                         "optional_parameters": [], "method": "GET", "template_response": {"id": "str"}}],
           "query": "find agency", "relevant APIs": [["Transitaires", "Transitaire"]], "query_id": 5}]
  (root / "instruction" / "G1_query.json").write_text(json.dumps(inst))
  (root / "instruction" / "inference_query_demo.json").write_text(json.dumps([{"query": "x", "query_id": 1}]))
  (root / "answer" / "G1_answer").mkdir(parents=True)
  fns = [{"name": "transitaire_for_transitaires", "description": "...", "parameters": {}},
         {"name": "other_for_some_tool", "description": 'This is the subfunction for tool "some_tool", you can use '
                                                       'this tool.The description of this function is: "Other."',
          "parameters": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}},
         {"name": "Finish", "description": "finish", "parameters": {}}]
  msgs = [{"role": "system", "content": "You are AutoGPT"}, {"role": "user", "content": "find agency"},
          {"role": "assistant", "content": "I should look it up.",
           "function_call": {"name": "transitaire_for_transitaires", "arguments": "{\"is_id\": \"X\"}"}},
          {"role": "function", "name": "transitaire_for_transitaires", "content": "{\"response\": 1}"},
          {"role": "assistant", "content": "Thought: try other\nAction: other_for_some_tool\nAction Input: {\"a\": 1}"},
          {"role": "function", "name": "other_for_some_tool", "content": "{}"},
          {"role": "assistant", "content": None, "function_call": {"name": "Finish", "arguments": "{}"}}]
  (root / "answer" / "G1_answer" / "5_ChatGPT_DFS_woFilter_w2.json").write_text(json.dumps(answer(msgs, fns)))
  (root / "retrieval" / "G1").mkdir(parents=True)
  doc = {"category_name": "Logistics", "tool_name": "Transitaires", "api_name": "Transitaires",
         "api_description": "Renvoie tous les transitaires", "required_parameters": [], "optional_parameters": [],
         "method": "GET"}
  # Written the way ToolBench's preprocess_retriever_data.py writes them (pandas to_csv, sep='\t'): the JSON cell
  # is quoted with doubled quotes; the corpus repeats a doc once per query offering it; qrels have no header.
  tsv("corpus.tsv", [["docid", "document_content"], ["7", json.dumps(doc)], ["7", json.dumps(doc)]], root)
  tsv("test.query.txt", [["900", 'list all "agencies"\tplease'], ["900", 'list all "agencies"\tplease']], root)
  tsv("qrels.test.tsv", [["900", "0", "7", "1"], ["901", "0", "7", "1"]], root)
  return root


def test_toolbench_layout(tb):
  ds = load_source("toolbench", tb, log=False)
  keys = [t.key for t in ds.corpus]
  assert keys[:2] == [("Transitaires", "Transitaire"), ("Transitaires", "Transitaires")]
  assert ds.corpus[0].category == "Logistics" and ds.corpus[0].extra["tool_description"] == "Liste des transitaires"
  assert ds.corpus[0].parameters["required"] == ["id"]
  assert ds.report.stats["duplicate_tool_identical"] == 3  # instruction + 2 retrieval rows repeat the tool docs
  assert ds.report.stats["instruction_files_skipped"] == 1
  by_id = {q.id: q for q in ds.queries}
  assert by_id["I1/5"].relevant == (0,)
  assert by_id["retrieval/I1/900"].relevant == (1,) and by_id["retrieval/I1/900"].split == "test"
  assert by_id["retrieval/I1/900"].text == 'list all "agencies"\tplease'
  assert ds.report.issues["qrels_query_without_text"] == 1
  (t,) = ds.trajectories
  assert t.query_id == "I1/5" and t.id == "I1/5_ChatGPT_DFS_woFilter_w2"
  a = [m for m in t.messages if m.role == "assistant"]
  assert (a[0].thought, a[0].action, a[0].action_input) == ("I should look it up.", 0, "{\"is_id\": \"X\"}")
  other = ds.corpus[a[1].action]
  assert (other.tool_name, other.api_name, other.description) == ("some_tool", "other", "Other.")
  assert (a[1].thought, a[1].action_input) == ("try other", "{\"a\": 1}")
  assert ds.report.issues["tool_from_answer_function"] == 1
  assert (a[2].action, a[2].action_name) == (None, "Finish")
  assert [m.role for m in t.messages].count("observation") == 2
  assert set(t.tools) == {0, other.id}
  assert ds.cooccurrence.counts[0, other.id] == 1  # query 5's relevant tool + the tool its trajectory called


def test_toolbench_errors(tb, tmp_path):
  f = tb / "answer" / "G1_answer" / "5_ChatGPT_DFS_woFilter_w2.json"
  d = json.loads(f.read_text())
  d["answer_generation"]["train_messages"][-1][2]["role"] = "robot"
  f.write_text(json.dumps(d))
  with pytest.raises(DataError) as e:
    load_source("toolbench", tb, log=False)
  assert e.value.field.endswith("[2].role")
  with pytest.raises(DataError, match="none of"):
    load_source("toolbench", tmp_path / "data" / "toolenv" / "tools", log=False)


def test_standardize_matches_toolbench():
  assert standardize("The Cocktail DB") == "the_cocktail_db"
  assert standardize("  --Hello,  World!! ") == "hello_world"
  assert standardize("3D Models") == "get_3d_models"
  assert standardize("a^b") == "a^b"  # ToolBench's character class keeps '^' (sic)
  assert toolbench_function_name("Transitaires", "Transitaire") == "transitaire_for_transitaires"
  assert toolbench_function_name("X", "id") == "is_id_for_x"
  long = toolbench_function_name("t" * 50, "a" * 30)
  assert len(long) == 64 and long.endswith("_for_" + "t" * 50)
