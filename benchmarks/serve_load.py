"""Bounded concurrent load test of `python -m toolgen_jax.serve` on 127.0.0.1.

  python benchmarks/serve_load.py --workdir=demo --requests=400 --concurrency=8

Starts the server as a subprocess on a free loopback port, sends `--requests` valid /v1/chat/completions requests
from `--concurrency` client threads (a fixed total: the loop is bounded), then malformed and oversized bodies, then
checks /health. Reports requests served, errors, p50/p99 latency and throughput; the last stdout line is a JSON object.
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
    conn.request("POST", "/v1/chat/completions", body=raw, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"null")
  finally:
    conn.close()


def start_server(workdir: str, max_body_bytes: int) -> tuple[subprocess.Popen, int]:
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-m", "toolgen_jax.serve", f"--workdir={workdir}", "--host=127.0.0.1",
                           "--port=0", f"--max_body_bytes={max_body_bytes}"], stdout=subprocess.PIPE, text=True,
                          env=env, cwd=ROOT)
  line = proc.stdout.readline()  # "serving NAME on http://127.0.0.1:PORT/v1/chat/completions"
  if "http://127.0.0.1:" not in line:
    proc.kill()
    raise RuntimeError(f"server did not start: {line!r}")
  return proc, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="demo")
  ap.add_argument("--requests", type=int, default=400)
  ap.add_argument("--concurrency", type=int, default=8)
  ap.add_argument("--timeout_s", type=float, default=30.0)
  ap.add_argument("--max_body_bytes", type=int, default=2**20)
  a = ap.parse_args()
  proc, port = start_server(a.workdir, a.max_body_bytes)
  try:
    work: queue.Queue = queue.Queue()
    for i in range(a.requests):
      msgs = [{"role": "user", "content": QUERIES[i % len(QUERIES)]}]
      work.put(json.dumps({"model": "toolgen", "messages": msgs, "tools": TOOLS}).encode())
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
        except Exception as e:  # a dropped connection counts as an error, never stops the test
          status, ok = -1, False
          with lock:
            failures.append(f"{type(e).__name__}: {e}")
        with lock:
          lat.append(time.perf_counter() - t0)
          statuses.append(status if ok else -abs(status))

    post(port, work.queue[0], a.timeout_s)  # warm-up (first request compiles / imports)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(a.concurrency)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    wall = time.perf_counter() - t0
    served = sum(s == 200 for s in statuses)
    ms = np.asarray(lat) * 1e3
    bad_json_status, bad_json = post(port, b'{"messages": [', a.timeout_s)
    big_status, big = post(port, b"x" * (a.max_body_bytes + 1), a.timeout_s)
    bad_field_status, bad_field = post(port, json.dumps({"messages": "hi"}).encode(), a.timeout_s)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=a.timeout_s)
    conn.request("GET", "/health")
    alive = conn.getresponse().status == 200
    conn.close()
    result = {
        "workdir": a.workdir, "requests": a.requests, "concurrency": a.concurrency, "served_ok": served,
        "errors": a.requests - served, "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2),
        "throughput_rps": round(a.requests / wall, 1),
        "malformed_json": [bad_json_status, bad_json["error"]["message"][:60]],
        "oversized_body": [big_status, big["error"]["message"][:60]],
        "malformed_field": [bad_field_status, bad_field["error"]["message"][:60]],
        "alive_after": alive and proc.poll() is None, "first_failures": failures[:3],
        "machine": f"{platform.machine()} nproc={os.cpu_count()}",
    }
    print(f"served {served}/{a.requests} at concurrency {a.concurrency}: p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms, {result['throughput_rps']} req/s; malformed -> {bad_json_status}, "
          f"oversized -> {big_status}; alive after: {result['alive_after']}")
    print(json.dumps(result))
  finally:
    proc.terminate()
    proc.wait(timeout=10)


if __name__ == "__main__":
  main()
