"""Tool-argument checking against a tool's JSON schema, and schema-constrained argument generation.

Why: the model writes `Action Input` as free text. Before any executor runs, the text must parse as a JSON object
whose keys and values fit the tool's schema (required keys, types, enums). A failure is not an exception for the agent
loop: it becomes an error observation that the model reads on its next step (ToolBench's `{"error": ..., "response":
""}` convention), so one bad generation never crashes an episode.

Sources write types loosely (ToolBench: `STRING`, `NUMBER`, `ENUM`, `DATE (YYYY-MM-DD)`; BFCL: `dict`, `float`,
`tuple`, `any`), so `normalize_schema` maps them onto JSON-schema types first; an unknown type name constrains nothing
rather than rejecting every value.

Limits: Action Input is refused, as an ArgumentError, past MAX_ARGUMENT_CHARS characters or
MAX_ARGUMENT_DEPTH levels of nesting, with an integer literal over MAX_NUMBER_DIGITS digits, a non-finite number
(NaN, Infinity, 1e999) at any depth, a duplicate key at any depth, or a lone surrogate in any string. The schema
check is jsonschema's over the whole value (nested objects reject undeclared keys too), after the string coercions.

`constrained_arguments` builds the argument object key by key from the schema (a skeleton the model only fills in), so
the result always parses and always has the required keys with values of the right JSON type; the model supplies the
values through an `ArgumentFiller` (choices scored by the model, free text cut at the closing quote).
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any, Mapping, Protocol, Sequence

import jsonschema

from toolgen_jax.prompts import FINISH_SCHEMA  # noqa: F401  (the Finish tool's schema is the prompt format's)

# Loose type names seen in ToolBench / StableToolBench / BFCL -> JSON-schema type (None = unconstrained).
_TYPE_ALIASES = {
    "string": "string", "str": "string", "char": "string", "enum": "string", "date": "string", "time": "string",
    "number": "number", "float": "number", "double": "number",
    "integer": "integer", "int": "integer", "long": "integer",
    "boolean": "boolean", "bool": "boolean",
    "array": "array", "list": "array", "tuple": "array", "arraylist": "array",
    "object": "object", "dict": "object", "hashmap": "object", "map": "object",
    "null": "null",
    "any": None, "": None,
}



MAX_ARGUMENT_CHARS = 65_536  # Action Input text (and the total string length of an arguments object)
MAX_ARGUMENT_DEPTH = 32      # nesting of lists/objects in Action Input and in a tool's parameter schema
MAX_NUMBER_DIGITS = 1_000    # an integer literal or numeric string longer than this is not a number we pass on
_MAX_MESSAGE_CHARS = 200     # one validation message (jsonschema quotes the offending value)


class ArgumentError(ValueError):
  """Action Input that cannot be used: not JSON, not an object, or not fitting the schema."""

  def __init__(self, errors: Sequence[str]):
    self.errors = list(errors)
    super().__init__("; ".join(self.errors))


def _json_type(name: Any) -> str | None:
  if not isinstance(name, str):
    return None
  key = name.strip().lower()
  if key in _TYPE_ALIASES:
    return _TYPE_ALIASES[key]
  head = re.split(r"[\s(\[<]", key, maxsplit=1)[0]  # "date (yyyy-mm-dd)", "array[string]", "list<int>"
  return _TYPE_ALIASES.get(head)


def normalize_schema(parameters: Mapping[str, Any] | None) -> dict:
  """A JSON schema (draft 7) for a tool's `parameters`, with loose type names mapped to JSON types.

  Keeps `properties`, `required`, `enum`, `items`, `description`, `default`; drops source-only keys (ToolBench's
  `optional` list, `example_value`). Required keys that have no property entry are kept (they must be present).
  """
  if parameters is None:
    return {"type": "object", "properties": {}, "required": []}
  if not isinstance(parameters, Mapping):
    raise TypeError(f"tool parameters must be a JSON object schema, got {type(parameters).__name__}")
  if _too_deep(parameters, 2 * MAX_ARGUMENT_DEPTH + 2):  # a schema level is 'properties' + the property
    raise TypeError(f"tool parameters nest deeper than {2 * MAX_ARGUMENT_DEPTH + 2} levels")
  return _normalize(parameters, top=True)


def _too_deep(value: Any, limit: int) -> bool:
  """Whether `value` nests lists/objects deeper than `limit` (iterative: safe on any depth)."""
  stack = [(value, 1)]
  while stack:
    v, d = stack.pop()
    children = v.values() if isinstance(v, Mapping) else v if isinstance(v, (list, tuple)) else None
    if children is None:
      continue
    if d > limit:
      return True
    stack.extend((c, d + 1) for c in children)
  return False


def _normalize(s: Mapping[str, Any], top: bool = False) -> dict:
  out: dict[str, Any] = {}
  types = s.get("type")
  if isinstance(types, list):
    mapped = sorted({t for t in map(_json_type, types) if t is not None})
    if mapped and len(mapped) == len(types):
      out["type"] = mapped
  else:
    t = _json_type(types) if "type" in s else ("object" if top or "properties" in s else None)
    if t is not None:
      out["type"] = t
  if "enum" in s and isinstance(s["enum"], list) and s["enum"]:
    out["enum"] = list(s["enum"])
  for k in ("description", "default"):
    if k in s:
      out[k] = s[k]
  if out.get("type") == "object" or "properties" in s:
    props = s.get("properties") or {}
    if not isinstance(props, Mapping):
      raise TypeError("schema 'properties' must be an object")
    out["properties"] = {str(k): _normalize(v) if isinstance(v, Mapping) else {} for k, v in props.items()}
    req = s.get("required") or []
    out["required"] = [str(r) for r in req] if isinstance(req, list) else []
    if "additionalProperties" in s and isinstance(s["additionalProperties"], bool):
      out["additionalProperties"] = s["additionalProperties"]
  if "items" in s and isinstance(s["items"], Mapping):
    out["items"] = _normalize(s["items"])
  if "enum" in out and "type" in out and isinstance(out["type"], str):
    # An enum value of another type than declared (BFCL has `"type": "string", "enum": [1, 2]`) widens the type.
    if not all(_fits(v, out["type"]) for v in out["enum"]):
      del out["type"]
  return out


def _fits(v: Any, t: str) -> bool:
  return {"string": lambda: isinstance(v, str),
          "integer": lambda: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
          "boolean": lambda: isinstance(v, bool),
          "array": lambda: isinstance(v, list),
          "object": lambda: isinstance(v, dict),
          "null": lambda: v is None}.get(t, lambda: True)()


class _Refused(Exception):
  pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
  out = {}
  for k, v in pairs:
    if k in out:
      raise _Refused(f"duplicate key {k[:40]!r}")
    out[k] = v
  return out


def _finite_float(s: str) -> float:
  f = float(s)
  if not math.isfinite(f):
    raise _Refused(f"number {s[:40]} is out of range")
  return f


def _bounded_int(s: str) -> int:
  if len(s.lstrip("-")) > MAX_NUMBER_DIGITS:
    raise _Refused(f"integer literal of {len(s)} digits (at most {MAX_NUMBER_DIGITS})")
  return int(s)


def _no_constant(s: str) -> None:
  raise _Refused(f"{s} is not a JSON number")


def check_limits(value: Any) -> list[str]:
  """Problems of a parsed arguments value that no schema should have to state: nesting past MAX_ARGUMENT_DEPTH,
  non-finite numbers, lone surrogates, total string length past MAX_ARGUMENT_CHARS. Iterative, at any depth."""
  errors: list[str] = []
  chars = 0
  stack: list[tuple[Any, str, int]] = [(value, "", 0)]
  while stack and len(errors) < 5:
    v, where, depth = stack.pop()
    at = f"'{where}': " if where else ""
    if isinstance(v, (dict, list)):
      if depth >= MAX_ARGUMENT_DEPTH:
        errors.append(f"{at}nested deeper than {MAX_ARGUMENT_DEPTH} levels")
        continue
      items = v.items() if isinstance(v, dict) else enumerate(v)
      for k, c in items:
        if isinstance(k, str):
          chars += len(k)
          if not _encodable(k):
            errors.append(f"{at}key with a lone surrogate (not valid Unicode)")
        stack.append((c, f"{where}/{k}" if where else str(k), depth + 1))
    elif isinstance(v, float) and not math.isfinite(v):
      errors.append(f"{at}non-finite number")
    elif isinstance(v, str):
      chars += len(v)
      if not _encodable(v):
        errors.append(f"{at}lone surrogate in a string (not valid Unicode)")
    if chars > MAX_ARGUMENT_CHARS:
      errors.append(f"arguments hold more than {MAX_ARGUMENT_CHARS} characters of text")
      break
  return errors


def _encodable(s: str) -> bool:
  try:
    s.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def parse_arguments(text: Any) -> dict:
  """Action Input text -> dict. Empty text means no arguments (as ToolBench's server treats it). Every refusal
  (not JSON, not an object, one of the limits in the module docstring) is an ArgumentError, never another error."""
  if text is None:
    return {}
  if not isinstance(text, str):
    raise ArgumentError([f"Action Input must be text, got {type(text).__name__}"])
  if not text.strip():
    return {}
  if len(text) > MAX_ARGUMENT_CHARS:
    raise ArgumentError([f"Action Input is {len(text)} characters long (at most {MAX_ARGUMENT_CHARS})"])
  if not _encodable(text):
    raise ArgumentError(["Action Input holds a lone surrogate (not valid Unicode)"])
  try:
    value = json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_finite_float, parse_int=_bounded_int,
                       parse_constant=_no_constant)
  except json.JSONDecodeError as e:
    raise ArgumentError([f"Action Input is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"]) from None
  except _Refused as e:
    raise ArgumentError([f"Action Input refused: {e}"]) from None
  except RecursionError:
    raise ArgumentError([f"Action Input is nested deeper than {MAX_ARGUMENT_DEPTH} levels"]) from None
  if not isinstance(value, dict):
    raise ArgumentError([f"Action Input must be a JSON object, got {type(value).__name__}"])
  errors = check_limits(value)
  if errors:
    raise ArgumentError(errors)
  return value


def _coerce(value: Any, schema: Mapping[str, Any]) -> Any:
  """Strings that spell a number/boolean are accepted for number/integer/boolean fields (RapidAPI passes every
  argument as a query string, so ToolBench's gold calls write "5" for NUMBER)."""
  t = schema.get("type")
  if isinstance(value, str) and isinstance(t, str) and len(value) <= MAX_NUMBER_DIGITS + 2:
    s = value.strip()
    if t == "integer" and re.fullmatch(r"[-+]?\d+", s):
      return int(s)
    if t == "number" and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s):
      f = float(s)
      if not math.isfinite(f):  # "1e999": left a string, so the type check names it
        return value
      return int(s) if re.fullmatch(r"[-+]?\d+", s) else f
    if t == "boolean" and s.lower() in ("true", "false"):
      return s.lower() == "true"
  if isinstance(value, dict) and isinstance(schema.get("properties"), Mapping):
    props = schema["properties"]
    return {k: _coerce(v, props[k]) if k in props else v for k, v in value.items()}
  if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
    return [_coerce(v, schema["items"]) for v in value]
  return value


def _closed(schema: Mapping[str, Any]) -> dict:
  """`schema` with `additionalProperties: False` on every object level that declares properties and says nothing
  itself (recursively through properties and items), so a hallucinated key is refused at any depth."""
  out = dict(schema)
  if isinstance(out.get("properties"), Mapping):
    out["properties"] = {k: _closed(v) if isinstance(v, Mapping) else v for k, v in out["properties"].items()}
    out.setdefault("additionalProperties", False)
  if isinstance(out.get("items"), Mapping):
    out["items"] = _closed(out["items"])
  return out


# JSON numbers are finite: NaN and infinities fail `type: number` at any depth.
_TYPES = jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
    "number", lambda checker, v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
_Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=_TYPES)


