"""Talk to a trained model and watch it call tools: `python -m toolgen_jax.chat --workdir=DIR`.

Each line you type is a query; the agent runs its ReAct loop (Thought, Action under the trie, Action Input checked
against the schema, Observation from the backend's executor) and prints every step, then the final answer. Earlier
queries stay in the history. `--workdir=demo` runs the model-free demo backend (local Python tools); a trained
workdir has no tool implementations of its own: give `--rest_url` (loopback by default) or `--replay` (recorded
responses), else every call gets an error observation. Commands: /tools, /reset, /quit.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence, TextIO

from toolgen_jax.agent import loop
from toolgen_jax.agent.backend import Backend
from toolgen_jax.agent.executors import ExecutionResult, ReplayExecutor, RestExecutor
from toolgen_jax.agent.loader import load_backend


def _no_executor(tool, arguments):
  return ExecutionResult(error="this backend has no executor for tools")


def chat(backend: Backend, lines: TextIO, out: TextIO, *, max_steps: int = 8, time_limit_s: float = 120.0,
         max_observation_chars: int = 2048, candidates: Sequence[int] | None = None, prompt: str = "> ") -> int:
  """The interactive loop over `lines` (stdin); returns the number of queries answered."""
  history: tuple = ()
  answered = 0
  executor = backend.executor or _no_executor
  out.write(f"toolgen chat — backend {backend.name}, {len(backend.corpus)} tools. /tools /reset /quit\n")
  while True:
    out.write(prompt)
    out.flush()
    line = lines.readline()
    if not line:
      break
    query = line.strip()
    if not query:
      continue
    if query in ("/quit", "/exit"):
      break
    if query == "/reset":
      history = ()
      out.write("(history cleared)\n")
      continue
    if query == "/tools":
      for t in list(backend.corpus)[:50]:
        out.write(f"  [{t.id}] {t.name}: {t.description[:80]}\n")
      continue
    printed = lambda step: out.write(loop.describe(step, backend.corpus) + "\n")
    with backend.lock:
      ep = loop.run_episode(query, backend.policy, executor, backend.corpus, candidates=candidates,
                            max_steps=max_steps, time_limit_s=time_limit_s, history=history,
                            max_observation_chars=max_observation_chars, on_step=printed)
    history = ep.trajectory.messages
    if ep.final_answer is not None:
      out.write(f"Answer: {ep.final_answer}\n")
      answered += 1
    else:
      out.write(f"(stopped: {ep.stop_reason})\n")
  return answered


def main(argv: Sequence[str] | None = None) -> None:
  from toolgen_jax.config import base_config
  c = base_config().agent
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a trained workdir, or 'demo' for the model-free demo backend")
  ap.add_argument("--max_steps", type=int, default=c.max_steps)
  ap.add_argument("--time_limit_s", type=float, default=c.time_limit_s)
  ap.add_argument("--tools", default="", help="comma-separated tool ids: restrict actions to them (GT-tools setting)")
  ap.add_argument("--rest_url", default="",
                  help="run tools over HTTP, e.g. http://127.0.0.1:8080/{tool_name}/{api_name} "
                  "(hosts limited to agent.allowed_hosts)")
  ap.add_argument("--replay", default="", help="answer tools from a StableToolBench tool_response_cache folder")
  a = ap.parse_args(argv)
  cands = [int(x) for x in a.tools.split(",") if x.strip()] or None
  backend = load_backend(a.workdir)
  if a.rest_url:
    backend.executor = RestExecutor(a.rest_url, allowed_hosts=tuple(c.allowed_hosts), timeout_s=c.tool_timeout_s,
                                    max_response_bytes=c.max_response_bytes)
  elif a.replay:
    backend.executor = ReplayExecutor.from_stabletoolbench_cache(a.replay)
  chat(backend, sys.stdin, sys.stdout, max_steps=a.max_steps, time_limit_s=a.time_limit_s,
       max_observation_chars=c.max_observation_chars, candidates=cands)


if __name__ == "__main__":
  main()
