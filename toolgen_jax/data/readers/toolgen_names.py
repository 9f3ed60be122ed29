"""ToolGen's tool-name inventory `virtual_tokens.txt`: one `<<tool_name&&api_name>>` per line (46,984 ToolBench
APIs) plus `<<Finish>>`, which is ToolGen's end-of-episode token, not a tool (counted `non_tool_token`).

Names only: every tool has an empty description, so `empty_description` is reported as a stat, not an issue.
No queries. A line that is not `<<...>>` raises DataError with its line number; an empty tool or API name
(`<<&&x>>`) is kept and counted `empty_name`; a file with no tool at all raises DataError.
"""

from __future__ import annotations

import pathlib

from toolgen_jax.data._common import read_text, require_tools
from toolgen_jax.data.dataset import ToolDataset, finalize
from toolgen_jax.data.records import DataError, Tool, ToolCorpus
from toolgen_jax.data.report import LoadReport

SOURCE = "toolgen_names"
NON_TOOL_TOKENS = ("Finish",)


def _file(path: pathlib.Path) -> pathlib.Path:
  if path.is_file():
    return path
  for cand in (path / "virtual_tokens.txt", path / "training" / "src" / "configs" / "virtual_tokens.txt"):
    if cand.is_file():
      return cand
  raise DataError(str(path), None, None, "no virtual_tokens.txt here")


def read(path: str | pathlib.Path, *, log: bool = True) -> ToolDataset:
  f = _file(pathlib.Path(path))
  report = LoadReport(source=SOURCE, path=str(f))
  corpus = ToolCorpus()
  dups = 0
  for lineno, line in enumerate(read_text(f, report).splitlines(), 1):
    tok = line.strip()
    if not tok:
      continue
    if not (tok.startswith("<<") and tok.endswith(">>")):
      raise DataError(str(f), lineno, None, f"expected '<<tool_name&&api_name>>', got {tok[:80]!r}")
    body = tok[2:-2]
    if "&&" not in body:
      if body in NON_TOOL_TOKENS:
        report.stat("non_tool_token")
        continue
      raise DataError(str(f), lineno, None, f"expected '<<tool_name&&api_name>>', got {tok[:80]!r}")
    tool_name, api_name = body.split("&&", 1)
    if not tool_name.strip() or not api_name.strip():
      report.count("empty_name", f"line {lineno}: {tok[:80]!r}")
    n = len(corpus)
    corpus.add(Tool(id=-1, tool_name=tool_name, api_name=api_name, source=SOURCE))
    if len(corpus) == n:
      dups += 1
  if dups:
    report.count("duplicate_tool_identical", n=dups)
  require_tools(corpus, f)
  report.stat("empty_description", len(corpus))
  report.stat("distinct_tool_names", len({t.tool_name for t in corpus}))
  return finalize(corpus, [], [], report, SOURCE, log=log)