def _message(e: jsonschema.ValidationError, value: Any, schema: Mapping[str, Any]) -> str:
  where = "/".join(map(str, e.path))
  if e.validator == "additionalProperties":
    inst, sch = e.instance, e.schema
    extra = sorted(set(inst) - set(sch.get("properties", {}))) if isinstance(inst, dict) else []
    msg = f"unknown argument(s) {extra}; allowed: {sorted(sch.get('properties', {}))}" if extra else e.message
  elif e.validator == "required":
    msg = f"missing required argument {e.message.split(' is a required')[0]}"
  else:
    msg = e.message
  if len(msg) > _MAX_MESSAGE_CHARS:
    msg = msg[:_MAX_MESSAGE_CHARS] + "..."
  return f"'{where}': {msg}" if where else msg


def validate_arguments(args: Mapping[str, Any], schema: Mapping[str, Any], *, coerce_strings: bool = True,
                       allow_extra: bool = False) -> tuple[dict, list[str]]:
  """Checks `args` against a normalized schema. Returns (args, coerced when `coerce_strings`; error messages).

  `allow_extra=False` rejects keys the schema does not declare, at every object level (a hallucinated parameter is
  an error the model should see, not something passed on to an API); an explicit `additionalProperties` in the
  schema wins. The limits of `check_limits` apply before the schema is consulted.
  """
  if not isinstance(args, Mapping):
    return {}, [f"arguments must be a JSON object, got {type(args).__name__}"]
  errors = check_limits(dict(args))
  if errors:
    return dict(args), errors
  schema = dict(schema) if allow_extra else _closed(schema)
  value = _coerce(copy.deepcopy(dict(args)), schema) if coerce_strings else dict(args)
  try:
    found = sorted(_Validator(schema).iter_errors(value), key=lambda e: list(map(str, e.path)))
  except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.UnknownType, TypeError, ValueError) as e:
    return value, [f"the tool's parameter schema cannot be checked: {str(e)[:_MAX_MESSAGE_CHARS]}"]
  return value, [_message(e, value, schema) for e in found]


