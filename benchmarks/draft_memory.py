"""Model calls of the agent's thought decode with prompt-lookup drafts, with and without the memory of earlier
outputs (`ModelPolicy.draft_memory`), on the load test's requests (`serve_load.workdir_requests`).

  python benchmarks/draft_memory.py --workdir=workdirs/agent --batches=12 --drafts=1,2

Batches of 4 thought prompts in turn; for each batch and draft count, the calls of the decode with no memory, with
the thoughts of earlier batches' *other* queries (what a server gains on new queries), and with every earlier
thought (the same query seen before included). The calls are exact counts (no timing noise); the texts are checked
equal in all three. The last stdout line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parent))

import numpy as np


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="workdirs/agent")
  ap.add_argument("--batches", type=int, default=12)
  ap.add_argument("--drafts", default="1,2")
  ap.add_argument("--memory", type=int, default=1024)
  a = ap.parse_args()
  from serve_load import workdir_requests
  from toolgen_jax.agent.loader import load_backend
  from toolgen_jax.serve import _engine, _requests
  backend = load_backend(a.workdir, draft_memory=a.memory)
  pol = backend.policy
  engine = _engine.Engine(backend, max_batch=4)
  bodies = workdir_requests(a.workdir, 4 * a.batches, 4)

  def prompts(batch):
    texts, chats = [], []
    for raw in batch:
      req = _requests.validate(_requests.parse_json(raw), max_tools=128, max_messages=256)
      tools = _requests.request_tools(req)
      mode, forced = _requests.tool_choice(req, tools)
      step = engine._prepare(_engine.Job(req, tools, mode, forced))
      texts.append(req.messages[-1].content)
      chats.append(pol.codec.chat_text(pol._turns(step.history, "think")))
    return texts, chats

  def decode(chats, memory, draft):
    """The policy's own thought decode (`generate_texts`) with its memory set to `memory`: (calls, texts, the
    memory after it: with an empty one before, -1 then each row's generated tokens)."""
    pol.draft_tokens, pol._memory = draft, list(memory[-a.memory:])
    before = pol.decode_calls
    out = pol.generate_texts(chats, pol.think_max_tokens)
    pol.release_cache(keep_shared=False)
    return pol.decode_calls - before, out, list(pol._memory)

  drafts = [int(d) for d in a.drafts.split(",")]
  seen: list[tuple[str, list[int]]] = []
  calls = {d: {"none": [], "other_queries": [], "all_earlier": []} for d in drafts}
  for b in range(a.batches):
    texts, chats = prompts(bodies[4 * b:4 * b + 4])
    other = [t for q, o in seen if q not in texts for t in [-1] + o]
    every = [t for _, o in seen for t in [-1] + o]
    outs = None
    for d in drafts:
      for name, memory in (("none", []), ("other_queries", other), ("all_earlier", every)):
        n, got, after = decode(chats, memory, d)
        if name == "none":  # each row's generated tokens, as the policy keeps them
          starts = [i for i, t in enumerate(after) if t == -1] + [len(after)]
          rows = [after[i + 1:j] for i, j in zip(starts, starts[1:])]
        if outs is not None and got != outs:
          raise SystemExit(f"batch {b}: the texts differ with draft={d}, memory={name}")
        outs = got
        calls[d][name].append(n)
    print(f"batch {b}: " + "; ".join(f"draft {d}: " + ", ".join(f"{k} {v[-1]}" for k, v in calls[d].items())
                                     for d in drafts), file=sys.stderr, flush=True)
    seen += list(zip(texts, rows))
  summary = {f"draft_{d}": {k: {"calls": v, "mean": round(float(np.mean(v)), 1)} for k, v in c.items()}
             for d, c in calls.items()}
  print(json.dumps({"workdir": a.workdir, "batches": a.batches, "memory_tokens": a.memory,
                    "distinct_queries": len({q for q, _ in seen}), **summary}))


if __name__ == "__main__":
  main()
