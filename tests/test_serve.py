"""The OpenAI-compatible server (toolgen_jax/serve.py) on loopback with the demo backend, and the chat CLI."""

import http.client
import io
import json
import socket

import pytest

from toolgen_jax import chat, serve
from toolgen_jax.agent.backend import demo_backend

WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "a city"}},
                   "required": ["city"]}}}
POPULATION = {"type": "function", "function": {
    "name": "population", "description": "people living in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
STOCK = {"type": "function", "function": {
    "name": "stock_price", "description": "latest stock price quote of a company ticker symbol",
    "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]}}}


@pytest.fixture(scope="module")
def server():
  backend = demo_backend()
  srv, thread, url = serve.serve_in_thread(backend, max_body_bytes=4096, max_tools=8, max_messages=16)
  yield srv, url.split("//")[1]
  srv.shutdown()
  srv.server_close()


def request(hostport, method, path, body=None, raw=None, headers=None):
  conn = http.client.HTTPConnection(hostport, timeout=10)
  data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
  conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
  resp = conn.getresponse()
  out = resp.status, json.loads(resp.read() or b"null")
  conn.close()
  return out


def completion(hostport, messages, tools=None, **kw):
  body = {"model": "toolgen", "messages": messages, **kw}
  if tools is not None:
    body["tools"] = tools
  return request(hostport, "POST", "/v1/chat/completions", body)


def test_known_tools_restrict_the_candidates_and_return_tool_calls(server):
  srv, hp = server
  status, out = completion(hp, [{"role": "user", "content": 'Weather and people in "Paris"?'}], [POPULATION])
  assert status == 200 and out["object"] == "chat.completion"
  choice = out["choices"][0]
  assert choice["finish_reason"] == "tool_calls"
  call = choice["message"]["tool_calls"][0]
  assert call["type"] == "function" and call["function"]["name"] == "population"  # weather was not offered
  assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
  n_before = len(srv.backend.corpus)
  completion(hp, [{"role": "user", "content": "hi"}], [WEATHER, POPULATION])
  assert len(srv.backend.corpus) == n_before  # matched by name and schema (descriptions may differ): nothing added


def test_round_trip_with_tool_result_ends_with_content(server):
  _, hp = server
  msgs = [{"role": "user", "content": 'weather in "Tokyo"'}]
  _, out = completion(hp, msgs, [WEATHER])
  call = out["choices"][0]["message"]["tool_calls"][0]
  msgs += [out["choices"][0]["message"],
           {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 26}'}]
  status, out = completion(hp, msgs, [WEATHER])
  assert status == 200 and out["choices"][0]["finish_reason"] == "stop"
  assert out["choices"][0]["message"]["content"] == '{"temp_c": 26}'


def test_unknown_tools_are_added_then_callable(server):
  srv, hp = server
  status, out = completion(hp, [{"role": "user", "content": 'stock price for ticker "NVDA"'}], [WEATHER, STOCK])
  call = out["choices"][0]["message"]["tool_calls"][0]["function"]
  assert call["name"] == "stock_price" and json.loads(call["arguments"]) == {"ticker": "NVDA"}
  tid = srv.backend.corpus.get_id("stock_price", "stock_price")
  assert tid is not None
  # same name, other schema: a new tool, the first one is not overwritten
  other = json.loads(json.dumps(STOCK))
  other["function"]["parameters"]["properties"]["ticker"]["type"] = "integer"
  n = len(srv.backend.corpus)
  completion(hp, [{"role": "user", "content": "stock price 7"}], [other])
  assert len(srv.backend.corpus) == n + 1
  assert srv.backend.corpus[tid].parameters["properties"]["ticker"]["type"] == "string"


def test_tool_choice(server):
  _, hp = server
  _, out = completion(hp, [{"role": "user", "content": 'weather in "Lyon"'}], [WEATHER, POPULATION],
                      tool_choice={"type": "function", "function": {"name": "population"}})
  assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "population"
  _, out = completion(hp, [{"role": "user", "content": 'weather in "Lyon"'}], [WEATHER], tool_choice="none")
  assert out["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in out["choices"][0]["message"]


@pytest.mark.parametrize("body,status,fragment", [
    ({"messages": []}, 400, "'messages' must be a non-empty list"),
    ({"messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ([1, 2], 400, "must be a JSON object"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "role must be one of"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "content must be a string"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "a b"}}]},
     400, "function.name must match"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER] * 2}, 400, "duplicate function name"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER] * 9}, 400, "at most 8"),
    ({"messages": [{"role": "user", "content": "x"}] * 17}, 400, "at most 16"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": True}, 400, "stream"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": "sometimes"}, 400,
     "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "tool_calls": [{"function": {"name": "rm_rf", "arguments": "{}"}}]}],
      "tools": [WEATHER]}, 400, "not among the request's tools"),
])
def test_malformed_requests_get_4xx_with_a_message(server, body, status, fragment):
  _, hp = server
  got, out = request(hp, "POST", "/v1/chat/completions", body)
  assert got == status and fragment in out["error"]["message"], out


def test_transport_errors_and_server_stays_up(server):
  _, hp = server
  got, out = request(hp, "POST", "/v1/chat/completions", raw=b'{"messages": [')
  assert got == 400 and "not valid JSON" in out["error"]["message"]
  got, out = request(hp, "POST", "/v1/chat/completions", raw=b"\xff\xfe")
  assert got == 400
  got, out = request(hp, "POST", "/v1/chat/completions", raw=b"x" * 5000)
  assert got == 413 and "exceeds the limit of 4096 bytes" in out["error"]["message"]
  try:  # far past the limit: the server stops reading, answers 413 and closes; a client may see a broken pipe
    assert request(hp, "POST", "/v1/chat/completions", raw=b"x" * 200_000)[0] == 413
  except (BrokenPipeError, ConnectionResetError):
    pass
  assert request(hp, "GET", "/v1/chat/completions")[0] == 405
  assert request(hp, "POST", "/v2/whatever", {})[0] == 404
  host, port = hp.split(":")
  with socket.create_connection((host, int(port)), timeout=5) as s:  # no Content-Length
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 411 " in s.recv(4096).split(b"\r\n")[0] + b" "
  assert request(hp, "GET", "/health") == (200, {"status": "ok"})
  assert request(hp, "GET", "/v1/models")[1]["data"][0]["id"] == "demo-lexical"


def test_unknown_tools_without_add_tools_get_422():
  backend = demo_backend()
  backend.add_tools = None
  srv, _, url = serve.serve_in_thread(backend)
  try:
    got, out = completion(url.split("//")[1], [{"role": "user", "content": "x"}], [WEATHER, STOCK])
    assert got == 422 and "unknown tools ['stock_price']" in out["error"]["message"]
  finally:
    srv.shutdown()
    srv.server_close()


def test_internal_errors_are_500_and_do_not_stop_the_server():
  backend = demo_backend()

  class Broken:

    def think(self, history):
      raise RuntimeError("model exploded")

  backend.policy = Broken()
  srv, _, url = serve.serve_in_thread(backend)
  try:
    hp = url.split("//")[1]
    got, out = completion(hp, [{"role": "user", "content": "x"}], [WEATHER])
    assert got == 500 and "model exploded" in out["error"]["message"]
    assert request(hp, "GET", "/health")[0] == 200
  finally:
    srv.shutdown()
    srv.server_close()


def test_chat_cli_shows_steps_and_answers():
  out = io.StringIO()
  n = chat.chat(demo_backend(), io.StringIO('How many people live in "Lyon"?\n/tools\n/reset\n/quit\nnever\n'), out)
  text = out.getvalue()
  assert n == 1
  assert "Thought:" in text and "Action: population" in text and "Action Input: {\"city\": \"Lyon\"}" in text
  assert "Observation:" in text and "Answer:" in text and "522250" in text
  assert "[4] today" in text and "(history cleared)" in text and "never" not in text.split("(history cleared)")[1]