def check_arguments(text: Any, parameters: Mapping[str, Any] | None, **kw) -> dict:
  """Action Input text -> validated (coerced) arguments; raises ArgumentError listing every problem (a tool whose
  parameter schema is unusable too: the model sees that as an error observation)."""
  args = parse_arguments(text)
  try:
    schema = normalize_schema(parameters)
  except (TypeError, ValueError, RecursionError) as e:
    raise ArgumentError([f"the tool's parameter schema is unusable: {e}"]) from None
  value, errors = validate_arguments(args, schema, **kw)
  if errors:
    raise ArgumentError(errors)
  return value


# --- constrained generation ---------------------------------------------------------------------------------------


class ArgumentFiller(Protocol):
  """The model side of constrained argument generation. `prefix` is the JSON text written so far."""

  def choose(self, prefix: str, options: Sequence[str]) -> int:
    """Index of the most likely continuation among `options` (scored by the model)."""

  def text(self, prefix: str, stop: Sequence[str], max_chars: int) -> str:
    """Free continuation of `prefix`, cut before the first stop string, at most `max_chars`."""


_INT_RE = re.compile(r"\s*([-+]?\d+)")
_NUM_RE = re.compile(r"\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)")


def _fallback(schema: Mapping[str, Any]) -> Any:
  if "default" in schema and _fits(schema["default"], schema.get("type", "")):
    return schema["default"]
  return {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}.get(
      schema.get("type"), None)


