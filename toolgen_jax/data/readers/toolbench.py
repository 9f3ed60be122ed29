"""OpenBMB ToolBench raw layout (`data/` or `data_example/`), every part optional but at least one present:

- `toolenv/tools/<Category>/<tool>.json`: tool docs (`tool_name`, `standardized_name`, `tool_description`,
  `api_list` of {name, description, method, required_parameters, optional_parameters, template_response});
- `instruction/G{1,2,3}_query.json`: instruction records, same format as StableToolBench (other files there,
  e.g. `inference_query_demo*.json`, have no labels and are skipped, counted in stats);
- `answer/G{1,2,3}_answer/<query_id>_*.json`: DFS answers; `answer_generation.train_messages[-1]` (the full
  conversation) becomes a Trajectory; assistant turns give thought (content) / action (function_call.name mapped
  back to a corpus tool) / action input (arguments); `Finish` -> action None, action_name 'Finish';
- `retrieval/G*/corpus.tsv` (docid, document_content JSON), `*.query.txt` (qid, query), `qrels.<split>.tsv`
  (qid, 0, docid, label);
- `test_instruction/G1_instruction.json` (I1), `G1_tool.json` (I1-Tool, unseen tools), `G1_category.json` (I1-Cat,
  unseen categories), `G2_instruction.json`, `G2_category.json`, `G3_instruction.json`: ToolBench's official test
  sets, the ones ToolGen, ToolWeaver and Toolscaler report (StableToolBench's `solvable_queries/test_instruction/`
  is read the same way when the folder holds that instead). Their queries are the `test` split, grouped I1 ..
  I2-Cat; the instruction pools' queries become `train`, minus any that is a test query (same group number and
  query id, or the same text; counted `train_query_in_test_set`), and answers of test queries are dropped
  (`trajectory_of_test_query`). `test_query_ids/` only repeats the ids and is not read.

Function names map back to tools through ToolBench's own naming (`{standardize(api)}_for_{standardized tool}`,
last 64 chars). A called function that no loaded doc explains is built into a tool from the answer's own
`function` list (tool = the standardized name in its description, counted `tool_from_answer_function`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
import re
from typing import Any, Mapping

from toolgen_jax.data._common import (CorpusBuilder, load_json, optional_str, parse_json, read_text, require,
                                      require_tools, standardize, toolbench_api_tool, toolbench_function_name,
                                      toolbench_parameters, value_type)
from toolgen_jax.data.dataset import ToolDataset, finalize
from toolgen_jax.data.readers.stabletoolbench import group_of, read_instruction_records
from toolgen_jax.data.records import DataError, Message, Query, Tool, Trajectory
from toolgen_jax.data.report import LoadReport

SOURCE = "toolbench"
FINISH = "Finish"
_SUBFUNCTION = re.compile(r'subfunction for tool "(?P<tool>[^"]*)"')
_DESC = re.compile(r'The description of this function is: "(?P<desc>.*)"\s*$', re.S)
_TEST_FILE = re.compile(r"^G\d+_(instruction|tool|category)\.json$")
_REACT = re.compile(r"^(?:Thought:\s*(?P<thought>.*?)\s*)?Action:\s*(?P<action>.*?)\s*\nAction Input:\s*(?P<input>.*)$",
                    re.S)


def _read_tool_docs(tools_dir: pathlib.Path, builder: CorpusBuilder, report: LoadReport,
                    std_names: dict[int, str]) -> None:
  for f in sorted(tools_dir.glob("*/*.json")):
    rec = load_json(f, report)
    report.stat("tool_files")
    tool_name = require(rec, "tool_name", f, None, str)
    std = optional_str(rec, "standardized_name") or standardize(tool_name)
    for j, api in enumerate(require(rec, "api_list", f, None, list)):
      name = require(api, "name", f, None, str, f"api_list[{j}].")
      where = f"{f}.api_list[{j}]"
      tool = Tool(id=-1, tool_name=tool_name, api_name=name, category=f.parent.name,
                  description=optional_str(api, "description").strip(),
                  parameters=toolbench_parameters(api.get("required_parameters"), api.get("optional_parameters"),
                                                  where, report),
                  method=optional_str(api, "method"), template_response=api.get("template_response"), source=SOURCE,
                  extra={"tool_description": optional_str(rec, "tool_description"), "standardized_name": std})
      std_names[builder.add(tool, where=where)] = std


def _tsv_rows(path: pathlib.Path, report: LoadReport) -> list[tuple[int, list[str]]]:
  """(record number, cells) of a TSV written by pandas `to_csv(sep='\\t')` (ToolBench's
  preprocess_retriever_data.py): cells holding quotes, tabs or newlines are quoted with doubled quotes."""
  csv.field_size_limit(2**31 - 1)
  rows = csv.reader(io.StringIO(read_text(path, report), newline=""), delimiter="\t")
  return [(i, r) for i, r in enumerate(rows, 1) if r and any(c.strip() for c in r)]


def _read_retrieval(rdir: pathlib.Path, builder: CorpusBuilder, report: LoadReport) -> list[Query]:
  """ToolBench's retrieval files in one folder (data/retrieval/G1 ...): corpus.tsv (docid, document_content =
  the api_list entry as JSON; header row), {train,test}.query.txt (qid, query text; no header; a qid repeats once
  per relevant API), qrels.{train,test}.tsv (qid, 0, docid, 1; no header)."""
  group = group_of(rdir) if re.search(r"G\d", rdir.name) else ""
  doc_to_tool: dict[str, int] = {}
  cpath = rdir / "corpus.tsv"
  if cpath.exists():
    for rec, cols in _tsv_rows(cpath, report):
      if rec == 1 and cols[0].strip().lower() == "docid":
        continue
      if len(cols) != 2:
        raise DataError(str(cpath), rec, None, "expected 'docid<TAB>document_content'")
      try:
        doc = parse_json(cols[1], cpath, rec)
      except DataError as e:
        raise DataError(str(cpath), rec, "document_content", str(e).split(": ", 1)[-1]) from None
      tid = builder.add(toolbench_api_tool(doc, cpath, rec, "", report, SOURCE), where=f"{cpath.name}:{rec}")
      did = cols[0].strip()
      if doc_to_tool.setdefault(did, tid) != tid:
        raise DataError(str(cpath), rec, "docid", f"docid {did} names two different APIs")
  texts: dict[str, str] = {}
  for qf in sorted(rdir.glob("*.query.txt")):
    for rec, cols in _tsv_rows(qf, report):
      if len(cols) != 2:
        raise DataError(str(qf), rec, None, "expected 'qid<TAB>query_text'")
      texts[cols[0].strip()] = cols[1].strip()
  queries = []
  for qrels in sorted(rdir.glob("qrels.*.tsv")):
    split = qrels.name.split(".")[1]
    rel: dict[str, list[int]] = {}
    for rec, cols in _tsv_rows(qrels, report):
      if rec == 1 and not cols[-1].strip().lstrip("-").replace(".", "", 1).isdigit():
        continue  # a header row
      if len(cols) not in (3, 4):
        raise DataError(str(qrels), rec, None, "expected 'qid<TAB>0<TAB>docid<TAB>label'")
      qid, did, label = cols[0].strip(), cols[-2].strip(), cols[-1].strip()
      try:
        if float(label) <= 0:
          continue
      except ValueError:
        raise DataError(str(qrels), rec, "label", f"not a number: {label!r}") from None
      if did not in doc_to_tool:
        report.count("relevant_not_in_corpus", f"{qrels.name}: {qid} -> {did}")
        continue
      lst = rel.setdefault(qid, [])
      if doc_to_tool[did] not in lst:
        lst.append(doc_to_tool[did])
    for qid, tids in rel.items():
      if qid not in texts:
        report.count("qrels_query_without_text", f"{qrels.name}: {qid}")
        continue
      queries.append(Query(id=f"retrieval/{group or rdir.name}/{qid}", text=texts[qid], relevant=tuple(tids),
                           group=group, split=split))
  return queries


def _test_key(query_id: str) -> tuple[str, str]:
  """('I1', '588') for 'I1/588', 'I1-Tool/588' and answer ids 'I1/588': ToolBench numbers queries per group number,
  and I1-Tool / I1-Cat queries come from the G1 pool."""
  group, _, raw = query_id.partition("/")
  return group.split("-")[0], raw


def _read_test_sets(root: pathlib.Path, builder: CorpusBuilder, report: LoadReport) -> list[Query] | None:
  """The official test sets' queries (split 'test'), or None when the folder has none."""
  tdir = next((d for d in (root / "test_instruction", root / "solvable_queries" / "test_instruction")
               if d.is_dir()), None)
  if tdir is None:
    return None
  tests: list[Query] = []
  seen: set[str] = set()
  for f in sorted(tdir.glob("*.json")):
    if not _TEST_FILE.match(f.name):
      report.stat("test_instruction_files_skipped")
      continue
    tests += read_instruction_records(f, builder, report, SOURCE, "test", seen, group_ids=True)
  report.stat("official_test_queries", len(tests))
  return tests


