"""The HTTP layer: a Starlette app on uvicorn (h11), with every resource a client can hold bounded.

  body size      Content-Length over `max_body_bytes` -> 413 before reading; a chunked body is cut off there too;
  header size    h11 refuses a request head over `max_header_bytes` (400);
  connections    over `max_connections` open connections, new requests get 503 (uvicorn's limit_concurrency);
  read time      a connection that has not sent a complete request head within `read_timeout_s` of opening (or of
                 its previous response) is closed, and a body not received by then gets 408: slow clients cannot
                 pin the server.
Conflicting Content-Length headers are refused by h11 (400); routes match the path only (a query string is
ignored). Errors are OpenAI-style JSON: {"error": {"message", "type", "code"}}.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import traceback
import uuid
from typing import Any

import h11
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from toolgen_jax.agent.backend import Backend
from toolgen_jax.serve import _engine, _requests

log = logging.getLogger("toolgen_jax.serve")


@dataclasses.dataclass(frozen=True)
class Limits:
  max_body_bytes: int = 2**20
  max_header_bytes: int = 16 * 1024
  max_connections: int = 128
  read_timeout_s: float = 10.0
  max_tools: int = 128
  max_messages: int = 256
  max_json_depth: int = 64


def error(status: int, message: str, *, close: bool = False) -> JSONResponse:
  kind = "invalid_request_error" if status < 500 else ("server_busy" if status == 503 else "server_error")
  return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                      headers={"Connection": "close"} if close else None)


async def _read_body(request: Request, limits: Limits, deadline: float) -> bytes:
  length = request.headers.get("content-length")
  chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
  if length is None and not chunked:
    raise _requests.RequestError(411, "Content-Length is required")
  if length is not None:
    try:
      n = int(length)
    except ValueError:
      raise _requests.RequestError(400, "Content-Length must be a non-negative integer") from None
    if n > limits.max_body_bytes:
      raise _requests.RequestError(413, f"request body of {n} bytes exceeds the limit of {limits.max_body_bytes} "
                                   "bytes")

  async def read() -> bytes:
    parts, total = [], 0
    async for chunk in request.stream():
      total += len(chunk)
      if total > limits.max_body_bytes:
        raise _requests.RequestError(413, f"request body exceeds the limit of {limits.max_body_bytes} bytes")
      parts.append(chunk)
    return b"".join(parts)

  try:
    return await asyncio.wait_for(read(), timeout=max(deadline - time.monotonic(), 0.001))
  except asyncio.TimeoutError:
    raise _requests.RequestError(408, f"request body not received within {limits.read_timeout_s} s") from None


def _message(outcome: _engine.Outcome) -> tuple[dict, str]:
  d = outcome.decision
  message: dict[str, Any] = {"role": "assistant", "content": None}
  if d.kind == "call":
    message["content"] = d.thought or None
    message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": outcome.id_to_name.get(d.tool.id, d.tool.name),
                                           "arguments": d.arguments_text}}]
    return message, "tool_calls"
  if d.kind == "finish":
    message["content"] = str(d.arguments.get("final_answer", "")) if d.arguments else ""
  else:  # the model's step failed validation: say so instead of handing the client an unusable call
    message["content"] = f"(the model produced an invalid step: {d.error})"
  return message, "stop"


def completion(outcome: _engine.Outcome, model: str) -> dict:
  message, finish = _message(outcome)
  d = outcome.decision
  return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
          "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
          "usage": _usage(outcome), "toolgen": {"kind": d.kind, "thought": d.thought, "error": d.error or None}}


def _usage(outcome: _engine.Outcome) -> dict:
  return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
          "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


def stream_events(outcome: _engine.Outcome, model: str, include_usage: bool) -> list[bytes]:
  """The completion as server-sent `chat.completion.chunk` events: the role, the content or the tool call (whole:
  the step is decided before the first byte), the finish reason, the usage if asked, then [DONE]."""
  message, finish = _message(outcome)
  base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
          "model": model}
  chunk = lambda delta, reason=None: dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": reason,
                                                          "logprobs": None}])
  events = [chunk({"role": "assistant", "content": ""})]
  if message.get("content"):
    events.append(chunk({"content": message["content"]}))
  for i, call in enumerate(message.get("tool_calls", ())):
    events.append(chunk({"tool_calls": [dict(call, index=i)]}))
  events.append(chunk({}, finish))
  if include_usage:
    events.append(dict(base, choices=[], usage=_usage(outcome)))
  return [f"data: {json.dumps(e, ensure_ascii=False)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def make_app(backend: Backend, engine: _engine.Engine, limits: Limits) -> Starlette:

  async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})

  async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": backend.name, "object": "model", "created": 0,
                                                     "owned_by": "toolgen_jax"}]})

  async def chat_completions(request: Request) -> Response:
    deadline = request.scope.get("state", {}).get("deadline") or time.monotonic() + limits.read_timeout_s
    try:
      raw = await _read_body(request, limits, deadline)
    except _requests.RequestError as e:  # the rest of the body is not read: close the connection after the answer
      return error(e.status, e.message, close=True)
    except ClientDisconnect:
      return error(400, "client disconnected", close=True)
    try:
      req = _requests.validate(_requests.parse_json(raw, limits.max_json_depth), max_tools=limits.max_tools,
                               max_messages=limits.max_messages)
      tools = _requests.request_tools(req)
      mode, forced = _requests.tool_choice(req, tools)
      _requests.check_history(req, {t.name for t in tools})
      future = engine.submit(_engine.Job(req, tools, mode, forced))
      outcome = await asyncio.wrap_future(future)
    except _requests.RequestError as e:
      return error(e.status, e.message)
    except Exception as e:  # noqa: BLE001  (a bug must not take the server down)
      log.error("internal error:\n%s", traceback.format_exc())
      return error(500, f"internal error: {type(e).__name__}: {e}")
    model = req.model or backend.name
    if req.stream:
      events = stream_events(outcome, model, bool(req.stream_options and req.stream_options.include_usage))

      async def gen():
        for e in events:
          yield e

      return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return JSONResponse(completion(outcome, model))

  async def http_error(request: Request, exc: HTTPException) -> Response:
    message = {404: f"no route {request.url.path}", 405: f"method {request.method} is not allowed for "
               f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
    return error(exc.status_code, message)

  async def server_error(request: Request, exc: Exception) -> Response:
    return error(500, f"internal error: {type(exc).__name__}")

  routes = [Route("/health", health, methods=["GET"]), Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"])]
  return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})


class ReadTimeoutH11Protocol(H11Protocol):
  """uvicorn's h11 protocol with a read deadline: a connection that has not completed its request head within
  `read_timeout_s` of opening (or of its previous response) is closed. uvicorn has only a keep-alive timer, which
  any byte received cancels, so a client trickling a header one byte at a time would otherwise hold its connection
  (and a slot of the connection limit) forever."""

  read_timeout_s: float = 10.0

  def connection_made(self, transport) -> None:
    super().connection_made(transport)
    self._read_timer = None
    self._arm()

  def _arm(self) -> None:
    if self._read_timer is not None:
      self._read_timer.cancel()
    self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timeout)

  def _read_timeout(self) -> None:
    self._read_timer = None
    if self.transport.is_closing():
      return
    waiting_for_head = self.conn.their_state is h11.IDLE
    idle_after_response = self.cycle is not None and self.cycle.response_complete
    if waiting_for_head or idle_after_response:  # a request being answered is the app's to time out (408)
      self.transport.close()

  def handle_events(self) -> None:
    before = self.cycle
    super().handle_events()
    if self.cycle is not before and self.cycle is not None:  # a new request head: its body has until the deadline
      left = 0.0 if self._read_timer is None else max(self._read_timer.when() - self.loop.time(), 0.0)
      self.scope["state"]["deadline"] = time.monotonic() + left

  def on_response_complete(self) -> None:
    super().on_response_complete()
    if not self.transport.is_closing():
      self._arm()

  def connection_lost(self, exc) -> None:
    if self._read_timer is not None:
      self._read_timer.cancel()
      self._read_timer = None
    super().connection_lost(exc)
