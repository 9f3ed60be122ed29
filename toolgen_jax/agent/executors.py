"""Executors turn a validated tool call into an Observation: Python callables, REST endpoints, recorded responses.

All three share one contract, `executor(tool, arguments) -> ExecutionResult`, and never raise for a failing call:
the failure is an `error` the agent shows the model (ToolBench's `{"error": ..., "response": ...}` observation).

Safety (issue #8): the caller (the agent loop) has already checked the tool name against the allowed candidates and
the arguments against the schema; executors add their own limits. Callables run with a wall-clock timeout; the REST
executor refuses hosts outside an allow-list (default loopback only), follows no redirects, ignores proxy settings,
and stops reading past a size limit or deadline; the replay executor touches no network at all. Nothing here ever
evaluates model text as code.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):

  def redirect_request(self, req, fp, code, msg, headers, newurl):  # a redirect could leave the allow-list
    return None


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class RestExecutor:
  """Calls `url_for(tool)` over HTTP: GET/DELETE with the arguments as query parameters, other methods with a JSON body.

  `url_for` is a callable or a format string over `tool_name`, `api_name`, `name`, `category` (URL-quoted), e.g.
  "http://127.0.0.1:8080/{tool_name}/{api_name}". Only `http`/`https` URLs whose host is in `allowed_hosts` are
  called; redirects are not followed; `timeout_s` bounds the whole call (connect + every read); a body over
  `max_response_bytes` is an error, not a truncation, so a misbehaving endpoint cannot flood the prompt.
  """

  def __init__(self, url_for: str | Callable[[Tool], str], *, allowed_hosts: Sequence[str] = ("127.0.0.1",),
               timeout_s: float = 10.0, max_response_bytes: int = 1 << 20,
               headers: Mapping[str, str] | None = None, default_method: str = "GET"):
    self._url_for = url_for
    self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
    self.timeout_s, self.max_response_bytes = float(timeout_s), int(max_response_bytes)
    self.headers = {"Accept": "application/json", **(headers or {})}
    self.default_method = default_method.upper()
    self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

  def url(self, tool: Tool) -> str:
    if callable(self._url_for):
      return self._url_for(tool)
    q = lambda s: urllib.parse.quote(str(s), safe="")
    return self._url_for.format(tool_name=q(tool.tool_name), api_name=q(tool.api_name), name=q(tool.name),
                                category=q(tool.category))

  def check_url(self, url: str) -> str | None:
    """Why `url` may not be called, or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
      return f"scheme '{parts.scheme}' is not allowed (http/https only)"
    if (parts.hostname or "").lower() not in self.allowed_hosts:
      return f"host '{parts.hostname}' is not in the allow-list {sorted(self.allowed_hosts)}"
    return None

  def __call__(self, tool: Tool, arguments: Mapping[str, Any]) -> ExecutionResult:
    try:
      url = self.url(tool)
    except Exception as e:
      return ExecutionResult(error=f"cannot build the URL for tool '{tool.name}': {e}")
    refused = self.check_url(url)
    if refused:
      return ExecutionResult(error=f"refused to call {url}: {refused}")
    method = (tool.method or self.default_method).upper()
    if method not in _METHODS:
      return ExecutionResult(error=f"HTTP method '{method}' is not allowed")
    args = {k: v if isinstance(v, str) else json.dumps(v) for k, v in arguments.items()}
    data, headers = None, dict(self.headers)
    if method in ("GET", "DELETE"):
      if args:
        url += ("&" if urllib.parse.urlsplit(url).query else "?") + urllib.parse.urlencode(args)
    else:
      data = json.dumps(dict(arguments), ensure_ascii=False).encode()
      headers["Content-Type"] = "application/json"
    deadline = time.monotonic() + self.timeout_s
    try:
      with self._opener.open(urllib.request.Request(url, data=data, headers=headers, method=method),
                             timeout=self.timeout_s) as resp:
        body = self._read(resp, deadline)
        status = resp.status
    except urllib.error.HTTPError as e:
      try:
        detail = self._read(e, deadline)[:512].decode("utf-8", "replace")
      except Exception:
        detail = ""
      return ExecutionResult(error=f"HTTP {e.code} from {tool.name}: {detail or e.reason}")
    except _TooLarge:
      return ExecutionResult(error=f"response of '{tool.name}' exceeds max_response_bytes={self.max_response_bytes}")
    except (TimeoutError, _Deadline):
      return ExecutionResult(error=f"tool '{tool.name}' timed out after {self.timeout_s:g}s")
    except urllib.error.URLError as e:
      reason = "timed out" if isinstance(e.reason, TimeoutError) else str(e.reason)
      return ExecutionResult(error=f"cannot reach '{tool.name}': {reason}")
    except OSError as e:
      return ExecutionResult(error=f"cannot reach '{tool.name}': {e}")
    if status >= 300:  # redirects are not followed
      return ExecutionResult(error=f"HTTP {status} from {tool.name} (redirects are not followed)")
    return ExecutionResult(body.decode("utf-8", "replace"))

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
