"""Private helpers shared by the readers: decoding, JSON parsing with located errors, the deduplicating corpus
builder, ToolBench parameter lists -> JSON schema, and ToolBench's function-name standardisation."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Iterator, Mapping

from toolgen_jax.data.records import DataError, Tool, ToolCorpus
from toolgen_jax.data.report import LoadReport


# ----------------------------------------------------------------------------------------------------------------
# Reading files.

def read_text(path: str | pathlib.Path, report: LoadReport) -> str:
  """UTF-8 text of `path`; undecodable bytes become U+FFFD and are counted (kind `undecodable_bytes`)."""
  data = pathlib.Path(path).read_bytes()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    text = data.decode("utf-8", errors="replace")
    report.count("undecodable_bytes", f"{path} at byte {e.start}", n=max(1, text.count("\ufffd")))
  if text.startswith("\ufeff"):
    text = text[1:]
  return text


def load_json(path: str | pathlib.Path, report: LoadReport) -> Any:
  """The JSON document in `path`; malformed JSON raises DataError with the line/column."""
  text = read_text(path, report)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(str(path), None, None, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def load_json_or_jsonl(path: str | pathlib.Path, report: LoadReport) -> list[Any]:
  """A JSON list, or JSON-lines (one record per line): APIBench's `*.json` files are JSON-lines despite the name."""
  text = read_text(path, report)
  stripped = text.lstrip()
  if stripped.startswith("["):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(str(path), None, None, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return data
  return [rec for _, rec in iter_jsonl_text(text, path)]


def iter_jsonl_text(text: str, path: str | pathlib.Path) -> Iterator[tuple[int, Any]]:
  """(record index, record) per non-empty line; a malformed line raises DataError naming the record index."""
  idx = 0
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      yield idx, json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(str(path), idx, None, f"malformed JSON on line {lineno} column {e.colno}: {e.msg}") from None
    idx += 1


def require(rec: Any, field: str, path: Any, idx: Any, types: type | tuple[type, ...] = object,
            prefix: str = "") -> Any:
  """`rec[field]`, or DataError(path, idx, prefix+field) when the record is not an object, lacks the field, or the
  value has the wrong type."""
  if not isinstance(rec, Mapping):
    raise DataError(str(path), idx, prefix.rstrip(".") or None, f"expected a JSON object, got {type(rec).__name__}")
  if field not in rec or rec[field] is None:
    raise DataError(str(path), idx, prefix + field, "missing required field")
  value = rec[field]
  if not isinstance(value, types):
    want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
    raise DataError(str(path), idx, prefix + field, f"expected {want}, got {type(value).__name__}")
  return value


def optional_str(rec: Mapping[str, Any], field: str) -> str:
  v = rec.get(field)
  return "" if v is None else (v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))


# ----------------------------------------------------------------------------------------------------------------
# Corpus building with counted deduplication.

def _doc(tool: Tool) -> tuple:
  """The part of a tool that must agree between duplicates (not its id, source or source-specific extras);
  compared with ==, which is deep for the dict fields (no copies: this runs once per api_list entry)."""
  return (tool.tool_name, tool.api_name, tool.category, tool.description, tool.parameters, tool.method,
          tool.template_response)


class CorpusBuilder:
  """A ToolCorpus plus the counting rules every reader shares.

  Same key + identical doc -> the existing id (`duplicate_tool_identical`, a stat: ToolBench-style files repeat
  each candidate API in every query that offers it). Same key + different doc -> keep the first doc, count
  `duplicate_tool_conflicting`. Empty description -> kept, counted `empty_description`.
  """

  def __init__(self, report: LoadReport, corpus: ToolCorpus | None = None):
    self.corpus = corpus if corpus is not None else ToolCorpus()
    self.report = report
    self._docs: dict[int, tuple] = {}
    self.categories_seen: set[str] = set()  # over every record, duplicates included (a name can have several)

  def add(self, tool: Tool, where: str = "") -> int:
    self.categories_seen.add(tool.category)
    existing = self.corpus.get_id(*tool.key)
    if existing is not None:
      first = self._docs.get(existing)
      if first is None:
        first = self._docs[existing] = _doc(self.corpus[existing])
      if first == _doc(tool):
        self.report.stat("duplicate_tool_identical")
      else:
        self.report.count("duplicate_tool_conflicting", f"{tool.name} at {where}")
      return existing
    if not tool.description.strip():
      self.report.count("empty_description", f"{tool.name} at {where}")
    return self.corpus.add(tool)


# ----------------------------------------------------------------------------------------------------------------
# Parameter types -> JSON schema.

_JSON_TYPES = {"string", "number", "integer", "boolean", "array", "object", "null"}
_TYPE_MAP = {
    # ToolBench / RapidAPI (upper case in the files) and BFCL's Python names.
    "str": "string", "string": "string", "enum": "string", "char": "string", "date": "string", "time": "string",
    "datetime": "string", "url": "string", "file": "string", "binary": "string", "password": "string",
    "geopoint": "string", "any": "string",
    "number": "number", "float": "number", "double": "number", "decimal": "number",
    "int": "integer", "integer": "integer", "long": "integer", "short": "integer", "byte": "integer",
    "bigint": "integer",
    "bool": "boolean", "boolean": "boolean",
    "array": "array", "list": "array", "tuple": "array", "set": "array", "arraylist": "array", "queue": "array",
    "stack": "array",
    "dict": "object", "object": "object", "map": "object", "hashmap": "object", "hashtable": "object",
}


