"""Executors (toolgen_jax/agent/executors.py): callables, REST on a loopback server started here, replay."""

import http.server
import json
import threading
import time
import urllib.parse

import pytest

from toolgen_jax.agent import executors as E
from toolgen_jax.data.records import Message, Tool, ToolCorpus, Trajectory


def _tool(name, method="GET", tool_name=None):
  return Tool(id=0, tool_name=tool_name or name, api_name=name, method=method)


# --- callables --------------------------------------------------------------------------------------------------


def test_callable_registry_calls_with_keywords_and_reports_failures():
  reg = E.CallableExecutor(timeout_s=0.5, max_response_chars=20)

  @reg.register("add")
  def add(a, b):
    return {"sum": a + b}

  reg.register("boom", lambda: 1 / 0)
  reg.register("big", lambda: "x" * 100)
  reg.register("slow", lambda: time.sleep(3))
  assert reg(_tool("add"), {"a": 2, "b": 3}) == E.ExecutionResult('{"sum": 5}', "")
  assert reg(_tool("boom"), {}).error == "ZeroDivisionError: division by zero"
  assert reg(_tool("add"), {"a": 1}).error.startswith("TypeError")
  big = reg(_tool("big"), {})
  assert big.response == "x" * 20 and "truncated" in big.error
  t0 = time.monotonic()
  assert reg(_tool("slow"), {}).error == "tool 'slow' timed out after 0.5s"
  assert time.monotonic() - t0 < 2.0
  assert reg(_tool("nope"), {}).error == "no callable is registered for tool 'nope'"
  obs = json.loads(reg(_tool("add"), {"a": 1, "b": 1}).to_observation())
  assert obs == {"error": "", "response": '{"sum": 2}'}


# --- REST -------------------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):

  def log_message(self, *a):
    pass

  def _send(self, code, body, headers=()):
    self.send_response(code)
    for k, v in headers:
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def do_GET(self):
    u = urllib.parse.urlsplit(self.path)
    q = dict(urllib.parse.parse_qsl(u.query))
    if u.path == "/echo/echo":
      self._send(200, json.dumps({"method": "GET", "args": q}).encode())
    elif u.path == "/big/big":
      self._send(200, b"y" * 5000)
    elif u.path == "/slow/slow":
      self.send_response(200)
      self.send_header("Content-Length", "100")
      self.end_headers()
      for _ in range(10):  # drips: every read is fast, the whole response is not
        self.wfile.write(b"z" * 10)
        self.wfile.flush()
        time.sleep(0.2)
    elif u.path == "/redirect/redirect":
      self._send(302, b"", [("Location", "http://10.255.255.1/steal")])
    else:
      self._send(404, b"no such tool")

  def do_POST(self):
    body = self.rfile.read(int(self.headers["Content-Length"]))
    self._send(200, json.dumps({"method": "POST", "json": json.loads(body)}).encode())


@pytest.fixture(scope="module")
def loopback():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()


def test_rest_get_and_post(loopback):
  ex = E.RestExecutor(loopback + "/{tool_name}/{api_name}", timeout_s=5)
  r = ex(_tool("echo"), {"q": "a b&c", "n": 3})
  assert r.ok and json.loads(r.response) == {"method": "GET", "args": {"q": "a b&c", "n": "3"}}
  r = ex(_tool("echo", method="POST"), {"q": ["x"], "n": 3})
  assert json.loads(r.response) == {"method": "POST", "json": {"q": ["x"], "n": 3}}


def test_rest_limits(loopback):
  ex = E.RestExecutor(loopback + "/{tool_name}/{api_name}", timeout_s=0.6, max_response_bytes=1000)
  assert ex(_tool("big"), {}).error == "response of 'big' exceeds max_response_bytes=1000"
  t0 = time.monotonic()
  assert ex(_tool("slow"), {}).error == "tool 'slow' timed out after 0.6s"
  assert time.monotonic() - t0 < 1.5
  r = ex(_tool("missing"), {})
  assert r.error == "HTTP 404 from missing: no such tool"
  r = ex(_tool("redirect"), {})
  assert "302" in r.error and not r.response  # not followed to the other host
  assert ex(_tool("echo", method="TRACE"), {}).error == "HTTP method 'TRACE' is not allowed"


