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
  """UTF-8 text of `path`; undecodable bytes become U+FFFD and are counted (kind `undecodable_bytes`). A path that
  cannot be read (a folder where a file is expected, no permission) raises DataError."""
  try:
    data = pathlib.Path(path).read_bytes()
  except IsADirectoryError:
    raise DataError(str(path), None, None, "is a folder, expected a file") from None
  except OSError as e:
    raise DataError(str(path), None, None, f"cannot read the file: {e.strerror or e}") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    text = data.decode("utf-8", errors="replace")
    report.count("undecodable_bytes", f"{path} at byte {e.start}", n=max(1, text.count("\ufffd")))
  if text.startswith("\ufeff"):
    text = text[1:]
  return text


# Deeper documents are refused before any reader walks them (the readers and the tool schemas recurse): real tool
# docs nest a few levels (ToolBench template_response, BFCL parameter schemas), never near this.
MAX_JSON_DEPTH = 64


def json_depth_exceeds(value: Any, limit: int) -> bool:
  """Whether `value` nests lists/objects deeper than `limit` (iterative: safe on any depth Python could build)."""
  stack = [(value, 1)]
  while stack:
    v, d = stack.pop()
    if isinstance(v, Mapping):
      children = v.values()
    elif isinstance(v, list):
      children = v
    else:
      continue
    if d > limit:
      return True
    stack.extend((c, d + 1) for c in children)
  return False


def parse_json(text: str, path: Any, record: Any = None, where: str = "") -> Any:
  """`json.loads(text)`, with every failure a DataError naming path and record: malformed JSON (with `where`, e.g.
  'on line 3', and the column), nesting deeper than MAX_JSON_DEPTH, an integer literal over Python's digit
  limit. Duplicate keys keep the last value, as JSON parsers do."""
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    at = where or f"at line {e.lineno}"
    raise DataError(str(path), record, None, f"malformed JSON {at} column {e.colno}: {e.msg}") from None
  except RecursionError:
    raise DataError(str(path), record, None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
  except ValueError as e:  # int literals past sys.get_int_max_str_digits
    raise DataError(str(path), record, None, f"unreadable JSON value: {e}") from None
  if json_depth_exceeds(value, MAX_JSON_DEPTH):
    raise DataError(str(path), record, None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
  return value


def load_json(path: str | pathlib.Path, report: LoadReport) -> Any:
  """The JSON document in `path`; malformed or too deeply nested JSON raises DataError with the line/column."""
  return parse_json(read_text(path, report), path)


def load_json_or_jsonl(path: str | pathlib.Path, report: LoadReport) -> list[Any]:
  """A JSON list, or JSON-lines (one record per line): APIBench's `*.json` files are JSON-lines despite the name."""
  text = read_text(path, report)
  stripped = text.lstrip()
  if stripped.startswith("["):
    data = parse_json(text, path)
    if not isinstance(data, list):  # '[' starts a list: parse_json either fails or returns one
      raise DataError(str(path), None, None, f"expected a JSON list, got {type(data).__name__}")
    return data
  return [rec for _, rec in iter_jsonl_text(text, path)]


def iter_jsonl_text(text: str, path: str | pathlib.Path) -> Iterator[tuple[int, Any]]:
  """(record index, record) per non-empty line; a malformed line raises DataError naming the record index."""
  idx = 0
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    yield idx, parse_json(line, path, idx, where=f"on line {lineno}")
    idx += 1


_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


def _type_name(t: Any) -> str:
  if t is Mapping or t is dict:
    return "object"
  return _TYPE_NAMES.get(t, getattr(t, "__name__", None) or str(t))


def value_type(value: Any) -> str:
  """The JSON name of a parsed value's type (for messages: 'got array', 'got null')."""
  if value is None:
    return "null"
  return _type_name(type(value)) if type(value) in _TYPE_NAMES else type(value).__name__


def require(rec: Any, field: str, path: Any, idx: Any, types: Any = object, prefix: str = "",
            nonempty: bool = False) -> Any:
  """`rec[field]`, or DataError(path, idx, prefix+field) when the record is not an object, lacks the field, or the
  value has the wrong type (a boolean is not an integer here, though Python's bool is an int; `nonempty`: a
  string of only spaces is missing too)."""
  if not isinstance(rec, Mapping):
    raise DataError(str(path), idx, prefix.rstrip(".") or None, f"expected a JSON object, got {value_type(rec)}")
  if field not in rec or rec[field] is None:
    raise DataError(str(path), idx, prefix + field, "missing required field")
  value = rec[field]
  wanted = types if isinstance(types, tuple) else (types,)
  if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted and object not in wanted):
    want = "/".join(_type_name(t) for t in wanted)
    raise DataError(str(path), idx, prefix + field, f"expected {want}, got {value_type(value)}")
  if nonempty and isinstance(value, str) and not value.strip():
    raise DataError(str(path), idx, prefix + field, "empty string")
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
  `duplicate_tool_conflicting`. Empty description -> kept, counted `empty_description`; an empty tool or API name
  -> kept, counted `empty_name`.
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
    if not tool.tool_name.strip() or not tool.api_name.strip():
      self.report.count("empty_name", f"{tool.key} at {where}")
    return self.corpus.add(tool)


def require_tools(corpus: ToolCorpus, path: Any) -> None:
  """A source that yields no tool at all is an error, not an empty dataset that fails later (a file holding [])."""
  if not len(corpus):
    raise DataError(str(path), None, None, "no tools in this source (empty file or no records)")


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