def _hold_out(queries: list[Query], trajectories: list[Trajectory], tests: list[Query], report: LoadReport):
  """Training queries and answers without the test queries (by group number and id, or by text); the pools'
  unsplit queries become 'train'."""
  keys = {_test_key(q.id) for q in tests}
  texts = {" ".join(q.text.lower().split()) for q in tests}
  kept = []
  for q in queries:
    if (q.split in ("", "train") and _test_key(q.id) in keys) or " ".join(q.text.lower().split()) in texts:
      report.count("train_query_in_test_set", q.id)
      continue
    kept.append(dataclasses.replace(q, split="train") if not q.split else q)
  trajs = []
  for t in trajectories:
    if _test_key(t.query_id) in keys:
      report.count("trajectory_of_test_query", t.id)
      continue
    trajs.append(t)
  return kept, trajs


def _function_tool(fn: Mapping[str, Any], path, report: LoadReport, field: str) -> Tool:
  """A Tool rebuilt from an answer file's OpenAI function entry (no loaded doc explains the name)."""
  name = fn["name"]
  desc = optional_str(fn, "description")
  m = _SUBFUNCTION.search(desc)
  std_tool = m["tool"] if m else ""
  api = name[: -len(f"_for_{std_tool}")] if std_tool and name.endswith(f"_for_{std_tool}") else name
  d = _DESC.search(desc)
  params = fn.get("parameters")
  if params is None:
    params = {}
  if not isinstance(params, Mapping):
    raise DataError(str(path), None, f"{field}.parameters", f"expected a JSON schema object, got {value_type(params)}")
  props, req = params.get("properties") or {}, params.get("required") or []
  if not isinstance(props, Mapping):
    raise DataError(str(path), None, f"{field}.parameters.properties", f"expected an object, got {value_type(props)}")
  if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
    raise DataError(str(path), None, f"{field}.parameters.required", "expected a list of parameter names")
  schema = {"type": "object", "properties": dict(props), "required": list(req)}
  report.count("tool_from_answer_function", f"{name} in {path.name}")
  return Tool(id=-1, tool_name=std_tool or name, api_name=api, description=(d["desc"] if d else desc).strip(),
              parameters=schema, source=SOURCE, extra={"function_name": name, "standardized_name": std_tool})


