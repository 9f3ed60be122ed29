"""Bounded concurrent load test of `python -m toolgen_jax.serve` on 127.0.0.1.

  python benchmarks/serve_load.py --workdir=demo --requests=400 --concurrency=8
  python benchmarks/serve_load.py --workdir=workdirs/agent --tools=workdir --requests=16 --concurrency=4 --compare

--compare runs the same requests against the previous server too (the standard-library ThreadingHTTPServer with one
lock around the model, as of commit d69ba91, read with `git show` and its imports pointed at today's modules; its
policy re-prefills every prompt, `reuse_cache=False`, as the policy of that commit did), then against today's
(Starlette/uvicorn with the batching engine, KV-cache reuse within a step), and reports both and their ratios;
the JSON also holds the run's wall time and the load average before and after.

--tools=demo sends two made-up tools with short questions (the model-free demo backend knows neither: its add_tools
path). --tools=workdir builds each request from the trained workdir's own data: a query of its dataset with its
relevant tools plus distractors, written as OpenAI tools (name and JSON schema), so a trained model serves tools it
knows (the trie is restricted to them); after the load, one request carrying a tool the model has never seen measures
the add_tools path (coding it through the codebook, vocabulary growth) and must still be served.

Starts the server as a subprocess on a free loopback port, warms it up with `--warmup` rounds of `--concurrency`
requests sent at once (so a batch's programs compile before the clock starts; the same requests for both servers;
with --tools=workdir, other queries of the dataset than the timed ones), sends
`--requests` valid /v1/chat/completions requests from `--concurrency` client threads (a fixed total: the loop is
bounded), then malformed and oversized bodies, then checks /health. Reports requests served, errors, p50/p99 latency and throughput; the last stdout line is a JSON object.
`--compilation_cache_dir=D` gives both servers JAX's persistent compilation cache in D: a run after another reads
back the programs the first compiled (the steady state of a server restarted on a machine that served before),
where a first run compiles every shape it meets, some during the timed requests.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import platform
import queue
import subprocess
import sys
import tempfile

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/tokenizers.py would shadow the
# `tokenizers` package: drop that folder, put the repo root first.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOLS = [
    {"type": "function", "function": {"name": "weather", "description": "current weather",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "population", "description": "people living in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]
QUERIES = ['weather in "Paris"', 'how many people live in "Tokyo"', 'is it warm in "London"?',
           'population of "Lyon"']


def post(port: int, raw: bytes, timeout: float) -> tuple[int, dict]:
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
  try:
    try:
      conn.request("POST", "/v1/chat/completions", body=raw, headers={"Content-Type": "application/json"})
    except (BrokenPipeError, ConnectionResetError):
      pass  # the server answered (e.g. 413 on the declared length) and closed before the body was all sent
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"null")
  finally:
    conn.close()


LEGACY_COMMIT = "d69ba91"


def legacy_server_file() -> pathlib.Path:
  """The previous server (`toolgen_jax/serve.py` at LEGACY_COMMIT) as a script, imports updated to today's
  modules (the Finish/prompt helpers moved to `toolgen_jax.prompts`, `load_backend` to `agent.loader`)."""
  src = subprocess.run(["git", "show", f"{LEGACY_COMMIT}:toolgen_jax/serve.py"], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  src = src.replace("from toolgen_jax.agent import format as fmt", "from toolgen_jax import prompts as fmt")
  src = src.replace("from toolgen_jax.agent.backend import Backend, UnknownToolsError, load_backend, resolve_tools",
                    "from toolgen_jax.agent.backend import Backend, UnknownToolsError, resolve_tools\n"
                    "from toolgen_jax.agent.loader import load_backend")
  # The old path re-prefilled the prompt for each of a step's generations: the policy without KV-cache reuse.
  src = src.replace("make_server(load_backend(a.workdir)", "make_server(load_backend(a.workdir, reuse_cache=False)")
  path = pathlib.Path(tempfile.mkdtemp()) / "legacy_serve.py"
  path.write_text(src)
  return path


def start_server(workdir: str, max_body_bytes: int, legacy: bool = False,
                 max_batch: int | None = None, server_args: str = "",
                 compilation_cache_dir: str = "") -> tuple[subprocess.Popen, int]:
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  if compilation_cache_dir:  # JAX's persistent compilation cache: programs compiled by an earlier run are read back
    env |= {"JAX_COMPILATION_CACHE_DIR": compilation_cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1"}
  entry = [str(legacy_server_file())] if legacy else ["-m", "toolgen_jax.serve"]
  extra = [] if legacy else [f"--max_batch={max_batch}"] * bool(max_batch) + server_args.split()
  proc = subprocess.Popen([sys.executable, *entry, f"--workdir={workdir}", "--host=127.0.0.1",
                           "--port=0", f"--max_body_bytes={max_body_bytes}", *extra], stdout=subprocess.PIPE,
                          text=True, env=env, cwd=ROOT)
  line = proc.stdout.readline()  # "serving NAME on http://127.0.0.1:PORT/v1/chat/completions"
  if "http://127.0.0.1:" not in line:
    proc.kill()
    raise RuntimeError(f"server did not start: {line!r}")
  return proc, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def openai_tool(t) -> dict:
  """A corpus tool as an OpenAI tool, named as ToolBench's function (`{api}_for_{tool}`, no spaces), one of the names
  the server matches a known tool by (with its schema)."""
  from toolgen_jax.agent.executors import toolbench_function_name
  name = toolbench_function_name(t.tool_name, t.api_name)
  return {"type": "function", "function": {"name": name, "description": t.description[:300],
                                           "parameters": dict(t.parameters) or {"type": "object", "properties": {}}}}


def workdir_requests(workdir: str, n: int, tools_per_request: int, seed: int = 0) -> list[bytes]:
  """n request bodies from the workdir's dataset: a query with its relevant tools plus distractors, shuffled."""
  from toolgen_jax.data import dataset as dataset_lib
  ds = dataset_lib.load(pathlib.Path(workdir) / "dataset", verify=False)
  rng = np.random.default_rng(seed)
  queries = [q for q in ds.queries if q.relevant]
  if not queries:
    raise SystemExit(f"{workdir}/dataset has no queries with relevant tools")
  out = []
  for i in range(n):
    q = queries[int(rng.integers(len(queries)))]
    ids = list(dict.fromkeys(q.relevant))[:tools_per_request]
    while len(ids) < min(tools_per_request, len(ds.corpus)):
      j = int(rng.integers(len(ds.corpus)))
      if j not in ids:
        ids.append(j)
    rng.shuffle(ids)
    out.append(json.dumps({"model": "toolgen", "messages": [{"role": "user", "content": q.text}],
                           "tools": [openai_tool(ds.corpus[j]) for j in ids]}).encode())
  return out


