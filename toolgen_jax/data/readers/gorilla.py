"""Gorilla APIBench: `api/<hub>_api.jsonl` (one API doc per line) and `apibench/<hub>_train.json` /
`<hub>_eval.json` (JSON-lines of instruction -> api_call examples).

Tools are the distinct `api_call`s. Key: tool_name = the doc's `api_name` (e.g. 'MiDaS'), api_name = the
`model='...'` argument of the call (e.g. 'DPT_Hybrid'), or the whole api_call when it has none or when that pair
is not unique; category = `domain`; the call itself and the other doc fields go to `Tool.extra`.
Queries: text = the instruction inside `code` (train: `{'Instruction': ..., 'Output': ...}`; eval:
`###Instruction: ...\n###Output: ...`), relevant = the example's `api_call` matched to a doc (falling back to
`api_data.api_call`, counted `api_call_resolved_from_api_data`, or `api_call_not_a_string`), split and group =
train / eval; id = `<split>/<index>`.
"""

from __future__ import annotations

import pathlib
import re

from toolgen_jax.data._common import (CorpusBuilder, iter_jsonl_text, load_json_or_jsonl, optional_str, read_text,
                                      require, require_tools)
from toolgen_jax.data.dataset import ToolDataset, finalize
from toolgen_jax.data.records import DataError, Query, Tool
from toolgen_jax.data.report import LoadReport

SOURCE = "gorilla"
_MODEL = re.compile(r"model\s*=\s*['\"]([^'\"]+)['\"]")
_INSTR = (re.compile(r"^\s*\{\s*'Instruction':\s*(.*?),\s*'Output':", re.S),
          re.compile(r"^\s*###\s*Instruction:\s*(.*?)\n\s*###\s*Output:", re.S))


def instruction_of(code: str) -> str | None:
  """The user instruction in an APIBench `code` string, or None when neither train nor eval form matches."""
  for pat in _INSTR:
    m = pat.match(code)
    if m:
      return m.group(1).strip()
  return None


def _parameters(args) -> dict:
  if isinstance(args, dict):
    props = {str(k): {"description": str(v)} for k, v in args.items()}
  elif isinstance(args, list):
    props = {str(a): {} for a in args if isinstance(a, (str, int, float))}
  else:
    props = {}
  return {"type": "object", "properties": props, "required": []}


def _files(root: pathlib.Path) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
  if root.is_file():
    return [root], []
  for base in (root, root / "data"):
    apis = sorted((base / "api").glob("*_api.jsonl"))
    if apis:
      ex = sorted((base / "apibench").glob("*_train.json")) + sorted((base / "apibench").glob("*_eval.json"))
      return apis, ex
  raise DataError(str(root), None, None, "no api/*_api.jsonl below this folder (Gorilla APIBench layout)")


def read(path: str | pathlib.Path, *, log: bool = True) -> ToolDataset:
  """Reads a Gorilla `data/` folder (or one `*_api.jsonl`)."""
  root = pathlib.Path(path)
  report = LoadReport(source=SOURCE, path=str(root))
  api_files, example_files = _files(root)
  rows = []
  for f in api_files:
    report.stat("files")
    for i, rec in iter_jsonl_text(read_text(f, report), f):
      rows.append((f, i, rec, require(rec, "api_call", f, i, str), require(rec, "api_name", f, i, str)))
  pair_calls: dict[tuple[str, str], set[str]] = {}
  for _, _, _, call, name in rows:
    m = _MODEL.search(call)
    pair_calls.setdefault((name, m.group(1) if m else call), set()).add(call)
  builder = CorpusBuilder(report)
  by_call: dict[str, int] = {}
  for f, i, rec, call, name in rows:
    m = _MODEL.search(call)
    api = m.group(1) if m and len(pair_calls[(name, m.group(1))]) == 1 else call
    extra = {"api_call": call, "framework": optional_str(rec, "framework"),
             "functionality": optional_str(rec, "functionality"), "api_arguments": rec.get("api_arguments")}
    tool = Tool(id=-1, tool_name=name, api_name=api, category=optional_str(rec, "domain"),
                description=optional_str(rec, "description").strip(), parameters=_parameters(rec.get("api_arguments")),
                source=SOURCE, extra=extra)
    tid = builder.add(tool, where=f"{f.name}[{i}]")
    if call in by_call and by_call[call] != tid:
      report.count("api_call_with_two_keys", call)
    by_call.setdefault(call, tid)

  queries: list[Query] = []
  for f in example_files:
    split = "train" if f.stem.endswith("_train") else "eval"
    report.stat("files")
    for i, rec in enumerate(load_json_or_jsonl(f, report)):
      code = require(rec, "code", f, i, str)
      text = instruction_of(code)
      if text is None:
        raise DataError(str(f), i, "code", "no '###Instruction:' or {'Instruction': ...} text in the example")
      call = rec.get("api_call")
      tid = by_call.get(call) if isinstance(call, str) else None
      data_call = rec["api_data"].get("api_call") if isinstance(rec.get("api_data"), dict) else None
      if tid is None and isinstance(data_call, str):
        tid = by_call.get(data_call)
        if tid is not None and call is not None:  # the example's own call is wrong (or not text): say so
          kind = "api_call_not_a_string" if not isinstance(call, str) else "api_call_resolved_from_api_data"
          report.count(kind, f"{f.name}[{i}]: {str(call)[:80]}")
      if tid is None:
        if call is None and "api_data" not in rec:
          raise DataError(str(f), i, "api_call", "missing required field")
        report.count("relevant_not_in_corpus", f"{f.name}[{i}]: {str(call)[:80]}")
        report.count("query_dropped_no_relevant", f"{f.name}[{i}]")
        continue
      if not text:
        report.count("empty_query_text", f"{f.name}[{i}]")
      queries.append(Query(id=f"{split}/{i}", text=text, relevant=(tid,), group=split, split=split))
  require_tools(builder.corpus, root)
  return finalize(builder.corpus, queries, [], report, SOURCE, log=log)
