"""OpenAI-compatible server: `python -m toolgen_jax.serve --workdir=DIR [--port=8000]`.

POST /v1/chat/completions accepts `messages` and `tools` and answers one assistant step: `tool_calls` (the client
runs the tool and sends the result back as a `tool` message) or a final `content`, so agent frameworks written for
the OpenAI API can drive a trained model unchanged. The request's tools are the candidates: known tools (same name
and schema) restrict the trie to them, unknown ones are first coded from their documentation (`Backend.add_tools`).
Also GET /v1/models and GET /health.

Robustness: bodies over `max_body_bytes` get 413 without being read, malformed JSON / fields get 400 with a message,
unknown paths 404, any internal error 500; the server keeps serving. Calls into the backend are serialized (one model).
Binds 127.0.0.1 by default. Standard library only (http.server.ThreadingHTTPServer).
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import sys
import threading
import time
import traceback
import uuid
from typing import Any, Mapping, Sequence

from toolgen_jax.agent import format as fmt
from toolgen_jax.agent import loop
from toolgen_jax.agent.backend import Backend, UnknownToolsError, load_backend, resolve_tools
from toolgen_jax.data.records import Message, Tool

# Wider than OpenAI's [a-zA-Z0-9_-]{1,64}: corpus names carry '.', '#', ':' (e.g. BFCL `math.factorial`); names are
# only ever compared and echoed, never interpreted.
_NAME = re.compile(r"^[^\s\x00-\x1f\x7f]{1,128}$")
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class RequestError(Exception):

  def __init__(self, status: int, message: str):
    self.status, self.message = status, message
    super().__init__(message)


def _bad(message: str, status: int = 400):
  raise RequestError(status, message)


def _text(content: Any, where: str) -> str:
  if content is None:
    return ""
  if isinstance(content, str):
    return content
  if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
    parts = []
    for j, p in enumerate(content):
      if not isinstance(p, Mapping) or p.get("type") != "text" or not isinstance(p.get("text"), str):
        _bad(f"{where}.content[{j}]: only text parts are supported")
      parts.append(p["text"])
    return "".join(parts)
  _bad(f"{where}.content must be a string, a list of text parts, or null")


def parse_tools(raw: Any, max_tools: int) -> list[Tool]:
  if raw is None:
    return []
  if not isinstance(raw, list):
    _bad("'tools' must be a list")
  if len(raw) > max_tools:
    _bad(f"'tools' has {len(raw)} entries; at most {max_tools} are accepted")
  tools, seen = [], set()
  for i, t in enumerate(raw):
    if not isinstance(t, Mapping) or t.get("type", "function") != "function" or not isinstance(t.get("function"),
                                                                                               Mapping):
      _bad(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
    f = t["function"]
    name = f.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
      _bad(f"tools[{i}].function.name must match {_NAME.pattern}")
    if name in seen:
      _bad(f"tools[{i}]: duplicate function name '{name}'")
    seen.add(name)
    params = f.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, Mapping) or params.get("type", "object") != "object":
      _bad(f"tools[{i}].function.parameters must be a JSON-schema object")
    if not isinstance(params.get("properties", {}), Mapping):
      _bad(f"tools[{i}].function.parameters.properties must be an object")
    desc = f.get("description", "")
    if not isinstance(desc, str):
      _bad(f"tools[{i}].function.description must be a string")
    tools.append(Tool(id=-1, tool_name=name, api_name=name, description=desc, parameters=dict(params),
                      source="request"))
  return tools


def parse_messages(raw: Any, name_to_id: Mapping[str, int], max_messages: int) -> list[Message]:
  """OpenAI messages -> the agent's history (tool calls become assistant steps, tool results observations)."""
  if not isinstance(raw, list) or not raw:
    _bad("'messages' must be a non-empty list")
  if len(raw) > max_messages:
    _bad(f"'messages' has {len(raw)} entries; at most {max_messages} are accepted")
  out: list[Message] = []
  for i, m in enumerate(raw):
    where = f"messages[{i}]"
    if not isinstance(m, Mapping) or m.get("role") not in _ROLES:
      _bad(f"{where}.role must be one of {list(_ROLES)}")
    role, content = m["role"], _text(m.get("content"), where)
    if role in ("system", "developer"):
      out.append(Message("system", content))
    elif role == "user":
      out.append(Message("user", content))
    elif role in ("tool", "function"):
      out.append(Message("observation", content))
    else:
      calls = m.get("tool_calls") or []
      if not isinstance(calls, list):
        _bad(f"{where}.tool_calls must be a list")
      if not calls:  # a plain assistant answer = a Finish step
        out.append(Message("assistant", action=None, action_name="Finish", action_input=fmt.finish_input(content)))
      for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
          _bad(f"{where}.tool_calls[{j}].function.name is required")
        if fn["name"] not in name_to_id:
          _bad(f"{where}.tool_calls[{j}] calls '{fn['name']}', which is not among the request's tools")
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
          _bad(f"{where}.tool_calls[{j}].function.arguments must be a JSON string")
        out.append(Message("assistant", thought=content if j == 0 and content else None, action=name_to_id[fn["name"]],
                           action_name=fn["name"], action_input=args))
  if not any(m.role == "user" for m in out):
    _bad("'messages' needs at least one user message")
  return out


