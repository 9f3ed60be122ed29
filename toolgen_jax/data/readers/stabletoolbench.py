"""StableToolBench / ToolBench instruction files: `solvable_queries/test_instruction/G{1,2,3}_instruction.json`
(and ToolBench's `instruction/G{1,2,3}_query.json`, same record format).

Each record: `query`, `query_id`, `api_list` (full docs of the candidate pool, distractors included) and
`relevant APIs` (list of [tool_name, api_name]). Tools are keyed (tool_name, api_name); the group is I1/I2/I3
from the G1/G2/G3 file name; `candidates` are the record's own api_list.
"""

from __future__ import annotations

import pathlib
import re
from typing import Sequence

from toolgen_jax.data._common import CorpusBuilder, load_json, require, require_tools, toolbench_api_tool, value_type
from toolgen_jax.data.dataset import ToolDataset, finalize
from toolgen_jax.data.records import DataError, Query
from toolgen_jax.data.report import LoadReport

SOURCE = "stabletoolbench"
_GROUP = re.compile(r"G(\d+)(?:_([A-Za-z]+))?")
# ToolBench's test sets: G1_instruction (I1-Inst.), G1_tool (I1-Tool, unseen tools), G1_category (I1-Cat.,
# unseen categories), G2_instruction, G2_category, G3_instruction; G*_query.json are the training pools.
_KIND_SUFFIX = {"instruction": "", "query": "", "tool": "-Tool", "category": "-Cat"}
_FILE = re.compile(r"^G\d+_(instruction|query|tool|category)\.json$")


def group_of(path: str | pathlib.Path) -> str:
  """'I1' for G1_instruction.json / G1_query.json, 'I1-Tool' for G1_tool.json, 'I2-Cat' for G2_category.json;
  else the file stem."""
  m = _GROUP.search(pathlib.Path(path).name)
  if not m:
    return pathlib.Path(path).stem
  kind = (m.group(2) or "").lower()
  return f"I{m.group(1)}" + _KIND_SUFFIX.get(kind, f"-{kind}" if kind else "")


def instruction_files(path: str | pathlib.Path) -> list[pathlib.Path]:
  """The instruction files under `path`: the file itself, or the `G<n>_{instruction,tool,category,query}.json`
  files in the folder, in `test_instruction/`, `solvable_queries/test_instruction/` or `instruction/` below it
  (never `test_query_ids/`, whose files share the names but hold only ids)."""
  p = pathlib.Path(path)
  if p.is_file():
    return [p]
  if not p.is_dir():
    raise DataError(str(p), None, None, "no such file or folder")
  for sub in (p, p / "test_instruction", p / "solvable_queries" / "test_instruction", p / "instruction"):
    files = sorted(f for f in sub.glob("G*.json") if _FILE.match(f.name)) if sub.is_dir() else []
    if files:
      return files
  raise DataError(str(p), None, None, "no G<n>_instruction/tool/category/query.json files in this folder")


def read_instruction_records(path: pathlib.Path, builder: CorpusBuilder, report: LoadReport, source: str,
                             split: str, seen_ids: set[str], group_ids: bool = False) -> list[Query]:
  """Queries of one instruction file; adds every api_list entry to the corpus (deduplicated, counted).

  `group_ids`: ids become '<group>/<query_id>' (ToolBench numbers queries per group; StableToolBench's are
  unique across groups and stay plain)."""
  records = load_json(path, report)
  if not isinstance(records, list):
    raise DataError(str(path), None, None, f"expected a JSON list of records, got {value_type(records)}")
  group = group_of(path)
  report.stat("files")
  if not records:
    report.count("empty_file", path.name)
  queries = []
  for i, rec in enumerate(records):
    text = require(rec, "query", path, i, str)
    qid_raw = require(rec, "query_id", path, i, (int, str))
    api_list = require(rec, "api_list", path, i, list)
    rel = require(rec, "relevant APIs", path, i, list)
    candidates = []
    for j, api in enumerate(api_list):
      tid = builder.add(toolbench_api_tool(api, path, i, f"api_list[{j}].", report, source),
                        where=f"{path.name}[{i}]")
      if tid not in candidates:
        candidates.append(tid)
    relevant: list[int] = []
    for j, pair in enumerate(rel):
      if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
        raise DataError(str(path), i, f"relevant APIs[{j}]", f"expected [tool_name, api_name], got {pair!r}")
      tid = builder.corpus.get_id(*pair)
      if tid is None:
        report.count("relevant_not_in_corpus", f"{pair} in {path.name}[{i}]")
        continue
      if tid not in candidates:
        report.count("relevant_not_in_candidates", f"{pair} in {path.name}[{i}]")
      if tid in relevant:
        report.count("duplicate_relevant", f"{pair} in {path.name}[{i}]")
        continue
      relevant.append(tid)
    qid = f"{group}/{qid_raw}" if group_ids else str(qid_raw)
    if qid in seen_ids:
      report.count("duplicate_query_id", f"{qid} in {path.name}")
      qid = f"{group}:{qid}"
    seen_ids.add(qid)
    if not text.strip():
      report.count("empty_query_text", f"{path.name}[{i}]")
    if not relevant:
      report.count("query_dropped_no_relevant", f"{path.name}[{i}]")
      continue
    queries.append(Query(id=qid, text=text.strip(), relevant=tuple(relevant), group=group, split=split,
                         candidates=tuple(candidates)))
  return queries


def read(path: str | pathlib.Path, *, groups: Sequence[str] | None = None, split: str = "test",
         log: bool = True) -> ToolDataset:
  """Reads a StableToolBench instruction file or folder. `groups` (e.g. ('I1', 'I1-Tool')) keeps only those."""
  report = LoadReport(source=SOURCE, path=str(path))
  builder = CorpusBuilder(report)
  queries: list[Query] = []
  seen: set[str] = set()
  for f in instruction_files(path):
    if groups is not None and group_of(f) not in groups:
      continue
    queries += read_instruction_records(f, builder, report, SOURCE, split, seen)
  report.stat("categories_in_records", len(builder.categories_seen))
  require_tools(builder.corpus, path)
  return finalize(builder.corpus, queries, [], report, SOURCE, log=log)