def _content(m: Mapping[str, Any], path, field: str) -> str:
  """A message's `content`: a string, or null/absent for ''; any other type is a DataError."""
  content = m.get("content")
  if content is None:
    return ""
  if not isinstance(content, str):
    raise DataError(str(path), None, field + "content", f"expected string, got {value_type(content)}")
  return content


def _assistant(m: Mapping[str, Any], fn_to_tool: dict[str, int], where: str, report: LoadReport, path,
               field: str) -> Message:
  content = _content(m, path, field)
  call = m.get("function_call")
  if call is not None and not (isinstance(call, Mapping) and isinstance(call.get("name"), str)):
    raise DataError(str(path), None, field + "function_call", "expected {name, arguments}")
  if call is not None:
    name, args, thought = call["name"], call.get("arguments"), content.strip() or None
  else:
    r = _REACT.match(content.strip())
    if r is None:
      return Message(role="assistant", content=content, thought=content.strip() or None)
    name, args, thought = r["action"].strip(), r["input"].strip(), (r["thought"] or "").strip() or None
  if args is not None and not isinstance(args, str):
    args = json.dumps(args, ensure_ascii=False)
  action = None
  if name != FINISH:
    action = fn_to_tool.get(name)
    if action is None:
      report.count("action_unresolved", f"{name} at {where}")
  return Message(role="assistant", content=content, thought=thought, action=action, action_name=name,
                 action_input=args)