def chat_completion(backend: Backend, body: Any, *, max_tools: int = 128, max_messages: int = 256) -> dict:
  """One /v1/chat/completions request -> the response object. Raises RequestError for a client error."""
  if not isinstance(body, Mapping):
    _bad("the request body must be a JSON object")
  if body.get("stream"):
    _bad("'stream': true is not supported")
  if body.get("n", 1) != 1:
    _bad("only n=1 is supported")
  tools = parse_tools(body.get("tools"), max_tools)
  choice = body.get("tool_choice", "auto" if tools else "none")
  forced = None
  if isinstance(choice, Mapping):
    forced = (choice.get("function") or {}).get("name")
    if forced not in {t.name for t in tools}:
      _bad("tool_choice names a function that is not in 'tools'")
  elif choice not in ("auto", "none", "required"):
    _bad("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}")
  with backend.lock:
    try:
      ids = resolve_tools(backend, tools)
    except UnknownToolsError as e:
      raise RequestError(422, str(e)) from None
    name_to_id = {t.name: i for t, i in zip(tools, ids)}
    id_to_name = {i: t.name for t, i in zip(tools, ids)}
    history = parse_messages(body.get("messages"), name_to_id, max_messages)
    if choice == "none" or not tools:
      candidates, allow_finish = [], True
    elif forced is not None:
      candidates, allow_finish = [name_to_id[forced]], False
    else:
      candidates, allow_finish = ids, choice != "required"
    d = loop.decide(history, backend.policy, backend.corpus, candidates=candidates, allow_finish=allow_finish)
  message: dict[str, Any] = {"role": "assistant", "content": None}
  if d.kind == "call":
    message["content"] = d.thought or None
    message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": id_to_name.get(d.tool.id, d.tool.name),
                                           "arguments": d.arguments_text}}]
    finish = "tool_calls"
  elif d.kind == "finish":
    message["content"] = str(d.arguments.get("final_answer", "")) if d.arguments else ""
    finish = "stop"
  else:  # the model's step failed validation: say so instead of handing the client an unusable call
    message["content"] = f"(the model produced an invalid step: {d.error})"
    finish = "stop"
  return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
          "model": backend.name, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
          "toolgen": {"kind": d.kind, "thought": d.thought, "error": d.error or None}}


