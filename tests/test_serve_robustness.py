"""The server under hostile clients, on loopback only: slow clients holding partial request heads or bodies are
closed within the read timeout while /health and a valid request still answer in under a second, and random JSON
bodies never produce a 5xx or a dropped connection (hypothesis)."""

import http.client
import json
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolgen_jax import serve
from toolgen_jax.agent.backend import demo_backend

READ_TIMEOUT_S = 3.0
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def server():
  srv, thread, url = serve.serve_in_thread(demo_backend(), read_timeout_s=READ_TIMEOUT_S, max_connections=128,
                                           max_body_bytes=65_536)
  host, port = srv.server_address
  yield host, port
  srv.shutdown()
  thread.join(10)
  srv.server_close()


def post(host, port, raw: bytes, timeout=10.0):
  conn = http.client.HTTPConnection(host, port, timeout=timeout)
  try:
    conn.request("POST", "/v1/chat/completions", body=raw, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()
  finally:
    conn.close()


def timed_get(host, port, path):
  t0 = time.perf_counter()
  conn = http.client.HTTPConnection(host, port, timeout=5)
  conn.request("GET", path)
  status = conn.getresponse().status
  conn.close()
  return status, time.perf_counter() - t0


def test_slow_clients_are_closed_and_do_not_pin_the_server(server):
  host, port = server
  valid = json.dumps({"messages": [{"role": "user", "content": 'weather in "Paris"'}], "tools": [WEATHER]}).encode()
  socks = []
  try:
    for i in range(50):  # 40 hold a partial request head, 10 a head and half of the promised body
      s = socket.create_connection((host, port), timeout=READ_TIMEOUT_S + 5)
      if i < 40:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
      else:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"messages\": ")
      socks.append(s)
    t_open = time.monotonic()
    # While they hang: the server keeps answering, fast.
    for _ in range(3):
      status, dt = timed_get(host, port, "/health")
      assert status == 200 and dt < 1.0, dt
      t0 = time.perf_counter()
      status, body = post(host, port, valid)
      assert status == 200 and time.perf_counter() - t0 < 1.0
      assert json.loads(body)["choices"][0]["finish_reason"] == "tool_calls"
      s = socks[0]
      s.sendall(b"p")  # trickling bytes does not extend the deadline
      time.sleep(0.3)
    # Every slow connection is closed (or answered 408) by the server within the read timeout.
    replies = []
    for s in socks:
      data = b""
      while True:
        try:
          chunk = s.recv(4096)
        except ConnectionResetError:
          break
        if not chunk:
          break
        data += chunk
      replies.append(data)
    closed_after = time.monotonic() - t_open
    assert closed_after < READ_TIMEOUT_S + 2.0, closed_after
    assert all(r == b"" for r in replies[:40])  # a partial head gets no answer, just the close
    assert all(r.startswith(b"HTTP/1.1 408 ") for r in replies[40:]), replies[40][:80]
  finally:
    for s in socks:
      s.close()
  assert timed_get(host, port, "/health")[0] == 200


def test_connections_over_the_limit_get_503_and_the_server_recovers():
  srv, thread, url = serve.serve_in_thread(demo_backend(), read_timeout_s=2.0, max_connections=8)
  host, port = srv.server_address
  socks = []
  try:
    for _ in range(8):
      socks.append(socket.create_connection((host, port), timeout=5))
    time.sleep(0.2)
    assert timed_get(host, port, "/health")[0] == 503
    for s in socks:
      s.close()
    time.sleep(0.3)
    assert timed_get(host, port, "/health")[0] == 200
  finally:
    srv.shutdown()
    thread.join(10)
    srv.server_close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25)
keys = st.sampled_from(["messages", "tools", "tool_choice", "n", "stream", "model", "stream_options", "role",
                        "content", "function", "name", "parameters", "type", "tool_calls", "arguments"])
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", "system", "x"]) | json_values},
                                optional={"content": json_values, "tool_calls": json_values, "name": json_values})
bodies = st.one_of(
    json_values,
    st.dictionaries(keys, json_values, max_size=6),
    st.fixed_dictionaries({"messages": st.lists(message, max_size=3)},
                          optional={"tools": st.lists(st.fixed_dictionaries({"type": st.just("function"),
                                                                             "function": json_values}), max_size=3)
                                    | json_values,
                                    "tool_choice": json_values, "n": json_values, "stream": json_values}))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_random_json_bodies_never_get_a_5xx_or_a_dropped_connection(server, body):
  host, port = server
  status, raw = post(host, port, json.dumps(body).encode())  # a dropped connection raises here
  assert 200 <= status < 500, (status, raw[:300])
  out = json.loads(raw)
  assert ("choices" in out) if status == 200 else isinstance(out["error"]["message"], str)