def _read_answer(f: pathlib.Path, builder: CorpusBuilder, fn_to_tool: dict[str, int], report: LoadReport,
                 group: str) -> Trajectory | None:
  rec = load_json(f, report)
  ag = require(rec, "answer_generation", f, None, Mapping)
  functions = require(ag, "function", f, None, list, "answer_generation.")
  tm = ag.get("train_messages")
  if not tm and ag.get("valid_data", True):
    raise DataError(str(f), None, "answer_generation.train_messages", "missing required field")
  if not tm:  # ToolBench leaves the messages out of answers it marked valid_data=false
    report.count("answer_without_messages", f"{f.name} (valid_data={ag.get('valid_data')})")
    return None
  if not isinstance(tm, list) or not isinstance(tm[-1], list):
    raise DataError(str(f), None, "answer_generation.train_messages", "expected a list of message lists")
  if not tm[-1]:
    report.count("empty_trajectory", f.name)
    return None
  offered: list[int] = []
  for j, fn in enumerate(functions):
    name = require(fn, "name", f, None, str, f"answer_generation.function[{j}].")
    if name == FINISH:
      continue
    tid = fn_to_tool.get(name)
    if tid is None:
      tid = builder.add(_function_tool(fn, f, report, f"answer_generation.function[{j}]"), where=f.name)
      fn_to_tool[name] = tid
    if tid not in offered:
      offered.append(tid)
  msgs = []
  for k, m in enumerate(tm[-1]):
    field = f"answer_generation.train_messages[-1][{k}]."
    role = require(m, "role", f, None, str, field)
    where = f"{f.name} message {k}"
    if role == "assistant":
      msgs.append(_assistant(m, fn_to_tool, where, report, f, field))
    elif role in ("function", "tool", "observation"):
      name = m.get("name")
      msgs.append(Message(role="observation", content=optional_str(m, "content"),
                          action_name=None if name is None else optional_str(m, "name")))
    elif role in ("system", "user"):
      msgs.append(Message(role=role, content=_content(m, f, field)))
    else:
      raise DataError(str(f), None, f"answer_generation.train_messages[-1][{k}].role", f"unknown role {role!r}")
  qid = f"{group}/{f.name.split('_', 1)[0]}"  # answer files are named <query_id>_<method>.json per group
  if not ag.get("valid_data", True):
    report.stat("answers_marked_invalid")
  return Trajectory(id=f"{group}/{f.stem}", query_id=qid, messages=tuple(msgs), tools=tuple(offered))


def read(path: str | pathlib.Path, *, log: bool = True) -> ToolDataset:
  """Reads a ToolBench `data/` (or `data_example/`) folder; parts that are absent are skipped (listed in stats)."""
  root = pathlib.Path(path)
  if not root.is_dir():
    raise DataError(str(root), None, None, "ToolBench reader expects the data folder")
  parts = ("toolenv", "instruction", "answer", "retrieval", "test_instruction")
  if not any((root / p).is_dir() for p in parts):
    sub = root / "data_example" if (root / "data_example").is_dir() else root / "data"
    if sub.is_dir():
      root = sub
  report = LoadReport(source=SOURCE, path=str(root))
  builder = CorpusBuilder(report)
  std_names: dict[int, str] = {}
  found = False
  if (root / "toolenv" / "tools").is_dir():
    found = True
    _read_tool_docs(root / "toolenv" / "tools", builder, report, std_names)
  queries: list[Query] = []
  seen: set[str] = set()
  if (root / "instruction").is_dir():
    found = True
    for f in sorted((root / "instruction").glob("*.json")):
      if not re.match(r"G\d+_query\.json$", f.name):
        report.stat("instruction_files_skipped")
        continue
      queries += read_instruction_records(f, builder, report, SOURCE, "", seen, group_ids=True)
  tests = _read_test_sets(root, builder, report)
  found = found or tests is not None
  if (root / "retrieval").is_dir():
    found = True
    dirs = [d for d in sorted((root / "retrieval").iterdir()) if d.is_dir()] or [root / "retrieval"]
    for d in dirs:
      queries += _read_retrieval(d, builder, report)
  fn_to_tool: dict[str, int] = {}
  for t in builder.corpus:
    fname = toolbench_function_name(t.tool_name, t.api_name, std_names.get(t.id))
    if fname in fn_to_tool and fn_to_tool[fname] != t.id:
      report.count("function_name_ambiguous", fname)
      continue
    fn_to_tool[fname] = t.id
  trajectories: list[Trajectory] = []
  if (root / "answer").is_dir():
    found = True
    for gdir in sorted(p for p in (root / "answer").iterdir() if p.is_dir()):
      group = group_of(gdir.name.replace("_answer", ""))
      for f in sorted(gdir.glob("*.json")):
        report.stat("answer_files")
        t = _read_answer(f, builder, fn_to_tool, report, group)
        if t is not None:
          trajectories.append(t)
  if not found:
    raise DataError(str(root), None, None,
                    "none of toolenv/tools, instruction, test_instruction, retrieval, answer is here")
  if tests is not None:
    queries, trajectories = _hold_out(queries, trajectories, tests, report)
    queries += tests
  require_tools(builder.corpus, root)
  qids = {q.id for q in queries}
  missing = [t.query_id for t in trajectories if t.query_id not in qids]
  if missing:
    report.stat("trajectories_of_unloaded_queries", len(missing))
  report.stat("categories_in_records", len(builder.categories_seen))
  return finalize(builder.corpus, queries, trajectories, report, SOURCE, log=log)
