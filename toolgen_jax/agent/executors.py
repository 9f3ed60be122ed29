"""Executors turn a validated tool call into an Observation: Python callables, REST endpoints, recorded responses.

All three share one contract, `executor(tool, arguments) -> ExecutionResult`, and never raise for a failing call:
the failure is an `error` the agent shows the model (ToolBench's `{"error": ..., "response": ...}` observation).

Safety: the caller (the agent loop) has already checked the tool name against the allowed candidates and
the arguments against the schema; executors add their own limits. Callables run with a wall-clock timeout; the REST
executor refuses hosts outside an allow-list (default loopback only) on the same parse of the URL it connects to,
follows no redirects, uses no proxy, and stops at a size limit or one wall-clock deadline per call; the replay
executor touches no network at all. Nothing here ever evaluates model text as code.
"""

from __future__ import annotations

import ast
import dataclasses
import http.client
import json
import pathlib
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from toolgen_jax.data import _common as _data_common
from toolgen_jax.data.records import DataError, Tool, ToolCorpus, Trajectory


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
  response: str = ""
  error: str = ""

  @property
  def ok(self) -> bool:
    return not self.error

  def to_observation(self) -> str:
    """The observation text in ToolBench's format (what stage-2 trajectories contain)."""
    return json.dumps({"error": self.error, "response": self.response}, ensure_ascii=False)


class Executor(Protocol):

  def __call__(self, tool: Tool, arguments: Mapping[str, Any]) -> ExecutionResult:
    ...


def _to_text(value: Any) -> str:
  return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _cut(text: str, max_chars: int) -> tuple[str, bool]:
  return (text, False) if len(text) <= max_chars else (text[:max_chars], True)


# --- Python callables -----------------------------------------------------------------------------------------------


class CallableExecutor:
  """A registry of Python functions keyed by tool name (`Tool.name`), called with the arguments as keywords.

  A call that outlives `timeout_s` returns a timeout error; its thread cannot be killed and finishes in the
  background (daemon), so registered functions should be short or cooperative. Responses longer than
  `max_response_chars` are cut and flagged in `error`.
  """

  def __init__(self, functions: Mapping[str, Callable[..., Any]] | None = None, *, timeout_s: float = 10.0,
               max_response_chars: int = 16_384):
    self._fns: dict[str, Callable[..., Any]] = dict(functions or {})
    self.timeout_s, self.max_response_chars = float(timeout_s), int(max_response_chars)

  def register(self, name: str, fn: Callable[..., Any] | None = None):
    """`reg.register("name", fn)` or as a decorator `@reg.register("name")`."""
    if fn is None:
      return lambda f: self.register(name, f)
    self._fns[name] = fn
    return fn

  def __contains__(self, name: str) -> bool:
    return name in self._fns

  @property
  def names(self) -> list[str]:
    return sorted(self._fns)

  def __call__(self, tool: Tool, arguments: Mapping[str, Any]) -> ExecutionResult:
    fn = self._fns.get(tool.name)
    if fn is None:
      return ExecutionResult(error=f"no callable is registered for tool '{tool.name}'")
    box: dict[str, Any] = {}

    def run():
      try:
        box["value"] = fn(**dict(arguments))
      except Exception as e:  # the tool's failure is an observation, not a crash of the agent
        box["error"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=run, name=f"tool:{tool.name}", daemon=True)
    t.start()
    t.join(self.timeout_s)
    if t.is_alive():
      return ExecutionResult(error=f"tool '{tool.name}' timed out after {self.timeout_s:g}s")
    if "error" in box:
      return ExecutionResult(error=box["error"])
    text, cut = _cut(_to_text(box.get("value")), self.max_response_chars)
    return ExecutionResult(text, f"response truncated to {self.max_response_chars} characters" if cut else "")


# --- REST -----------------------------------------------------------------------------------------------------------


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _segment(value: Any) -> str:
  """One URL path segment: everything but unreserved characters %-escaped (a '/' cannot add a segment), and the
  dot segments '.' and '..' escaped too, so a tool named '..' cannot climb out of a template's path."""
  q = urllib.parse.quote(str(value), safe="")
  return q.replace(".", "%2E") if q in (".", "..") else q


