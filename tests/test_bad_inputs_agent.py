"""Issue #17, agent steps and the REST executor: every bad argument is an error observation the model reads (never an
exception out of `run_episode`, never a call), and the REST executor's limits hold against a hostile server or URL.
Property tests feed random JSON documents to `schema.parse_arguments` and `loop.run_episode`."""

import json
import socket
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolgen_jax.agent import executors as E
from toolgen_jax.agent import loop
from toolgen_jax.agent import schema as S
from toolgen_jax.agent.policy import ScriptedPolicy, ScriptedStep
from toolgen_jax.data.records import Tool, ToolCorpus

NESTED = {"type": "object", "properties": {
    "city": {"type": "string"},
    "opts": {"type": "object", "properties": {"days": {"type": "number"}, "unit": {"type": "string"}}},
    "xs": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}},
}, "required": ["city"]}


class Recorder:

  def __init__(self):
    self.calls = []

  def __call__(self, tool, arguments):
    self.calls.append((tool.name, arguments))
    return E.ExecutionResult(response="ok")


def one_step(arguments_text, parameters=NESTED):
  """The observation of one step calling a tool with `arguments_text`, and the calls that reached the executor."""
  corpus = ToolCorpus([Tool(0, "weather", "weather", parameters=parameters)])
  ex = Recorder()
  ep = loop.run_episode("q", ScriptedPolicy([ScriptedStep("t", 0, arguments_text)]), ex, corpus, max_steps=1)
  (step,) = ep.steps
  return step, ex.calls


def refused(arguments_text, parameters=NESTED, match=""):
  step, calls = one_step(arguments_text, parameters)
  assert calls == [] and step.decision.kind == "invalid_arguments", step.decision
  obs = json.loads(step.observation)
  assert obs["response"] == "" and match in obs["error"], obs["error"]
  return obs["error"]


# ---------------------------------------------------------------------------------------------------------------
# run_episode crashes that are now error observations.


def test_arguments_nested_100k_deep():
  refused('{"city": ' + "[" * 100_000 + "]" * 100_000 + "}", match="characters long")  # the size limit first
  refused('{"city": ' + "[" * 30_000 + "]" * 30_000 + "}", match="nested deeper than")  # under it: the depth limit
  refused('{"city": "x", "opts": ' + '{"a": ' * 40 + "1" + "}" * 41, match="nested deeper than 32")


def test_5000_digit_integer_literal_and_string():
  refused('{"city": "x", "opts": {"days": ' + "9" * 5000 + "}}", match="integer literal of 5000 digits")
  # as a string in a number field: coercion leaves it alone, the type check names it (no int() of 5000 digits)
  refused('{"city": "x", "opts": {"days": "' + "9" * 5000 + '"}}', match="'opts/days'")


def test_tool_whose_parameters_is_a_list():
  refused('{"city": "x"}', parameters=[1, 2], match="parameter schema is unusable")
  refused('{"city": "x"}', parameters={"type": "object", "properties": [1]}, match="parameter schema is unusable")


def test_arguments_that_are_not_text():
  refused(123, match="must be text")


# ---------------------------------------------------------------------------------------------------------------
# Nested problems that used to reach the executor.


def test_nested_extra_key():
  refused('{"city": "x", "opts": {"days": 1, "rm": "-rf"}}', match="'opts': unknown argument(s) ['rm']")
  refused('{"city": "x", "xs": [{"n": 1, "sneaky": 2}]}', match="'xs/0': unknown argument(s) ['sneaky']")


def test_nested_nan_and_infinities():
  refused('{"city": "x", "opts": {"days": NaN}}', match="NaN is not a JSON number")
  refused('{"city": "x", "opts": {"days": -Infinity}}', match="-Infinity is not a JSON number")
  refused('{"city": "x", "opts": {"days": 1e999}}', match="out of range")
  refused('{"city": "x", "opts": {"days": "1e999"}}', match="'opts/days'")  # a string coerced to a number field
  # a dict handed over directly (not text) with a nested NaN: the schema check itself refuses it
  _, errors = S.validate_arguments({"city": "x", "opts": {"days": float("nan")}}, S.normalize_schema(NESTED))
  assert errors == ["'opts/days': non-finite number"]


def test_duplicate_keys_at_any_depth():
  refused('{"city": "x", "city": "y"}', match="duplicate key 'city'")
  refused('{"city": "x", "opts": {"unit": "c", "unit": "f"}}', match="duplicate key 'unit'")


def test_ten_megabyte_string():
  refused('{"city": "' + "x" * 10_000_000 + '"}', match="characters long")
  _, errors = S.validate_arguments({"city": "x" * 70_000}, S.normalize_schema(NESTED))
  assert errors and "more than 65536 characters" in errors[0]


def test_lone_surrogate():
  refused('{"city": "\\ud800"}', match="lone surrogate")
  refused('{"city": "x", "opts": {"unit": "\\udfff"}}', match="lone surrogate")


def test_valid_nested_arguments_still_reach_the_executor_coerced():
  step, calls = one_step('{"city": "Paris", "opts": {"days": "3"}, "xs": [{"n": 2}]}')
  assert step.decision.kind == "call"
  assert calls == [("weather", {"city": "Paris", "opts": {"days": 3}, "xs": [{"n": 2}]})]


