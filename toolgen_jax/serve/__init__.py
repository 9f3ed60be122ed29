"""OpenAI-compatible server: `python -m toolgen_jax.serve --workdir=DIR [--port=8000]`.

POST /v1/chat/completions accepts `messages` and `tools` and answers one assistant step: `tool_calls` (the client
runs the tool and sends the result back as a `tool` message) or a final `content`, so agent frameworks written for
the OpenAI API can drive a trained model unchanged. The request's tools are the candidates: known tools (same name
and schema) restrict the trie to them; unknown ones are coded from their documentation into a bounded LRU cache
(`serve.tool_cache_size`). `tool_choice` auto | none | required | {"type": "function", "function": {"name"}};
`n` must be 1; `stream: true` answers with server-sent events; every answer carries `usage`. Also GET /v1/models
and GET /health.

Layers: `_http` (Starlette on uvicorn, limits on body, header, connections and read time), `_requests` (bounded
JSON, pydantic request models -> 4xx with a message), `_engine` (a worker thread that batches the requests arriving
within a short window through the policy's batched calls). Binds 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import socket
import threading
import time
from typing import Sequence

import uvicorn

from toolgen_jax.agent.backend import Backend
from toolgen_jax.agent.loader import load_backend
from toolgen_jax.serve._engine import Engine
from toolgen_jax.serve._http import Limits, ReadTimeoutH11Protocol, make_app
from toolgen_jax.serve._requests import RequestError


@dataclasses.dataclass
class Server:
  """A configured server on a bound socket: `run()` blocks; `serve_in_thread` runs it in the background."""

  backend: Backend
  engine: Engine
  uvicorn: uvicorn.Server
  sock: socket.socket
  limits: Limits

  @property
  def server_address(self) -> tuple[str, int]:
    return self.sock.getsockname()[:2]

  @property
  def url(self) -> str:
    host, port = self.server_address
    return f"http://{host}:{port}"

  def run(self) -> None:
    asyncio.run(self.uvicorn.serve(sockets=[self.sock]))

  def shutdown(self, timeout_s: float = 10.0) -> None:
    self.uvicorn.should_exit = True
    self.engine.close()

  def server_close(self) -> None:
    self.sock.close()


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 0, *, limits: Limits | None = None,
                window_s: float = 0.005, max_batch: int = 8, max_queue: int = 256, verbose: bool = False,
                wait_fraction: float = 0.02, **limit_kw) -> Server:
  """A ready server on a bound socket (port 0 = any free port: `server.server_address`). `limit_kw` override
  fields of `Limits` (max_body_bytes, max_header_bytes, max_connections, read_timeout_s, max_tools, ...)."""
  limits = dataclasses.replace(limits or Limits(), **limit_kw)
  engine = Engine(backend, window_s=window_s, max_batch=max_batch, max_queue=max_queue, wait_fraction=wait_fraction)
  protocol = type("Protocol", (ReadTimeoutH11Protocol,), {"read_timeout_s": limits.read_timeout_s})
  config = uvicorn.Config(make_app(backend, engine, limits), http=protocol, lifespan="off", ws="none",
                          limit_concurrency=limits.max_connections,
                          h11_max_incomplete_event_size=limits.max_header_bytes,
                          timeout_keep_alive=min(5, max(1, int(limits.read_timeout_s))), access_log=verbose,
                          log_level="info" if verbose else "warning", backlog=limits.max_connections)
  sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host, port))
  sock.listen(limits.max_connections)
  sock.setblocking(False)
  return Server(backend, engine, uvicorn.Server(config), sock, limits)


def serve_in_thread(backend: Backend, **kw) -> tuple[Server, threading.Thread, str]:
  """Starts a server on a background thread -> (server, thread, base URL). Stop with server.shutdown()."""
  server = make_server(backend, **kw)
  thread = threading.Thread(target=server.run, name="toolgen-serve", daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.uvicorn.started:
    if not thread.is_alive() or time.monotonic() > deadline:
      raise RuntimeError("the server did not start")
    time.sleep(0.01)
  return server, thread, server.url


def main(argv: Sequence[str] | None = None) -> None:
  from toolgen_jax.config import base_config
  c = base_config().serve
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a trained workdir, or 'demo' for the model-free demo backend")
  ap.add_argument("--host", default=c.host)
  ap.add_argument("--port", type=int, default=c.port)
  for name in ("max_body_bytes", "max_header_bytes", "max_connections", "max_tools", "max_messages",
               "tool_cache_size", "max_batch", "max_queue"):
    ap.add_argument(f"--{name}", type=int, default=c[name])
  for name in ("read_timeout_s", "batch_window_s", "batch_wait_fraction"):
    ap.add_argument(f"--{name}", type=float, default=c[name])
  for name in ("draft_tokens", "draft_memory"):  # the policy's decoding (default: the workdir's agent config)
    ap.add_argument(f"--{name}", type=int, default=None)
  ap.add_argument("--verbose", action="store_true")
  a = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING)
  decoding = {k: getattr(a, k) for k in ("draft_tokens", "draft_memory") if getattr(a, k) is not None}
  if decoding and a.workdir == "demo":
    ap.error("--draft_tokens / --draft_memory need a trained --workdir (the demo backend has no model)")
  backend = load_backend(a.workdir, tool_cache_size=a.tool_cache_size, **decoding)
  server = make_server(backend, a.host, a.port, window_s=a.batch_window_s, wait_fraction=a.batch_wait_fraction,
                       max_batch=a.max_batch,
                       max_queue=a.max_queue, verbose=a.verbose, max_body_bytes=a.max_body_bytes,
                       max_header_bytes=a.max_header_bytes, max_connections=a.max_connections,
                       read_timeout_s=a.read_timeout_s, max_tools=a.max_tools, max_messages=a.max_messages)
  print(f"serving {backend.name} on {server.url}/v1/chat/completions", flush=True)
  try:
    server.run()
  except KeyboardInterrupt:
    pass
  finally:
    server.engine.close()
    server.server_close()


__all__ = ["Limits", "RequestError", "Server", "main", "make_server", "serve_in_thread"]