class RestExecutor:
  """Calls `url_for(tool)` over HTTP: GET/DELETE with the arguments as query parameters, other methods with a JSON body.

  `url_for` is a callable or a format string over `tool_name`, `api_name`, `name`, `category` (each one quoted
  path segment), e.g. "http://127.0.0.1:8080/{tool_name}/{api_name}". The URL is parsed once and that one parse
  is both checked and connected to: only `http`/`https`, a host in `allowed_hosts`, no user-info ('user@host'),
  no '.'/'..' path segments. Redirects are not followed and no proxy is used. `timeout_s` is one wall-clock
  deadline for the whole call (connect, request, status line, headers, body): a server that drips bytes is cut
  off when it passes, not when one read stalls. A body over `max_response_bytes` is an error, not a truncation,
  so a misbehaving endpoint cannot flood the prompt. Every failure is an error observation; nothing raises.
  """

  def __init__(self, url_for: str | Callable[[Tool], str], *, allowed_hosts: Sequence[str] = ("127.0.0.1",),
               timeout_s: float = 10.0, max_response_bytes: int = 1 << 20,
               headers: Mapping[str, str] | None = None, default_method: str = "GET"):
    self._url_for = url_for
    self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
    self.timeout_s, self.max_response_bytes = float(timeout_s), int(max_response_bytes)
    self.headers = {"Accept": "application/json", **(headers or {})}
    self.default_method = default_method.upper()

  def url(self, tool: Tool) -> str:
    if callable(self._url_for):
      return self._url_for(tool)
    return self._url_for.format(tool_name=_segment(tool.tool_name), api_name=_segment(tool.api_name),
                                name=_segment(tool.name), category=_segment(tool.category))

  def _split(self, url: Any) -> tuple[urllib.parse.SplitResult | None, str | None]:
    """(the one parse of `url`, None) when it may be called, else (None, why not)."""
    if not isinstance(url, str):
      return None, f"the URL must be text, got {type(url).__name__}"
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
      return None, "control characters or spaces in the URL"
    try:
      parts = urllib.parse.urlsplit(url)
      parts.port  # pylint: disable=pointless-statement  (raises ValueError for a port that is not a number)
    except ValueError as e:
      return None, f"malformed URL ({e})"
    if parts.scheme not in ("http", "https"):
      return None, f"scheme '{parts.scheme}' is not allowed (http/https only)"
    if "@" in parts.netloc:
      return None, "user-info ('user@host') is not allowed in the URL"
    host = (parts.hostname or "").lower()
    if host not in self.allowed_hosts:
      return None, f"host '{parts.hostname}' is not in the allow-list {sorted(self.allowed_hosts)}"
    if any(seg in (".", "..") for seg in parts.path.split("/")):
      return None, "'.' or '..' path segments are not allowed"
    return parts, None

  def check_url(self, url: Any) -> str | None:
    """Why `url` may not be called, or None."""
    return self._split(url)[1]

  def __call__(self, tool: Tool, arguments: Mapping[str, Any]) -> ExecutionResult:
    try:
      return self._call(tool, arguments)
    except Exception as e:  # the contract: an error observation, never an exception out of the executor
      return ExecutionResult(error=f"cannot call '{tool.name}': {type(e).__name__}: {e}")

  def _call(self, tool: Tool, arguments: Mapping[str, Any]) -> ExecutionResult:
    try:
      url = self.url(tool)
    except Exception as e:
      return ExecutionResult(error=f"cannot build the URL for tool '{tool.name}': {e}")
    parts, refused = self._split(url)
    if refused:
      return ExecutionResult(error=f"refused to call {str(url)[:200]}: {refused}")
    method = (tool.method or self.default_method).upper()
    if method not in _METHODS:
      return ExecutionResult(error=f"HTTP method '{method}' is not allowed")
    target = parts.path or "/"
    query = parts.query
    body, headers = None, dict(self.headers)
    if method in ("GET", "DELETE"):
      args = {k: v if isinstance(v, str) else json.dumps(v) for k, v in arguments.items()}
      if args:
        query = (query + "&" if query else "") + urllib.parse.urlencode(args)
    else:
      body = json.dumps(dict(arguments)).encode()  # ASCII escapes: any str encodes
      headers["Content-Type"] = "application/json"
    if query:
      target += "?" + query
    deadline = time.monotonic() + self.timeout_s
    timed_out = threading.Event()
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=self.timeout_s)

    def expire():  # the one deadline: shut the socket under whatever read or write is blocked on it
      timed_out.set()
      sock = conn.sock
      if sock is not None:
        try:
          sock.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass

    timer = threading.Timer(self.timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
      conn.request(method, target, body=body, headers=headers)
      resp = conn.getresponse()
      status = resp.status
      data = self._read(resp, deadline)
    except _TooLarge:
      return ExecutionResult(error=f"response of '{tool.name}' exceeds max_response_bytes={self.max_response_bytes}")
    except (_Deadline, TimeoutError):
      return ExecutionResult(error=f"tool '{tool.name}' timed out after {self.timeout_s:g}s")
    except (OSError, http.client.HTTPException) as e:
      if timed_out.is_set():
        return ExecutionResult(error=f"tool '{tool.name}' timed out after {self.timeout_s:g}s")
      return ExecutionResult(error=f"cannot reach '{tool.name}': {e or type(e).__name__}")
    finally:
      timer.cancel()
      conn.close()
    if timed_out.is_set():
      return ExecutionResult(error=f"tool '{tool.name}' timed out after {self.timeout_s:g}s")
    if status >= 400:
      detail = data[:512].decode("utf-8", "replace")
      return ExecutionResult(error=f"HTTP {status} from {tool.name}: {detail or resp.reason}")
    if status >= 300:  # redirects are not followed
      return ExecutionResult(error=f"HTTP {status} from {tool.name} (redirects are not followed)")
    return ExecutionResult(data.decode("utf-8", "replace"))

  def _read(self, resp, deadline: float) -> bytes:
    chunks, total = [], 0
    read = getattr(resp, "read1", resp.read)  # read1: one recv at a time, so a dripping server meets the deadline
    while True:
      if time.monotonic() > deadline:
        raise _Deadline()
      chunk = read(min(65_536, self.max_response_bytes + 1 - total))
      if not chunk:
        return b"".join(chunks)
      chunks.append(chunk)
      total += len(chunk)
      if total > self.max_response_bytes:
        raise _TooLarge()


class _TooLarge(Exception):
  pass


class _Deadline(Exception):
  pass


# --- replay ---------------------------------------------------------------------------------------------------------


# ToolBench's name normalisation lives with the data readers (one definition for reading and for replay).
standardize = _data_common.standardize
change_name = _data_common.change_name
toolbench_function_name = _data_common.toolbench_function_name


def canonical_arguments(arguments: Mapping[str, Any] | str | None) -> str:
  """Order-independent key for a call's arguments (compact JSON with sorted keys); unparsable text keys as itself."""
  if arguments is None:
    arguments = {}
  if isinstance(arguments, str):
    try:
      arguments = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
      return arguments.strip()
  return json.dumps(arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _result_from_recorded(value: Any) -> ExecutionResult:
  if isinstance(value, str):
    try:
      parsed = json.loads(value)
    except json.JSONDecodeError:
      return ExecutionResult(value)
    value = parsed
  if isinstance(value, dict) and set(value) <= {"error", "response"} and value:
    return ExecutionResult(_to_text(value.get("response", "")), _to_text(value.get("error", "") or ""))
  return ExecutionResult(_to_text(value))


class ReplayExecutor:
  """Answers from recorded responses, keyed by (tool, api) names (ToolBench-standardized) and canonical arguments.

  The StableToolBench idea without its LLM simulator: a call that was recorded returns the recorded observation, so
  an evaluation is reproducible offline. On a miss, `on_miss="error"` returns an error observation; `"same_tool"`
  returns the tool's first recorded response (labelled in `stats`), for replaying trajectories whose arguments drift.
  """

  def __init__(self, on_miss: str = "error"):
    if on_miss not in ("error", "same_tool"):
      raise ValueError(f"on_miss must be 'error' or 'same_tool', got {on_miss!r}")
    self.on_miss = on_miss
    self._cache: dict[tuple[str, str], dict[str, ExecutionResult]] = {}
    self.stats = {"hits": 0, "misses": 0, "same_tool": 0}
    self._lock = threading.Lock()

  @staticmethod
  def _key(tool_name: str, api_name: str) -> tuple[str, str]:
    # StableToolBench cache files are named change_name(standardize(api)): "id" -> "is_id"
    return standardize(tool_name), change_name(standardize(api_name))

  def add(self, tool_name: str, api_name: str, arguments: Mapping[str, Any] | str | None, recorded: Any) -> None:
    self._cache.setdefault(self._key(tool_name, api_name), {}).setdefault(
        canonical_arguments(arguments), _result_from_recorded(recorded))

  def __len__(self) -> int:
    return sum(len(v) for v in self._cache.values())

  def __call__(self, tool: Tool, arguments: Mapping[str, Any]) -> ExecutionResult:
    calls = self._cache.get(self._key(tool.tool_name, tool.api_name), {})
    hit = calls.get(canonical_arguments(arguments))
    with self._lock:
      if hit is not None:
        self.stats["hits"] += 1
        return hit
      self.stats["misses"] += 1
      if self.on_miss == "same_tool" and calls:
        self.stats["same_tool"] += 1
        return next(iter(calls.values()))
    return ExecutionResult(error=f"no recorded response for '{tool.name}' with arguments "
                                 f"{canonical_arguments(arguments)} (replay cache miss)")

  @classmethod
  def from_trajectories(cls, trajectories: Iterable[Trajectory], corpus: ToolCorpus, **kw) -> "ReplayExecutor":
    """Records every (assistant call, following observation) pair of the trajectories."""
    ex = cls(**kw)
    for traj in trajectories:
      msgs = traj.messages
      for i, m in enumerate(msgs[:-1]):
        if m.role == "assistant" and m.action is not None and msgs[i + 1].role == "observation":
          tool = corpus[m.action]
          ex.add(tool.tool_name, tool.api_name, m.action_input, msgs[i + 1].content)
    return ex

  @classmethod
  def from_stabletoolbench_cache(cls, folder: str | pathlib.Path, **kw) -> "ReplayExecutor":
    """Reads StableToolBench's `tool_response_cache/<category>/<tool>_for_<category>/<api>.json` files, each a dict
    `str(python dict of arguments) -> {"error", "response"}`. Keys are parsed with `ast.literal_eval` (a literal
    parser: cache files are data, never model output); a key that is not a literal is kept as text."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
      raise DataError(str(folder), None, None, "StableToolBench cache folder not found")
    ex = cls(**kw)
    for path in sorted(folder.glob("*/*/*.json")):
      category, tool_dir = path.parent.parent.name, path.parent.name
      suffix = f"_for_{category}"
      tool = tool_dir[:-len(suffix)] if tool_dir.endswith(suffix) else tool_dir
      try:
        records = json.loads(path.read_text() or "{}")
      except json.JSONDecodeError as e:
        raise DataError(str(path), None, None, f"not JSON: {e}") from None
      if not isinstance(records, dict):
        raise DataError(str(path), None, None, "expected an object mapping arguments to responses")
      for key, value in records.items():
        try:
          args = ast.literal_eval(key) if key.strip() else {}
        except (ValueError, SyntaxError, MemoryError, RecursionError):
          args = key
        ex.add(tool, path.stem, args if isinstance(args, (dict, str)) else key, value)
    return ex
