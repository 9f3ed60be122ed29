"""BFCL v4 single-turn categories (the embedded default corpus): `BFCL_v4_<category>.json` (JSON-lines of `id`,
`question` = [[{role, content}, ...]], `function` = OpenAI-style docs) + `possible_answer/BFCL_v4_<category>.json`
(`ground_truth` = [{function_name: {arg: [allowed values]}}, ...]).

Tool keys. BFCL functions are identified by (name, full doc): the same name appears with different docs across
queries (2,555 docs, 1,437 names). A name with one doc is keyed (name, name) and displayed `name`; a name with
several docs gets `tool_name = name#<first 6 hex of sha1(canonical doc JSON)>` (longer on a hash clash),
`api_name = name`, displayed `name#3f2a1c` (see `Tool.name`). Keys are therefore stable for a given set of
categories (loading a subset can turn `name#hash` back into `name`).

Queries: text = the user turns of the first (only) turn joined by newlines (system prompts of 49 live queries are
not part of the retrieval text; counted in stats); candidates = the query's own function list; relevant = the
ground-truth function names resolved against that list, in answer order, repeats (parallel calls) once;
group = the category; split = '' (BFCL has no train split: use `split_queries`).
Types: BFCL's 'dict' -> 'object', 'float'/'double' -> 'number', Java/JS names (String, HashMap, ArrayList, long,
char, any, ...) -> their JSON-schema type, the source name kept as `x-source-type`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Mapping, Sequence

from toolgen_jax import assets
from toolgen_jax.data._common import (CorpusBuilder, iter_jsonl_text, json_type, optional_str, read_text, require,
                                      require_tools, value_type)
from toolgen_jax.data.dataset import ToolDataset, finalize
from toolgen_jax.data.records import DataError, Query, Tool
from toolgen_jax.data.report import LoadReport

SOURCE = "bfcl"
SINGLE_TURN = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
               "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
_LANG = {"simple_java": "java", "simple_javascript": "javascript"}
_SCHEMA_CHILDREN = ("items", "additionalProperties")


def to_json_schema(node: Any, report: LoadReport | None = None) -> Any:
  """BFCL parameter schema -> JSON schema (recursively through properties / items / additionalProperties)."""
  if not isinstance(node, Mapping):
    return node
  out = dict(node)
  if "type" in node and isinstance(node["type"], str):
    t = json_type(node["type"], report)
    if t is None:
      out.pop("type")
    else:
      out["type"] = t
      if node["type"] != t and not (node["type"] == "dict" and t == "object"):
        out["x-source-type"] = node["type"]
  if isinstance(node.get("properties"), Mapping):
    out["properties"] = {k: to_json_schema(v, report) for k, v in node["properties"].items()}
  for k in _SCHEMA_CHILDREN:
    if isinstance(node.get(k), Mapping):
      out[k] = to_json_schema(node[k], report)
  return out


def canonical_doc(fn: Mapping[str, Any]) -> str:
  return json.dumps(fn, sort_keys=True, ensure_ascii=False)


def _validate_question(turns: list, path: pathlib.Path, i: int) -> None:
  """`question` = [[{role: str, content: str}, ...], ...]: anything else names the record and the message."""
  if not turns or not isinstance(turns[0], list):
    raise DataError(str(path), i, "question", "expected [[{role, content}, ...]]")
  for k, m in enumerate(turns[0]):
    require(m, "role", path, i, str, f"question[0][{k}].")
    if m.get("content") is not None and not isinstance(m["content"], str):
      raise DataError(str(path), i, f"question[0][{k}].content", f"expected string, got {value_type(m['content'])}")
  if not any(m["role"] == "user" for m in turns[0]):
    raise DataError(str(path), i, "question", "no user message in the first turn")


def _read_jsonl(path: pathlib.Path, report: LoadReport) -> list[Any]:
  if not path.exists():
    raise DataError(str(path), None, None, "BFCL file is missing")
  return [r for _, r in iter_jsonl_text(read_text(path, report), path)]


def read(path: str | pathlib.Path | None = None, *, categories: Sequence[str] = SINGLE_TURN,
         log: bool = True) -> ToolDataset:
  """Reads BFCL from `path` (the folder with BFCL_v4_*.json and possible_answer/); None = the embedded default."""
  root = pathlib.Path(path) if path else assets.bfcl_data_dir()
  if root.is_file():
    root = root.parent
  report = LoadReport(source=SOURCE, path=str(root))
  raw: list[tuple[str, pathlib.Path, list[Any], dict[str, Any]]] = []
  for cat in categories:
    qpath = root / f"BFCL_v4_{cat}.json"
    apath = root / "possible_answer" / f"BFCL_v4_{cat}.json"
    qs = _read_jsonl(qpath, report)
    answers: dict[str, Any] = {}
    for i, a in enumerate(_read_jsonl(apath, report)):
      aid, truth = require(a, "id", apath, i, str), require(a, "ground_truth", apath, i, list)
      if aid in answers:
        report.count("duplicate_answer_id", f"{apath.name}: {aid}")  # the first answer is kept
        continue
      answers[aid] = truth
    raw.append((cat, qpath, qs, answers))
    report.stat("files", 2)

  # Pass 1: validate records, collect the distinct docs per name. A repeated query id keeps its first record.
  docs_of: dict[str, dict[str, Mapping[str, Any]]] = {}
  seen_ids: set[str] = set()
  duplicates: set[tuple[str, int]] = set()
  for cat, qpath, qs, _ in raw:
    for i, q in enumerate(qs):
      qid = require(q, "id", qpath, i, str)
      _validate_question(require(q, "question", qpath, i, list), qpath, i)
      fns = require(q, "function", qpath, i, list)
      for j, fn in enumerate(fns):
        require(fn, "name", qpath, i, str, f"function[{j}].")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
          raise DataError(str(qpath), i, f"function[{j}].parameters",
                          f"expected a JSON schema object, got {value_type(params)}")
      if qid in seen_ids:
        report.count("duplicate_query_id", f"{qpath.name}[{i}]: {qid}")
        duplicates.add((cat, i))
        continue
      seen_ids.add(qid)
      for fn in fns:
        docs_of.setdefault(fn["name"], {}).setdefault(canonical_doc(fn), fn)
  keys: dict[str, tuple[str, str]] = {}
  for name, docs in docs_of.items():
    if len(docs) == 1:
      keys[next(iter(docs))] = (name, name)
      continue
    hashes = {d: hashlib.sha1(d.encode("utf-8")).hexdigest() for d in docs}
    n = 6
    while len({h[:n] for h in hashes.values()}) < len(hashes):
      n += 2
    for d, h in hashes.items():
      keys[d] = (f"{name}#{h[:n]}", name)
  report.stat("names_with_several_docs", sum(len(d) > 1 for d in docs_of.values()))

  builder = CorpusBuilder(report)
  doc_ids: dict[str, int] = {}  # canonical doc -> tool id (a doc repeated across queries is converted once)
  queries: list[Query] = []
  for cat, qpath, qs, answers in raw:
    for i, q in enumerate(qs):
      if (cat, i) in duplicates:
        continue
      qid = q["id"]
      candidates: list[int] = []
      by_name: dict[str, int] = {}
      for j, fn in enumerate(q["function"]):
        doc = canonical_doc(fn)
        tid = doc_ids.get(doc)
        if tid is None:
          tool_name, api_name = keys[doc]
          params = fn.get("parameters") or {"type": "object", "properties": {}, "required": []}
          tool = Tool(id=-1, tool_name=tool_name, api_name=api_name, category=_LANG.get(cat, "python"),
                      description=optional_str(fn, "description").strip(),
                      parameters=to_json_schema(params, report), source=SOURCE, extra={"bfcl_category": cat})
          tid = doc_ids[doc] = builder.add(tool, where=f"{qpath.name}[{i}]")
        else:
          report.stat("duplicate_tool_identical")
        if fn["name"] in by_name:
          report.count("duplicate_function_name_in_query", f"{qid}: {fn['name']}")
        by_name.setdefault(fn["name"], tid)
        if tid not in candidates:
          candidates.append(tid)
      turns = q["question"]
      if len(turns) > 1:
        report.count("extra_turns_ignored", qid)
      users = [m.get("content") or "" for m in turns[0] if m["role"] == "user"]
      if any(m["role"] == "system" for m in turns[0]):
        report.stat("system_prompt_not_in_text")
      if qid not in answers:
        report.count("query_dropped_no_answer", qid)
        continue
      relevant: list[int] = []
      for j, call in enumerate(answers[qid]):
        if not isinstance(call, Mapping) or len(call) != 1:
          raise DataError(str(qpath.parent / "possible_answer" / qpath.name), qid, f"ground_truth[{j}]",
                          "expected {function_name: {args}}")
        fname = next(iter(call))
        tid = by_name.get(fname)
        if tid is None:
          report.count("relevant_not_in_candidates", f"{qid}: {fname}")
          continue
        if tid not in relevant:
          relevant.append(tid)
      if not relevant:
        report.count("query_dropped_no_relevant", qid)
        continue
      queries.append(Query(id=qid, text="\n".join(u.strip() for u in users), relevant=tuple(relevant),
                           group=cat, split="", candidates=tuple(candidates)))
    extra_answers = set(answers) - {q.get("id") for q in qs}
    if extra_answers:
      report.count("answer_without_query", sorted(extra_answers)[0], n=len(extra_answers))
  require_tools(builder.corpus, root)
  report.stat("distinct_names", len({t.api_name for t in builder.corpus}))
  return finalize(builder.corpus, queries, [], report, SOURCE, log=log)
