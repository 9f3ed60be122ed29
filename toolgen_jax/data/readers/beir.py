"""BEIR-style retrieval sets as published by COLT: `corpus.jsonl`, `queries.jsonl` (optional), `qrels/<split>.tsv`.

COLT's corpus `text` packs a ToolBench API doc into one string (`category_name:..., tool_name:..., api_name:...,
api_description:..., required_params: [...], optional_params: [...], return_schema: ...`); it is parsed back into
Tool fields. A text without that structure becomes a tool named by its `_id` (counted `corpus_text_unstructured`).

Queries come from qrels rows with score > 0, in file order, split = the qrels file stem. A qrels query id with no
text (COLT ToolBench-G3 has no queries.jsonl) is never invented into a query: its API set is kept as a co-usage
group for the co-occurrence graph only, counted in the stats (`qrels_groups_without_text`).
"""

from __future__ import annotations

import json
import pathlib
import re

from toolgen_jax.data._common import (MAX_JSON_DEPTH, CorpusBuilder, iter_jsonl_text, json_depth_exceeds, read_text,
                                      require, require_tools, toolbench_parameters)
from toolgen_jax.data.dataset import ToolDataset, finalize
from toolgen_jax.data.records import DataError, Query, Tool
from toolgen_jax.data.report import LoadReport

SOURCE = "beir"
_HEAD = re.compile(r"^category_name:(?P<category>.*?), tool_name:(?P<tool>.*?), api_name:(?P<api>.*?), "
                   r"api_description:(?P<desc>.*?), required_params:\s*", re.S)
_DECODER = json.JSONDecoder()


def parse_colt_text(text: str) -> dict | None:
  """COLT corpus text -> {category, tool_name, api_name, description, required, optional, return_schema}; None
  when the text does not have COLT's structure."""
  m = _HEAD.match(text)
  if m is None:
    return None
  pos = m.end()
  try:
    required, pos = _DECODER.raw_decode(text, pos)
    rest = text[pos:]
    m2 = re.match(r",\s*optional_params:\s*", rest)
    if m2 is None:
      return None
    pos += m2.end()
    optional, pos = _DECODER.raw_decode(text, pos)
  except (ValueError, RecursionError):  # JSONDecodeError, an over-long int literal, deep nesting
    return None
  if json_depth_exceeds([required, optional], MAX_JSON_DEPTH):
    return None
  rest = text[pos:]
  m3 = re.match(r",\s*return_schema:\s*", rest)
  schema: object = None
  if m3 is not None:
    raw = rest[m3.end():].strip()
    try:
      schema = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
      schema = raw
    if json_depth_exceeds(schema, MAX_JSON_DEPTH):
      schema = raw
  elif rest.strip():
    return None
  return {"category": m["category"].strip(), "tool_name": m["tool"].strip(), "api_name": m["api"].strip(),
          "description": m["desc"].strip(), "required": required, "optional": optional, "return_schema": schema}


def _read_qrels(path: pathlib.Path, report: LoadReport) -> list[tuple[str, str]]:
  """(query id, corpus id) rows with score > 0, in file order; a header row is skipped."""
  rows = []
  for lineno, line in enumerate(read_text(path, report).splitlines(), 1):
    if not line.strip():
      continue
    cols = line.split("\t")
    if lineno == 1 and cols[0].strip().lower() in ("query-id", "query_id", "qid"):
      continue
    if len(cols) == 4:  # TREC style: qid, 0, docid, score
      cols = [cols[0], cols[2], cols[3]]
    if len(cols) != 3:
      raise DataError(str(path), lineno, None, f"expected 'query-id<TAB>corpus-id<TAB>score', got {line!r}")
    try:
      score = float(cols[2])
    except ValueError:
      raise DataError(str(path), lineno, "score", f"not a number: {cols[2]!r}") from None
    if score <= 0:
      report.stat("qrels_rows_nonpositive")
      continue
    rows.append((cols[0].strip(), cols[1].strip()))
  return rows


def read(path: str | pathlib.Path, *, log: bool = True) -> ToolDataset:
  """Reads a BEIR/COLT folder (the one holding corpus.jsonl)."""
  root = pathlib.Path(path)
  if root.is_file():
    root = root.parent
  report = LoadReport(source=SOURCE, path=str(root))
  cpath = root / "corpus.jsonl"
  if not cpath.exists():
    raise DataError(str(cpath), None, None, "BEIR folder has no corpus.jsonl")
  builder = CorpusBuilder(report)
  doc_to_tool: dict[str, int] = {}
  for i, rec in iter_jsonl_text(read_text(cpath, report), cpath):
    did = str(require(rec, "_id", cpath, i, (str, int)))
    text = require(rec, "text", cpath, i, str)
    parsed = parse_colt_text(text)
    if parsed is None:
      report.count("corpus_text_unstructured", f"_id {did}")
      title = rec.get("title") or did
      tool = Tool(id=-1, tool_name=title if isinstance(title, str) else json.dumps(title), api_name=did,
                  description=text.strip(), source=SOURCE,
                  extra={"corpus_id": did})
    else:
      tool = Tool(id=-1, tool_name=parsed["tool_name"], api_name=parsed["api_name"], category=parsed["category"],
                  description=parsed["description"],
                  parameters=toolbench_parameters(parsed["required"], parsed["optional"], f"{cpath}[{i}]", report),
                  template_response=parsed["return_schema"], source=SOURCE, extra={"corpus_id": did})
    if did in doc_to_tool:
      raise DataError(str(cpath), i, "_id", f"duplicate corpus id {did!r}")
    doc_to_tool[did] = builder.add(tool, where=f"corpus _id {did}")

  texts: dict[str, str] | None = None
  qpath = root / "queries.jsonl"
  if qpath.exists():
    texts = {}
    for i, rec in iter_jsonl_text(read_text(qpath, report), qpath):
      qid = str(require(rec, "_id", qpath, i, (str, int)))
      if qid in texts:
        report.count("duplicate_query_id", qid)
        continue
      texts[qid] = require(rec, "text", qpath, i, str)
  else:
    report.stat("no_queries_file")

  qfiles = sorted((root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
  if not qfiles:
    report.count("no_qrels", str(root / "qrels"))
  queries: list[Query] = []
  groups: list[list[int]] = []
  used: set[str] = set()
  for qf in qfiles:
    split = qf.stem
    rel: dict[str, list[int]] = {}
    for qid, did in _read_qrels(qf, report):
      tid = doc_to_tool.get(did)
      if tid is None:
        report.count("relevant_not_in_corpus", f"{qf.name}: query {qid} -> corpus-id {did}")
        continue
      lst = rel.setdefault(qid, [])
      if tid in lst:
        report.stat("duplicate_relevant")
      else:
        lst.append(tid)
    for qid, tids in rel.items():
      if not tids:
        continue
      if texts is None or qid not in texts:
        groups.append(tids)
        if texts is not None:
          report.count("qrels_query_without_text", f"{qf.name}: {qid}")
        else:
          report.stat(f"qrels_groups_without_text.{split}")
        continue
      if qid in used:
        report.count("query_in_several_qrels", f"{qid} in {qf.name}")
        continue
      used.add(qid)
      queries.append(Query(id=qid, text=texts[qid].strip(), relevant=tuple(tids), group="", split=split))
  if texts is not None:
    unused = [q for q in texts if q not in used]
    if unused:
      report.count("query_without_qrels", unused[0], n=len(unused))
  report.stat("categories_in_records", len(builder.categories_seen))
  require_tools(builder.corpus, cpath)
  return finalize(builder.corpus, queries, [], report, SOURCE, extra_groups=groups, log=log)