class _Handler(http.server.BaseHTTPRequestHandler):
  server_version = "toolgen-serve/0.1"
  protocol_version = "HTTP/1.1"

  def log_message(self, fmt_, *args):  # quiet by default; --verbose logs
    if getattr(self.server, "verbose", False):
      sys.stderr.write("%s - %s\n" % (self.address_string(), fmt_ % args))

  def _json(self, status: int, obj: Any):
    body = json.dumps(obj, ensure_ascii=False).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    if status >= 400:
      self.send_header("Connection", "close")
      self.close_connection = True
    self.end_headers()
    self.wfile.write(body)

  def _error(self, status: int, message: str):
    kind = "invalid_request_error" if status < 500 else "server_error"
    self._json(status, {"error": {"message": message, "type": kind, "code": status}})

  def _discard(self, n: int, cap: int):
    """Reads and drops up to `cap` bytes of an oversized body, so that a client still sending it gets the 413
    instead of a broken pipe; past `cap` the connection is closed after the answer (bounded work per request)."""
    self.connection.settimeout(5.0)
    left = min(n, cap)
    try:
      while left > 0:
        chunk = self.rfile.read(min(65_536, left))
        if not chunk:
          break
        left -= len(chunk)
    except OSError:
      pass

  def do_GET(self):
    if self.path.rstrip("/") == "/health":
      self._json(200, {"status": "ok"})
    elif self.path.rstrip("/") == "/v1/models":
      self._json(200, {"object": "list", "data": [{"id": self.server.backend.name, "object": "model"}]})
    elif self.path.rstrip("/") == "/v1/chat/completions":
      self._error(405, "use POST for /v1/chat/completions")
    else:
      self._error(404, f"no route {self.path}")

  def do_POST(self):
    if self.path.rstrip("/") != "/v1/chat/completions":
      self._error(404, f"no route {self.path}")
      return
    length = self.headers.get("Content-Length")
    if length is None:
      self._error(411, "Content-Length is required")
      return
    try:
      n = int(length)
      if n < 0:
        raise ValueError
    except ValueError:
      self._error(400, "Content-Length must be a non-negative integer")
      return
    limit = self.server.max_body_bytes
    if n > limit:
      self._discard(n, 8 * limit)
      self._error(413, f"request body of {n} bytes exceeds the limit of {limit} bytes")
      return
    try:
      raw = self.rfile.read(n)
      body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      self._error(400, f"request body is not valid JSON: {e}")
      return
    try:
      out = chat_completion(self.server.backend, body, max_tools=self.server.max_tools,
                            max_messages=self.server.max_messages)
    except RequestError as e:
      self._error(e.status, e.message)
      return
    except Exception as e:  # a bug must not take the server down
      traceback.print_exc()
      self._error(500, f"internal error: {type(e).__name__}: {e}")
      return
    self._json(200, out)


class Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  request_queue_size = 64


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 0, *, max_body_bytes: int = 2**20,
                max_tools: int = 128, max_messages: int = 256, verbose: bool = False) -> Server:
  """A ready server (port 0 = any free port: `server.server_address`). Run with `serve_forever()`."""
  server = Server((host, port), _Handler)
  server.backend, server.max_body_bytes, server.verbose = backend, max_body_bytes, verbose
  server.max_tools, server.max_messages = max_tools, max_messages
  return server


def serve_in_thread(backend: Backend, **kw) -> tuple[Server, threading.Thread, str]:
  """Starts a server on a background thread -> (server, thread, base URL). Stop with server.shutdown()."""
  server = make_server(backend, **kw)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  host, port = server.server_address[:2]
  return server, thread, f"http://{host}:{port}"


def main(argv: Sequence[str] | None = None) -> None:
  from toolgen_jax.config import base_config
  c = base_config().serve
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a trained workdir, or 'demo' for the model-free demo backend")
  ap.add_argument("--host", default=c.host)
  ap.add_argument("--port", type=int, default=c.port)
  ap.add_argument("--max_body_bytes", type=int, default=c.max_body_bytes)
  ap.add_argument("--max_tools", type=int, default=c.max_tools)
  ap.add_argument("--max_messages", type=int, default=c.max_messages)
  ap.add_argument("--verbose", action="store_true")
  a = ap.parse_args(argv)
  server = make_server(load_backend(a.workdir), a.host, a.port, max_body_bytes=a.max_body_bytes,
                       max_tools=a.max_tools, max_messages=a.max_messages, verbose=a.verbose)
  host, port = server.server_address[:2]
  print(f"serving {server.backend.name} on http://{host}:{port}/v1/chat/completions", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  main()