def json_type(source_type: Any, report: LoadReport | None = None) -> str | None:
  """JSON-schema type for a source type name ('STRING', 'dict', 'HashMap', 'DATE (YYYY-MM-DD)'); None when the
  source gives none. Unknown names map to 'string' and are counted (`unknown_param_type`)."""
  if source_type is None or source_type == "":
    return None
  if isinstance(source_type, list):  # JSON-schema union: keep the first non-null
    rest = [t for t in source_type if t != "null"]
    return json_type(rest[0] if rest else "null", report)
  name = str(source_type).strip()
  low = name.lower()
  if low in _TYPE_MAP:
    return _TYPE_MAP[low]
  head = re.split(r"[\s(<\[]", low, maxsplit=1)[0]
  if head in _TYPE_MAP:
    return _TYPE_MAP[head]
  if report is not None:
    report.count("unknown_param_type", name)
  return "string"


def toolbench_parameters(required: Any, optional: Any, where: str, report: LoadReport) -> dict:
  """ToolBench `required_parameters` / `optional_parameters` lists -> a JSON-schema object.

  Each entry is {name, type, description, default}; the source type is kept as `x-source-type` when it is not
  already a JSON-schema name (ToolBench's own converter maps NUMBER to 'integer'; we keep JSON's 'number').
  """
  props: dict[str, Any] = {}
  req: list[str] = []
  for kind, plist in (("required_parameters", required), ("optional_parameters", optional)):
    if plist in (None, ""):
      continue
    if not isinstance(plist, list):
      report.count("malformed_parameter_list", f"{where}.{kind}")
      continue
    for j, p in enumerate(plist):
      if not isinstance(p, Mapping) or not isinstance(p.get("name"), str):
        report.count("malformed_parameter", f"{where}.{kind}[{j}]")
        continue
      prop: dict[str, Any] = {}
      t = json_type(p.get("type"), report)
      if t is not None:
        prop["type"] = t
        if str(p.get("type")) not in _JSON_TYPES:
          prop["x-source-type"] = str(p.get("type"))
      prop["description"] = optional_str(p, "description")
      if "default" in p and p["default"] not in (None, ""):
        prop["default"] = p["default"]
      if p["name"] in props:
        report.count("duplicate_parameter", f"{where}.{p['name']}")
      props[p["name"]] = prop
      if kind == "required_parameters" and p["name"] not in req:
        req.append(p["name"])
  return {"type": "object", "properties": props, "required": req}


def toolbench_api_tool(api: Any, path: Any, idx: Any, prefix: str, report: LoadReport, source: str,
                       category: str | None = None) -> Tool:
  """One ToolBench `api_list` entry (instruction-file form: tool_name, api_name, api_description, ...) -> Tool."""
  tool_name = require(api, "tool_name", path, idx, str, prefix)
  api_name = require(api, "api_name", path, idx, str, prefix)
  where = f"{path}[{idx}].{prefix.rstrip('.')}"
  return Tool(
      id=-1, tool_name=tool_name, api_name=api_name,
      category=category if category is not None else optional_str(api, "category_name"),
      description=optional_str(api, "api_description").strip(),
      parameters=toolbench_parameters(api.get("required_parameters"), api.get("optional_parameters"), where, report),
      method=optional_str(api, "method"), template_response=api.get("template_response"), source=source)


# ----------------------------------------------------------------------------------------------------------------
# ToolBench's OpenAI function names (toolbench/inference/Downstream_tasks/rapidapi.py and toolbench/utils.py).

_NON_NAME = re.compile("[^\\u4e00-\\u9fa5^a-z^A-Z^0-9^_]")  # sic: '^' inside the class is kept, as in ToolBench


def standardize(name: str) -> str:
  """ToolBench `standardize`: non-name characters -> '_', runs collapsed, lower-cased, edge '_' stripped, leading
  digit prefixed with 'get_'."""
  s = _NON_NAME.sub("_", name)
  s = re.sub(r"(_)\1+", "_", s).lower().strip("_")
  if s and s[0].isdigit():
    s = "get_" + s
  return s


def change_name(name: str) -> str:
  return "is_" + name if name in ("from", "class", "return", "false", "true", "id", "and") else name


def toolbench_function_name(tool_name: str, api_name: str, standard_tool_name: str | None = None) -> str:
  """The function name a ToolBench model emits for (tool, api): `{api}_for_{tool}`, cut to its last 64 chars."""
  std_tool = standard_tool_name if standard_tool_name is not None else standardize(tool_name)
  return (change_name(standardize(api_name)) + f"_for_{std_tool}")[-64:]
