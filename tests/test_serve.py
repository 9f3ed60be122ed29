"""The OpenAI-compatible server (toolgen_jax/serve) on loopback with the demo backend, and the chat CLI.

Malformed requests (one test each), transport limits, OpenAI details (usage, stream, tool_choice, n, /v1/models),
and the per-request tool cache; slow clients and random bodies are in test_serve_robustness.py."""

import concurrent.futures
import gc
import http.client
import io
import json
import socket
import time
import tracemalloc

import numpy as np
import pytest

from toolgen_jax import chat, serve
from toolgen_jax.agent.backend import demo_backend
from toolgen_jax.agent.policy import LexicalPolicy

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
  srv, thread, url = serve.serve_in_thread(backend, max_body_bytes=300_000, max_tools=8,
                                           max_messages=16)
  yield srv, url.split("//")[1]
  srv.shutdown()
  thread.join(10)
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


CALC = {"type": "function", "function": {
    "name": "calculator", "description": "add two numbers, sum",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}
USER = [{"role": "user", "content": "x"}]


def with_params(params, name="city_tool"):
  return {"type": "function", "function": {"name": name, "parameters": params}}


def nested_schema(depth):
  root = cur = {"type": "object", "properties": {}}
  for _ in range(depth):
    cur["properties"]["x"] = cur = {"type": "object", "properties": {}}
  return root


def test_known_tools_restrict_the_candidates_and_return_tool_calls(server):
  srv, hp = server
  status, out = completion(hp, [{"role": "user", "content": 'Weather and people in "Paris"?'}], [POPULATION])
  assert status == 200 and out["object"] == "chat.completion"
  choice = out["choices"][0]
  assert choice["finish_reason"] == "tool_calls"
  call = choice["message"]["tool_calls"][0]
  assert call["type"] == "function" and call["function"]["name"] == "population"  # weather was not offered
  assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
  usage = out["usage"]
  assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
  assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
  n_before = srv.backend.corpus.live_slots()
  completion(hp, [{"role": "user", "content": "hi"}], [WEATHER, POPULATION])
  assert srv.backend.corpus.live_slots() == n_before  # matched by name and schema: nothing coded


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


def test_unknown_tools_are_coded_for_the_request_then_callable(server):
  srv, hp = server
  before = srv.backend.corpus.live_slots()
  status, out = completion(hp, [{"role": "user", "content": 'stock price for ticker "NVDA"'}], [WEATHER, STOCK])
  call = out["choices"][0]["message"]["tool_calls"][0]["function"]
  assert call["name"] == "stock_price" and json.loads(call["arguments"]) == {"ticker": "NVDA"}
  assert srv.backend.corpus.get_id("stock_price", "stock_price") is None  # not a tool of the backend's own corpus
  assert srv.backend.corpus.live_slots() == before + 1
  completion(hp, [{"role": "user", "content": 'stock price for ticker "AMD"'}], [STOCK])
  assert srv.backend.corpus.live_slots() == before + 1  # the same tool again: the cached coding is reused
  # same name, other schema: another tool, the first one is kept
  other = json.loads(json.dumps(STOCK))
  other["function"]["parameters"]["properties"]["ticker"]["type"] = "integer"
  completion(hp, [{"role": "user", "content": "stock price 7"}], [other])
  slots = [t for t in srv.backend.corpus if t.source == "request" and t.name == "stock_price"]
  assert sorted(t.parameters["properties"]["ticker"]["type"] for t in slots) == ["integer", "string"]


def test_tool_choice_modes(server):
  _, hp = server
  q = [{"role": "user", "content": 'weather in "Lyon"'}]
  named = {"type": "function", "function": {"name": "population"}}
  _, out = completion(hp, q, [WEATHER, POPULATION], tool_choice=named)
  assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "population"
  _, out = completion(hp, q, [WEATHER], tool_choice="none")
  assert out["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in out["choices"][0]["message"]
  # the lexical demo finishes once its query matches no tool; "required" forbids Finish, "auto" allows it
  q = [{"role": "user", "content": "tell me a joke"}]
  _, out = completion(hp, q, [WEATHER], tool_choice="auto")
  assert out["choices"][0]["finish_reason"] == "stop"
  _, out = completion(hp, q, [WEATHER], tool_choice="required")
  assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "weather"


def test_stream_sends_server_sent_events(server):
  _, hp = server
  conn = http.client.HTTPConnection(hp, timeout=10)
  body = {"messages": [{"role": "user", "content": 'weather in "Paris"'}], "tools": [WEATHER], "stream": True,
          "stream_options": {"include_usage": True}}
  conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
  resp = conn.getresponse()
  assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
  events = [e[len("data: "):] for e in resp.read().decode().split("\n\n") if e]
  conn.close()
  assert events[-1] == "[DONE]"
  chunks = [json.loads(e) for e in events[:-1]]
  assert all(c["object"] == "chat.completion.chunk" for c in chunks)
  assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
  calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"] and
           "tool_calls" in c["choices"][0]["delta"]]
  assert len(calls) == 1 and calls[0]["function"]["name"] == "weather" and calls[0]["index"] == 0
  assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
  assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
  assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_models_health_and_query_strings(server):
  _, hp = server
  assert request(hp, "GET", "/health") == (200, {"status": "ok"})
  models = request(hp, "GET", "/v1/models")[1]
  assert models["object"] == "list" and models["data"][0]["id"] == "demo-lexical"
  status, out = request(hp, "POST", "/v1/chat/completions?api-version=1", {"messages": USER})
  assert status == 200 and out["choices"][0]["finish_reason"] == "stop"  # the path alone routes


@pytest.mark.parametrize("body,status,fragment", [
    ({"messages": []}, 400, "'messages': List should have at least 1 item"),
    ({"messages": "hi"}, 400, "'messages': Input should be a valid list"),
    ([1, 2], 400, "must be a JSON object"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "'messages[0].role': Input should be"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "'messages[0].content'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, 400,
     "'messages[0].content[0].type'"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "a b"}}]}, 400,
     "'tools[0].function.name': String should match pattern"),
    ({"messages": USER, "tools": [WEATHER] * 2}, 400, "duplicate function name"),
    ({"messages": USER, "tools": [WEATHER] * 9}, 400, "at most 8"),
    ({"messages": USER * 17}, 400, "at most 16"),
    ({"messages": USER, "n": 2}, 400, "only n=1 is supported"),
    ({"messages": USER, "n": "1"}, 400, "'n': Input should be a valid integer"),
    ({"messages": USER, "stream": "yes"}, 400, "'stream': Input should be a valid boolean"),
    ({"messages": USER, "tools": [WEATHER], "tool_choice": "sometimes"}, 400, "'tool_choice'"),
    ({"messages": USER, "tools": [WEATHER], "tool_choice": {"function": "weather"}}, 400,
     "'tool_choice.function': Input should be a valid dictionary"),
    ({"messages": USER, "tools": [WEATHER], "tool_choice": {"function": {"name": ["weather"]}}}, 400,
     "'tool_choice.function.name': Input should be a valid string"),
    ({"messages": USER, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "rm"}}}, 400,
     "tool_choice names function 'rm', which is not in 'tools'"),
    ({"messages": USER, "tool_choice": "required"}, 400, "'required' needs at least one tool"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "tool_calls": [{"function": {"name": "rm_rf", "arguments": "{}"}}]}],
      "tools": [WEATHER]}, 400, "not among the request's tools"),
    ({"messages": [{"role": "system", "content": "x"}]}, 400, "needs at least one user message"),
    ({"messages": USER, "tools": [with_params({"type": "object", "properties": {"city": 5}})]}, 400,
     "parameters.properties.city is not a valid JSON schema"),
    ({"messages": USER, "tools": [with_params({"type": "object", "required": "city"})]}, 400,
     "parameters.required is not a valid JSON schema"),
    ({"messages": USER, "tools": [with_params({"type": "object", "properties": {"c": {"type": "town"}}})]}, 400,
     "parameters.properties.c.type is not a valid JSON schema"),
    ({"messages": USER, "tools": [with_params({"type": "object", "properties": {"c": {"enum": []}}})]}, 400,
     "parameters.properties.c.enum is empty"),
    ({"messages": USER, "tools": [with_params({"type": "object", "properties": {"c": {"type": "string",
                                                                                      "pattern": "(("}}})]}, 400,
     "parameters.properties.c.pattern is not a valid JSON schema"),
    ({"messages": USER, "tools": [with_params({"type": "array"})]}, 400, "must be a JSON-schema object"),
    ({"messages": USER, "tools": [with_params(nested_schema(420))]}, 400, "nested deeper than 64 levels"),
])
def test_malformed_requests_get_4xx_with_a_message(server, body, status, fragment):
  _, hp = server
  got, out = request(hp, "POST", "/v1/chat/completions", body)
  assert got == status and fragment in out["error"]["message"], out
  assert out["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw,fragment", [
    (b'{"messages": [', "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # the parser's recursion guard
    (b'{"messages": [{"role": "user", "content": "x"}], "n": ' + b"1" * 5000 + b"}", "not valid JSON"),
    (b'{"messages": [{"role": "user", "content": ' + b"7" * 5000 + b"}]}", "not valid JSON"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": NaN}', "not valid JSON"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": '
     b'{"name": "\\ud800abc"}}]}', "not valid Unicode"),
    (b'{"messages": [{"role": "user", "content": "\\udfff"}]}', "not valid Unicode"),
])
def test_unparseable_bodies_get_400(server, raw, fragment):
  _, hp = server
  got, out = request(hp, "POST", "/v1/chat/completions", raw=raw)
  assert got == 400 and fragment in out["error"]["message"], out
  assert request(hp, "GET", "/health")[0] == 200


def test_a_5000_digit_number_in_a_message_is_answered(server):
  _, hp = server
  status, out = completion(hp, [{"role": "user", "content": "sum " + "7" * 5000 + " and 2"}], [CALC])
  assert status == 200 and out["choices"][0]["finish_reason"] in ("stop", "tool_calls")


def raw_exchange(hp, data: bytes, timeout=5.0) -> bytes:
  host, port = hp.split(":")
  with socket.create_connection((host, int(port)), timeout=timeout) as s:
    s.sendall(data)
    out = b""
    while True:
      try:
        chunk = s.recv(65536)
      except (ConnectionResetError, socket.timeout):
        break
      if not chunk:
        break
      out += chunk
  return out


@pytest.mark.slow  # 10 s of the fast tier's budget
def test_transport_errors_and_server_stays_up(server):
  _, hp = server
  got, out = request(hp, "POST", "/v1/chat/completions", raw=b"x" * 400_000)
  assert got == 413 and "exceeds the limit of 300000 bytes" in out["error"]["message"]
  try:  # far past the limit: the server answers 413 without reading and closes; a client may see a broken pipe
    assert request(hp, "POST", "/v1/chat/completions", raw=b"x" * 3_000_000)[0] == 413
  except (BrokenPipeError, ConnectionResetError):
    pass
  assert request(hp, "GET", "/v1/chat/completions")[0] == 405
  assert request(hp, "POST", "/v2/whatever", {})[0] == 404
  head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
  assert raw_exchange(hp, head + b"\r\n").startswith(b"HTTP/1.1 411 ")  # no Content-Length
  reply = raw_exchange(hp, head + b"Content-Length: 5\r\nContent-Length: 7\r\n\r\nabcde")
  assert reply.startswith(b"HTTP/1.1 400 ")  # conflicting lengths: refused, not guessed
  reply = raw_exchange(hp, head + b"Content-Length: -1\r\n\r\n")
  assert reply.startswith(b"HTTP/1.1 400 ")
  reply = raw_exchange(hp, head + b"X-Big: " + b"a" * 20_000 + b"\r\nContent-Length: 2\r\n\r\n{}")
  assert reply.startswith(b"HTTP/1.1 400 ")  # a request head over max_header_bytes
  body = json.dumps({"messages": USER}).encode()
  chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
  assert raw_exchange(hp, chunked + b"").startswith(b"HTTP/1.1 200 ")
  assert request(hp, "GET", "/health") == (200, {"status": "ok"})


def test_unknown_tools_without_add_tools_get_422():
  backend = demo_backend()
  backend.add_tools = None
  srv, thread, url = serve.serve_in_thread(backend)
  try:
    got, out = completion(url.split("//")[1], [{"role": "user", "content": "x"}], [WEATHER, STOCK])
    assert got == 422 and "unknown tools ['stock_price']" in out["error"]["message"]
  finally:
    srv.shutdown()
    thread.join(10)
    srv.server_close()


def test_internal_errors_are_500_and_do_not_stop_the_server():
  backend = demo_backend()

  class Broken(LexicalPolicy):

    def think(self, history):
      raise RuntimeError("model exploded")

  backend.policy = Broken(backend.corpus)
  srv, thread, url = serve.serve_in_thread(backend)
  try:
    hp = url.split("//")[1]
    got, out = completion(hp, [{"role": "user", "content": "x"}], [WEATHER])
    assert got == 500 and "model exploded" in out["error"]["message"] and out["error"]["type"] == "server_error"
    assert request(hp, "GET", "/health")[0] == 200
  finally:
    srv.shutdown()
    thread.join(10)
    srv.server_close()


def test_requests_in_one_window_are_decided_as_one_batch():
  """The engine batches concurrent requests: with a wide window, 6 simultaneous requests share batches, their
  arguments too (one `arguments_batch` per batch), and the policy's step cache is released after each batch."""
  backend = demo_backend()
  seen = []

  argument_batches, released = [], []

  class Recording(LexicalPolicy):

    def choose_tool_batch(self, steps, *, k=1):
      seen.append(len(steps))
      return super().choose_tool_batch(steps, k=k)

    def arguments(self, history, thought, tool):
      raise AssertionError("arguments are filled in batches")

    def arguments_batch(self, steps):
      argument_batches.append(len(steps))
      return [LexicalPolicy.arguments(self, h, t, tool) for h, t, tool in steps]

    def release_cache(self):
      released.append(1)

  backend.policy = Recording(backend.corpus)
  srv, thread, url = serve.serve_in_thread(backend, window_s=0.5, max_batch=8)
  try:
    hp = url.split("//")[1]
    queries = ['weather in "Paris"', 'people in "Lyon"', 'weather in "Tokyo"'] * 2
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      outs = list(pool.map(lambda q: completion(hp, [{"role": "user", "content": q}], [WEATHER, POPULATION]),
                           queries))
    assert all(status == 200 for status, _ in outs)
    names = [o["choices"][0]["message"]["tool_calls"][0]["function"]["name"] for _, o in outs]
    assert names == ["weather", "population", "weather"] * 2  # each request got its own answer
    assert sum(seen) == 6 and max(seen) > 1, seen
    assert argument_batches == seen and len(released) == len(seen)  # one arguments call per batch, cache dropped
    args = [json.loads(o["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) for _, o in outs]
    assert [a["city"] for a in args] == ["Paris", "Lyon", "Tokyo"] * 2
  finally:
    srv.shutdown()
    thread.join(10)
    srv.server_close()


@pytest.mark.slow
def test_a_thousand_unknown_tools_keep_memory_and_latency_flat():
  """1,000 distinct unknown tools through a 32-entry cache: the corpus never holds more than 32 request tools, the
  late requests are as fast as the early ones, and traced memory does not grow between the 2nd and 4th quarter."""
  backend = demo_backend(tool_cache_size=32)
  srv, thread, url = serve.serve_in_thread(backend, max_tools=8)
  hp = url.split("//")[1]

  def batch(i):
    tools = [{"type": "function", "function": {
        "name": f"tool_{i}_{j}", "description": f"made-up tool {i} {j} number {i * 8 + j}",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
        for j in range(8)]
    t0 = time.perf_counter()
    status, out = completion(hp, [{"role": "user", "content": f'number {i * 8 + 3} "x"'}], tools)
    assert status == 200, out
    return time.perf_counter() - t0

  try:
    lat = [batch(i) for i in range(60)]  # 480 tools: warm-up and the first quarter ...
    gc.collect()
    tracemalloc.start()
    lat += [batch(i) for i in range(60, 90)]
    gc.collect()
    mid = tracemalloc.get_traced_memory()[0]
    lat += [batch(i) for i in range(90, 125)]  # ... to 1,000 tools
    gc.collect()
    end = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert backend.corpus.live_slots() <= 32 and len(backend.tool_cache) <= 32
    assert len(backend.corpus) == 5 + 32  # ids stay in the fixed range
    assert end - mid < 256 * 1024, (mid, end)
    early, late = np.median(lat[60:90]), np.median(lat[-30:])  # both while traced (tracing slows every request)
    assert late < 2 * early + 0.05, (early, late)
  finally:
    if tracemalloc.is_tracing():
      tracemalloc.stop()
    srv.shutdown()
    thread.join(10)
    srv.server_close()


def test_chat_cli_shows_steps_and_answers():
  out = io.StringIO()
  n = chat.chat(demo_backend(), io.StringIO('How many people live in "Lyon"?\n/tools\n/reset\n/quit\nnever\n'), out)
  text = out.getvalue()
  assert n == 1
  assert "Thought:" in text and "Action: population" in text and "Action Input: {\"city\": \"Lyon\"}" in text
  assert "Observation:" in text and "Answer:" in text and "522250" in text
  assert "[4] today" in text and "(history cleared)" in text and "never" not in text.split("(history cleared)")[1]


def test_the_batch_window_grows_with_the_last_batch_time():
  """After a slow batch the engine waits a fraction of its time for more requests: two requests 0.1 s apart, which
  a 1 ms window would decide one after the other, share a batch."""
  backend = demo_backend()

  class Slow(LexicalPolicy):

    def think_batch(self, histories):
      time.sleep(0.6)
      return super().think_batch(histories)

  backend.policy = Slow(backend.corpus)
  srv, thread, url = serve.serve_in_thread(backend, window_s=0.001, max_batch=8)
  srv.engine.wait_fraction, srv.engine.max_wait_s = 0.5, 0.5
  try:
    hp = url.split("//")[1]
    ask = lambda q: completion(hp, [{"role": "user", "content": q}], [WEATHER, POPULATION])
    assert ask('weather in "Paris"')[0] == 200  # alone: a batch of one, ~0.6 s
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      first = pool.submit(ask, 'weather in "Lyon"')
      time.sleep(0.1)
      second = pool.submit(ask, 'people in "Tokyo"')
      assert first.result()[0] == second.result()[0] == 200
    assert srv.engine.batches == [1, 2]
  finally:
    srv.shutdown()
    thread.join(10)
    srv.server_close()