UNSEEN_TOOL = {"type": "function", "function": {
    "name": "lunar_phase_lookup", "description": "Phase of the moon (new, waxing, full, waning) on a given date.",
    "parameters": {"type": "object", "properties": {"date": {"type": "string", "description": "YYYY-MM-DD"}},
                   "required": ["date"]}}}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="demo")
  ap.add_argument("--requests", type=int, default=400)
  ap.add_argument("--concurrency", type=int, default=8)
  ap.add_argument("--timeout_s", type=float, default=30.0)
  ap.add_argument("--max_body_bytes", type=int, default=2**20)
  ap.add_argument("--tools", choices=("demo", "workdir"), default="demo")
  ap.add_argument("--tools_per_request", type=int, default=4)
  ap.add_argument("--compare", action="store_true", help="also run the previous server first, same requests")
  ap.add_argument("--warmup", type=int, default=1, help="rounds of `concurrency` requests at once before timing")
  ap.add_argument("--max_batch", type=int, default=0, help="the new server's --max_batch (0: its default)")
  ap.add_argument("--server_args", default="", help="more flags for the new server (e.g. '--verbose')")
  ap.add_argument("--compilation_cache_dir", default="",
                  help="JAX's persistent compilation cache for both servers (a second run reads what the first "
                       "compiled: a restarted server's steady state); empty: off")
  a = ap.parse_args()
  t_start, load_before = time.perf_counter(), os.getloadavg()
  results = {}
  for name in (("legacy", "new") if a.compare else ("new",)):
    results[name] = run(a, legacy=name == "legacy")
  out = dict(results["new"])
  if a.compare:
    out = {"legacy": results["legacy"], "new": results["new"],
           "throughput_ratio": round(results["new"]["throughput_rps"] / max(results["legacy"]["throughput_rps"],
                                                                            1e-9), 2),
           "p50_ratio": round(results["legacy"]["p50_ms"] / max(results["new"]["p50_ms"], 1e-9), 2),
           "p95_ratio": round(results["legacy"]["p95_ms"] / max(results["new"]["p95_ms"], 1e-9), 2)}
  out |= {"wall_s": round(time.perf_counter() - t_start, 1), "load_before": [round(x, 2) for x in load_before],
          "load_after": [round(x, 2) for x in os.getloadavg()], "compilation_cache_dir": a.compilation_cache_dir}
  print(json.dumps(out))


