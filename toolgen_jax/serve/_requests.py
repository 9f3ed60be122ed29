"""/v1/chat/completions requests: bounded JSON parsing, pydantic models, and their translation into the agent's
tools and history. Every way a body can be wrong ends in `RequestError` (a 4xx with a message), never in an
exception the server did not expect: the parse is bounded in depth, digits and text encoding before any model sees
it, and request tool schemas must pass JSON Schema's own meta-schema.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Annotated, Any, Literal, Mapping, Sequence

import jsonschema
import pydantic
from jsonschema import validators

from toolgen_jax import prompts as fmt
from toolgen_jax.data.records import Message, Tool

# Wider than OpenAI's [a-zA-Z0-9_-]{1,64}: corpus names carry '.', '#', ':' (e.g. BFCL `math.factorial`); names are
# only ever compared and echoed, never interpreted.
NAME_PATTERN = r"^[^\s\x00-\x1f\x7f]{1,128}$"
_NAME = re.compile(NAME_PATTERN)


class RequestError(Exception):
  """A client error: `status` (4xx, or 503 for a transient lack of room) and a message for the client."""

  def __init__(self, status: int, message: str):
    self.status, self.message = status, message
    super().__init__(message)


# --- bounded JSON -------------------------------------------------------------------------------------------------


def _reject_constant(name: str):
  raise ValueError(f"{name} is not valid JSON")


def _check_tree(obj: Any, max_depth: int) -> None:
  """Depth, and strings that UTF-8 cannot encode (lone surrogates such as "\\ud800"), checked without recursion."""
  stack = [(obj, 1)]
  while stack:
    x, d = stack.pop()
    if isinstance(x, (dict, list)):
      if d > max_depth:
        raise RequestError(400, f"request body is nested deeper than {max_depth} levels")
      items = x.items() if isinstance(x, dict) else enumerate(x)
      for k, v in items:
        if isinstance(k, str):
          _check_text(k)
        stack.append((v, d + 1))
    elif isinstance(x, str):
      _check_text(x)


def _check_text(s: str) -> None:
  try:
    s.encode("utf-8")
  except UnicodeEncodeError:
    raise RequestError(400, "request body holds a string that is not valid Unicode (a lone surrogate escape)") from None


def parse_json(raw: bytes, max_depth: int = 64) -> Any:
  """Body bytes -> JSON value, or RequestError(400). Deep nesting (the C parser's recursion guard, then
  `max_depth`), over-long integers (Python's 4300-digit limit), NaN/Infinity and lone surrogates are client errors
  here."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise RequestError(400, f"request body is not valid JSON: not UTF-8 ({e.reason} at byte {e.start})") from None
  try:
    obj = json.loads(text, parse_constant=_reject_constant)
  except json.JSONDecodeError as e:
    raise RequestError(400, f"request body is not valid JSON: {e}") from None
  except (ValueError, RecursionError) as e:  # 5000-digit integers, NaN, deep nesting
    raise RequestError(400, f"request body is not valid JSON: {str(e)[:200]}") from None
  _check_tree(obj, max_depth)
  return obj


# --- request models (OpenAI chat completions) ---------------------------------------------------------------------

_STRICT = pydantic.ConfigDict(strict=True, extra="ignore")


class FunctionDef(pydantic.BaseModel):
  model_config = _STRICT
  name: Annotated[str, pydantic.StringConstraints(pattern=NAME_PATTERN)]
  description: str = ""
  parameters: dict[str, Any] = pydantic.Field(default_factory=lambda: {"type": "object", "properties": {}})
  strict: bool | None = None


class ToolDef(pydantic.BaseModel):
  model_config = _STRICT
  type: Literal["function"] = "function"
  function: FunctionDef


class CallFunction(pydantic.BaseModel):
  model_config = _STRICT
  name: str
  arguments: str = "{}"


class ToolCall(pydantic.BaseModel):
  model_config = _STRICT
  id: str | None = None
  type: Literal["function"] = "function"
  function: CallFunction


class TextPart(pydantic.BaseModel):
  model_config = _STRICT
  type: Literal["text"]
  text: str


class ChatMessage(pydantic.BaseModel):
  model_config = _STRICT
  role: Literal["system", "developer", "user", "assistant", "tool", "function"]
  content: str | list[TextPart] | None = None
  name: str | None = None
  tool_calls: list[ToolCall] | None = None
  tool_call_id: str | None = None

  def text(self) -> str:
    if self.content is None:
      return ""
    return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class NamedFunction(pydantic.BaseModel):
  model_config = _STRICT
  name: str


class NamedToolChoice(pydantic.BaseModel):
  model_config = _STRICT
  type: Literal["function"] = "function"
  function: NamedFunction


class StreamOptions(pydantic.BaseModel):
  model_config = _STRICT
  include_usage: bool = False


class ChatRequest(pydantic.BaseModel):
  """The fields the server reads; others that OpenAI clients send (temperature, seed, user, ...) are ignored."""

  model_config = _STRICT
  model: str | None = None
  messages: list[ChatMessage] = pydantic.Field(min_length=1)
  tools: list[ToolDef] | None = None
  tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
  n: int = 1
  stream: bool = False
  stream_options: StreamOptions | None = None


def _where(loc: Sequence) -> str:
  out = ""
  for p in loc:
    if isinstance(p, int):
      out += f"[{p}]"
    elif p in ("str", "list[TextPart]", "NamedToolChoice") or p.startswith(("literal[", "function-")):
      continue  # union-branch labels pydantic adds to the location
    else:
      out += ("." if out else "") + str(p)
  return out or "body"


def validate(body: Any, *, max_tools: int, max_messages: int) -> ChatRequest:
  if not isinstance(body, Mapping):
    raise RequestError(400, "the request body must be a JSON object")
  try:
    req = ChatRequest.model_validate(body)
  except pydantic.ValidationError as e:
    errs = e.errors(include_url=False)
    msgs = []
    for err in errs[:3]:
      msgs.append(f"'{_where(err['loc'])}': {err['msg']}")
    more = f" (and {len(errs) - 3} more)" if len(errs) > 3 else ""
    raise RequestError(400, "invalid request: " + "; ".join(msgs) + more) from None
  if req.n != 1:
    raise RequestError(400, f"only n=1 is supported (got n={req.n})")
  if len(req.messages) > max_messages:
    raise RequestError(400, f"'messages' has {len(req.messages)} entries; at most {max_messages} are accepted")
  if req.tools is not None and len(req.tools) > max_tools:
    raise RequestError(400, f"'tools' has {len(req.tools)} entries; at most {max_tools} are accepted")
  return req


# --- into the agent's terms ---------------------------------------------------------------------------------------


def check_tool_schema(i: int, params: Mapping) -> None:
  """A request tool's `parameters` must be a valid JSON Schema (its meta-schema, regex patterns included) of an
  object; `enum: []` (which no value satisfies) is refused too. The meta-schema check costs milliseconds and clients
  send the same tools with every request: verdicts are cached by the schema's text."""
  problem = _schema_problem(json.dumps(params, sort_keys=True))
  if problem is not None:
    raise RequestError(400, f"tools[{i}].function.parameters{problem}")


@functools.lru_cache(maxsize=4096)
def _schema_problem(text: str) -> str | None:
  try:
    _check_schema(json.loads(text))
  except RequestError as e:
    return e.message
  return None


def _check_schema(params: Mapping) -> None:
  if params.get("type", "object") != "object":
    raise RequestError(400, " must be a JSON-schema object (type 'object')")
  try:
    cls = validators.validator_for(params, default=jsonschema.Draft202012Validator)
    cls.check_schema(params)
  except (TypeError, ValueError, RecursionError) as e:  # e.g. an unhashable "$schema"
    raise RequestError(400, f" is not a valid JSON schema: {type(e).__name__}") from None
  except jsonschema.SchemaError as e:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
    raise RequestError(400, f"{path} is not a valid JSON schema: {e.message[:200]}") from None
  stack = [(params, "")]
  while stack:
    s, path = stack.pop()
    if isinstance(s, dict):
      if "enum" in s and isinstance(s["enum"], list) and not s["enum"]:
        raise RequestError(400, f"{path}.enum is empty: no value could be valid")
      stack.extend((v, f"{path}.{k}") for k, v in s.items())
    elif isinstance(s, list):
      stack.extend((v, f"{path}[{j}]") for j, v in enumerate(s))


def request_tools(req: ChatRequest) -> list[Tool]:
  tools, seen = [], set()
  for i, t in enumerate(req.tools or ()):
    f = t.function
    if f.name in seen:
      raise RequestError(400, f"tools[{i}]: duplicate function name '{f.name}'")
    seen.add(f.name)
    check_tool_schema(i, f.parameters)
    tools.append(Tool(id=-1, tool_name=f.name, api_name=f.name, description=f.description,
                      parameters=dict(f.parameters), source="request"))
  return tools


def tool_choice(req: ChatRequest, tools: Sequence[Tool]) -> tuple[str, str | None]:
  """-> (mode, forced name): mode auto | none | required | named."""
  choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
  if isinstance(choice, NamedToolChoice):
    if choice.function.name not in {t.name for t in tools}:
      raise RequestError(400, f"tool_choice names function '{choice.function.name}', which is not in 'tools'")
    return "named", choice.function.name
  if choice == "required" and not tools:
    raise RequestError(400, "tool_choice 'required' needs at least one tool in 'tools'")
  return choice, None


def check_history(req: ChatRequest, names: set[str]) -> None:
  """Checks that need only names (before any tool is coded): every earlier tool call names a request tool, and
  the conversation has a user turn."""
  for i, m in enumerate(req.messages):
    for j, c in enumerate(m.tool_calls or ()):
      if c.function.name not in names:
        raise RequestError(400, f"messages[{i}].tool_calls[{j}] calls '{c.function.name}', which is not among the "
                           "request's tools")
  if not any(m.role == "user" for m in req.messages):
    raise RequestError(400, "'messages' needs at least one user message")


def history(req: ChatRequest, name_to_id: Mapping[str, int]) -> list[Message]:
  """OpenAI messages -> the agent's history (tool calls become assistant steps, tool results observations)."""
  out: list[Message] = []
  for m in req.messages:
    content = m.text()
    if m.role in ("system", "developer"):
      out.append(Message("system", content))
    elif m.role == "user":
      out.append(Message("user", content))
    elif m.role in ("tool", "function"):
      out.append(Message("observation", content))
    elif not m.tool_calls:  # a plain assistant answer = a Finish step
      out.append(Message("assistant", action=None, action_name="Finish", action_input=fmt.finish_input(content)))
    else:
      for j, c in enumerate(m.tool_calls):
        out.append(Message("assistant", thought=content if j == 0 and content else None,
                           action=name_to_id[c.function.name], action_name=c.function.name,
                           action_input=c.function.arguments))
  return out