def test_a_tool_id_that_is_not_an_int_is_an_invalid_tool():
  corpus = ToolCorpus([Tool(0, "weather", "weather", parameters=NESTED)])
  ep = loop.run_episode("q", ScriptedPolicy([ScriptedStep("t", "0", "{}")]), Recorder(), corpus, max_steps=1)
  assert ep.steps[0].decision.kind == "invalid_tool"


# ---------------------------------------------------------------------------------------------------------------
# Property tests.

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(["city", "opts", "days", "unit", "xs",
                                                                               "n", "type", "properties", "items",
                                                                               "required", "enum", "x"]),
                                                              kids, max_size=4),
    max_leaves=25)
_TEXT = _JSON.map(lambda v: json.dumps(v, allow_nan=True)) | st.text(max_size=40)
_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(text=_TEXT | st.none() | st.integers())
def test_property_parse_arguments_only_argument_errors(text):
  try:
    value = S.parse_arguments(text)
  except S.ArgumentError:
    return
  assert isinstance(value, dict)


@_SETTINGS
@given(text=_TEXT, parameters=_JSON | st.just(NESTED))
def test_property_run_episode_only_error_observations(text, parameters):
  step, calls = one_step(text, parameters)
  if step.decision.kind == "call":
    assert len(calls) == 1
    json.dumps(calls[0][1], allow_nan=False)  # what reached the executor is plain finite JSON
  else:
    assert step.decision.kind == "invalid_arguments" and calls == []
    assert json.loads(step.observation)["error"].startswith("invalid arguments for weather")


# ---------------------------------------------------------------------------------------------------------------
# REST executor.


class RawServer:
  """A loopback TCP server whose per-connection behaviour is a function of the socket (records request heads)."""

  def __init__(self, handle):
    self.sock = socket.socket()
    self.sock.bind(("127.0.0.1", 0))
    self.sock.listen(8)
    self.port = self.sock.getsockname()[1]
    self.heads, self.handle = [], handle
    threading.Thread(target=self._serve, daemon=True).start()

  def _serve(self):
    while True:
      try:
        conn, _ = self.sock.accept()
      except OSError:
        return
      threading.Thread(target=self._one, args=(conn,), daemon=True).start()

  def _one(self, conn):
    with conn:
      head = b""
      while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
          return
        head += chunk
      self.heads.append(head.decode("latin-1"))
      try:
        self.handle(conn)
      except OSError:
        pass

  def close(self):
    self.sock.close()


def _drip_headers(conn):
  for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
    conn.sendall(bytes([b]))
    time.sleep(0.4)


def _ok(conn):
  conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def test_rest_deadline_covers_status_line_and_headers():
  srv = RawServer(_drip_headers)
  try:
    ex = E.RestExecutor(f"http://127.0.0.1:{srv.port}/{{tool_name}}", timeout_s=2)
    t0 = time.monotonic()
    r = ex(Tool(0, "slow", "slow"), {})
    took = time.monotonic() - t0
  finally:
    srv.close()
  assert r.error == "tool 'slow' timed out after 2s" and not r.response
  assert took < 3.0, took  # was 12 s: every header byte reset the per-read timeout


def test_rest_one_parse_for_check_and_connection():
  srv = RawServer(_ok)
  try:
    for url in (f"http://example.com@127.0.0.1:{srv.port}/x", f"http://example.com:80@127.0.0.1:{srv.port}/x"):
      r = E.RestExecutor(lambda t, u=url: u)(Tool(0, "x", "x"), {})
      assert r.error.startswith("refused to call") and "user-info" in r.error, r.error
    assert srv.heads == []  # nothing connected
    r = E.RestExecutor(f"http://127.0.0.1:{srv.port}/{{tool_name}}")(Tool(0, "x", "x"), {"q": 1})
    assert r.ok and r.response == "ok" and srv.heads[-1].startswith("GET /x?q=1 HTTP/1.1")
  finally:
    srv.close()
  bad = E.RestExecutor("http://127.0.0.1:notaport/x")(Tool(0, "x", "x"), {})
  assert bad.error.startswith("refused to call") and "malformed URL" in bad.error


def test_rest_url_builder_returning_a_non_string():
  r = E.RestExecutor(lambda t: 5)(Tool(0, "x", "x"), {})
  assert r.error == "refused to call 5: the URL must be text, got int"
  r = E.RestExecutor(lambda t: 1 / 0)(Tool(0, "x", "x"), {})
  assert r.error.startswith("cannot build the URL")


def test_rest_path_segments_cannot_escape_the_template():
  srv = RawServer(_ok)
  try:
    ex = E.RestExecutor(f"http://127.0.0.1:{srv.port}/api/{{tool_name}}/{{api_name}}")
    assert ex(Tool(0, "..", "admin"), {}).ok
    assert ex(Tool(0, "a/../../b", "c"), {}).ok
  finally:
    srv.close()
  assert srv.heads[0].startswith("GET /api/%2E%2E/admin HTTP/1.1")
  assert srv.heads[1].startswith("GET /api/a%2F..%2F..%2Fb/c HTTP/1.1")
  r = E.RestExecutor(lambda t: "http://127.0.0.1/api/../admin")(Tool(0, "x", "x"), {})
  assert r.error.endswith("'.' or '..' path segments are not allowed")