# The skeleton is written by generators that yield the model calls they need -- ("choose", prefix, options) or
# ("text", prefix, stop, max_chars) -- and receive the answers, so that many tools' arguments can be filled in
# lockstep, one batched model call per round (`constrained_argument_steps`), or one at a time through a filler.


def _value(schema: Mapping[str, Any], prefix: str, max_chars: int):
  t = schema.get("type")
  if "enum" in schema:
    options = [json.dumps(v, ensure_ascii=False) for v in schema["enum"]]
    return options[(yield ("choose", prefix, options))]
  if t == "boolean":
    return ["true", "false"][(yield ("choose", prefix, ["true", "false"]))]
  if t == "string":
    raw = yield ("text", prefix + '"', ['"'], max_chars)
    return json.dumps(raw, ensure_ascii=False)  # escaping makes any text a valid JSON string
  if t in ("integer", "number"):
    raw = yield ("text", prefix, [",", "}", "\n"], 32)
    m = (_INT_RE if t == "integer" else _NUM_RE).match(raw)
    return m.group(1).lstrip("+") if m else json.dumps(_fallback(schema))
  if t == "object" and schema.get("properties"):
    return (yield from _object(schema, prefix, max_chars))
  raw = yield ("text", prefix, ["\n"], max_chars)  # arrays, free objects, untyped: any JSON value, else the fallback
  try:
    v = json.loads(raw)
    if t is None or _fits(v, t):
      return json.dumps(v, ensure_ascii=False)
  except json.JSONDecodeError:
    pass
  return json.dumps(_fallback(schema), ensure_ascii=False)