def test_rest_allow_list_refuses_before_connecting():
  calls = []
  ex = E.RestExecutor(lambda t: calls.append(t) or "http://example.com/x", allowed_hosts=("127.0.0.1",))
  r = ex(_tool("x"), {})
  assert r.error == "refused to call http://example.com/x: host 'example.com' is not in the allow-list ['127.0.0.1']"
  assert E.RestExecutor("file:///etc/passwd")(_tool("x"), {}).error.endswith("(http/https only)")
  assert E.RestExecutor("http://127.0.0.1.example.com/")(_tool("x"), {}).error.startswith("refused")
  # nothing listens on port 9 (discard) on loopback: a clean error, not an exception
  assert E.RestExecutor("http://127.0.0.1:9/", timeout_s=1)(_tool("x"), {}).error.startswith("cannot reach")


# --- replay -----------------------------------------------------------------------------------------------------


def test_standardize_matches_toolbench_names():
  assert E.standardize("Get Weather (v2)!") == "get_weather_v2"
  assert E.standardize("3D Models") == "get_3d_models"
  assert E.toolbench_function_name("transitaires", "Transitaires") == "transitaires_for_transitaires"
  assert E.toolbench_function_name("Tool", "id") == "is_id_for_tool"
  assert len(E.toolbench_function_name("t" * 50, "a" * 50)) == 64


def test_replay_from_trajectories_is_order_independent_and_reports_misses():
  corpus = ToolCorpus([Tool(0, "Weather API", "Current"), Tool(0, "Weather API", "Forecast")])
  obs = json.dumps({"error": "", "response": "{'temp': 21}"})
  traj = Trajectory("t", "q", (
      Message("user", "weather?"),
      Message("assistant", thought="look", action=0, action_input='{"city": "Paris", "unit": "c"}'),
      Message("observation", obs),
      Message("assistant", action=None, action_name="Finish", action_input="{}"),
  ))
  ex = E.ReplayExecutor.from_trajectories([traj], corpus)
  assert len(ex) == 1
  r = ex(corpus[0], {"unit": "c", "city": "Paris"})
  assert r == E.ExecutionResult("{'temp': 21}", "")
  assert r.to_observation() == obs
  miss = ex(corpus[0], {"city": "Rome"})
  assert "replay cache miss" in miss.error
  assert ex(corpus[1], {}).error
  assert ex.stats == {"hits": 1, "misses": 2, "same_tool": 0}
  lenient = E.ReplayExecutor.from_trajectories([traj], corpus, on_miss="same_tool")
  assert lenient(corpus[0], {"city": "Rome"}).response == "{'temp': 21}"
  assert lenient.stats["same_tool"] == 1


def test_replay_reads_stabletoolbench_cache_layout(tmp_path):
  d = tmp_path / "Weather" / "weather_api_for_Weather"
  d.mkdir(parents=True)
  (d / "current.json").write_text(json.dumps({
      "{'city': 'Paris'}": {"error": "", "response": "sunny"},
      "{}": {"error": "", "response": {"default": True}},
  }))
  (d / "is_id.json").write_text(json.dumps({"{'id': 7}": {"error": "bad id", "response": ""}}))
  ex = E.ReplayExecutor.from_stabletoolbench_cache(tmp_path)
  assert ex(Tool(0, "Weather API", "Current"), {"city": "Paris"}) == E.ExecutionResult("sunny", "")
  assert json.loads(ex(Tool(0, "Weather API", "Current"), {}).response) == {"default": True}
  assert ex(Tool(0, "Weather API", "id"), {"id": 7}).error == "bad id"
  (d / "broken.json").write_text("{not json")
  with pytest.raises(Exception, match="broken.json"):
    E.ReplayExecutor.from_stabletoolbench_cache(tmp_path)


def test_canonical_arguments():
  assert E.canonical_arguments('{"b": 1, "a": [1, 2]}') == E.canonical_arguments({"a": [1, 2], "b": 1})
  assert E.canonical_arguments("") == E.canonical_arguments(None) == "{}"
  assert E.canonical_arguments("not json ") == "not json"