def run(a, legacy: bool = False) -> dict:
  proc, port = start_server(a.workdir, a.max_body_bytes, legacy, a.max_batch, a.server_args,
                            a.compilation_cache_dir)
  try:
    work: queue.Queue = queue.Queue()
    if a.tools == "workdir":
      bodies = workdir_requests(a.workdir, a.requests, a.tools_per_request)
    else:
      bodies = [json.dumps({"model": "toolgen", "messages": [{"role": "user", "content": QUERIES[i % len(QUERIES)]}],
                            "tools": TOOLS}).encode() for i in range(a.requests)]
    kinds: dict[str, int] = {}
    for raw in bodies:
      work.put(raw)
    lat, statuses, failures = [], [], []
    lock = threading.Lock()

    def client():
      while True:
        try:
          raw = work.get_nowait()
        except queue.Empty:
          return
        t0 = time.perf_counter()
        try:
          status, body = post(port, raw, a.timeout_s)
          ok = status == 200 and body["choices"][0]["finish_reason"] in ("tool_calls", "stop")
          if ok:
            with lock:
              kind = body.get("toolgen", {}).get("kind", "?")
              kinds[kind] = kinds.get(kind, 0) + 1
        except Exception as e:  # a dropped connection counts as an error, never stops the test
          status, ok = -1, False
          with lock:
            failures.append(f"{type(e).__name__}: {e}")
        with lock:
          lat.append(time.perf_counter() - t0)
          statuses.append(status if ok else -abs(status))

    # Warm-up, the same for both servers: `--warmup` rounds of `concurrency` requests sent at once, so that the
    # programs of a batch's shapes compile before the clock starts (one request alone compiles batch-of-one shapes).
    # With --tools=workdir every round is other queries of the dataset (seeds 1000 + round), never the timed ones:
    # the shapes a server meets in steady state (prompt lengths vary) are compiled, and nothing a server keeps from
    # a request (the drafts' memory of earlier outputs) has seen a timed request before the clock starts.
    for r in range(a.warmup):
      if a.tools != "workdir":
        warm = bodies[:max(a.concurrency, 1)]
      else:
        warm = workdir_requests(a.workdir, max(a.concurrency, 1), a.tools_per_request, seed=1000 + r)
      ts = [threading.Thread(target=post, args=(port, raw, max(a.timeout_s, 600.0))) for raw in warm]
      for t in ts:
        t.start()
      for t in ts:
        t.join()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(a.concurrency)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    wall = time.perf_counter() - t0
    served = sum(s == 200 for s in statuses)
    ms = np.asarray(lat) * 1e3
    unseen = None
    if a.tools == "workdir":  # a tool the model has never seen: coded through add_tools, then served
      raw = json.loads(bodies[0])
      raw["tools"].append(UNSEEN_TOOL)
      t1 = time.perf_counter()
      st, body = post(port, json.dumps(raw).encode(), max(a.timeout_s, 600.0))
      unseen = {"status": st, "seconds": round(time.perf_counter() - t1, 2),
                "kind": (body or {}).get("toolgen", {}).get("kind")}
    bad_json_status, bad_json = post(port, b'{"messages": [', a.timeout_s)
    big_status, big = post(port, b"x" * (a.max_body_bytes + 1), a.timeout_s)
    bad_field_status, bad_field = post(port, json.dumps({"messages": "hi"}).encode(), a.timeout_s)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=a.timeout_s)
    conn.request("GET", "/health")
    alive = conn.getresponse().status == 200
    conn.close()
    result = {
        "workdir": a.workdir, "tools": a.tools, "requests": a.requests, "concurrency": a.concurrency,
        "warmup_requests": a.warmup * max(a.concurrency, 1),
        "served_ok": served,
        "errors": a.requests - served, "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2),
        "throughput_rps": round(a.requests / wall, 3), "answers": kinds,
        "distinct_queries": len({json.loads(b)["messages"][-1]["content"] for b in bodies}), "unseen_tool_request": unseen,
        "malformed_json": [bad_json_status, bad_json["error"]["message"][:60]],
        "oversized_body": [big_status, big["error"]["message"][:60]],
        "malformed_field": [bad_field_status, bad_field["error"]["message"][:60]],
        "alive_after": alive and proc.poll() is None, "first_failures": failures[:3],
        "machine": f"{platform.machine()} nproc={os.cpu_count()}",
    }
    result["server"] = "legacy" if legacy else "new"
    print(f"[{result['server']}] served {served}/{a.requests} at concurrency {a.concurrency}: "
          f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
          f"p99 {result['p99_ms']} ms, {result['throughput_rps']} req/s; malformed -> {bad_json_status}, "
          f"oversized -> {big_status}; alive after: {result['alive_after']}", file=sys.stderr)
    return result
  finally:
    proc.terminate()
    proc.wait(timeout=10)


if __name__ == "__main__":
  main()