def _object(schema: Mapping[str, Any], prefix: str, max_chars: int):
  props = schema.get("properties", {})
  required = [k for k in schema.get("required", []) if k in props]
  optional = [k for k in props if k not in required]
  out = "{"
  for k in required:
    out += ("" if out == "{" else ", ") + json.dumps(k) + ": "
    out += yield from _value(props[k], prefix + out, max_chars)
  while optional:  # the model picks the next optional key or closes the object
    options = [json.dumps(k) for k in optional] + ["}"]
    i = yield ("choose", prefix + out + ("" if out == "{" else ", "), options)
    if i == len(optional):
      break
    k = optional.pop(i)
    out += ("" if out == "{" else ", ") + json.dumps(k) + ": "
    out += yield from _value(props[k], prefix + out, max_chars)
  return out + "}"


def constrained_argument_steps(parameters: Mapping[str, Any] | None, *, prefix: str = "",
                               max_string_chars: int = 256):
  """`constrained_arguments` as a generator: yields each model call it needs, ("choose", prefix, options) -> the
  index of the chosen option, or ("text", prefix, stop, max_chars) -> the text; returns the Action Input text."""
  return (yield from _object(normalize_schema(parameters), prefix, max_string_chars))


def answer(filler: ArgumentFiller, call: tuple) -> Any:
  """One call yielded by `constrained_argument_steps`, answered by `filler`."""
  return filler.choose(*call[1:]) if call[0] == "choose" else filler.text(*call[1:])


def constrained_arguments(parameters: Mapping[str, Any] | None, filler: ArgumentFiller, *, prefix: str = "",
                          max_string_chars: int = 256) -> str:
  """Action Input text generated under the tool's schema: every required key, then optional keys the model picks.

  Values: enum and boolean by `filler.choose`; strings by free text cut at the closing quote and re-escaped; numbers
  by the longest numeric prefix of the model's text (the schema's default, else 0, if there is none). The result
  always parses; it satisfies types, enums and required keys for schemas made of these parts.
  """
  steps = constrained_argument_steps(parameters, prefix=prefix, max_string_chars=max_string_chars)
  try:
    call = next(steps)
    while True:
      call = steps.send(answer(filler, call))
  except StopIteration as done:
    return done.value
