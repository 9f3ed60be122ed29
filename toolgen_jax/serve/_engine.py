"""The batching engine between the HTTP layer and the policy: one worker thread owns the backend and decides the
steps of all requests that arrived within `window_s` of each other together.

One batch is: each request's tools resolved (`backend.request_tools`: known tools by name and schema, the others
coded into the bounded tool cache and pinned), then one `policy.think_batch` over every request's history (one
batched prefill and greedy decode for a model policy), one `policy.choose_tool_batch` (one batched prefill and one
trie-constrained beam search, each row restricted to its own request's tools by the tool mask), one
`policy.arguments_batch` for the tools the steps take (schema skeletons filled in lockstep, one batched call per
round), then each step's validation by the agent loop's own `decide`. A model policy continues each of these
prompts from the KV cache of the one before (`decoding.prefix_cache`) and drops that cache after the batch. The HTTP layer awaits a future per request, so
the event loop keeps answering /health and reading other requests while the model works.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from typing import Sequence

from toolgen_jax import prompts as fmt
from toolgen_jax.agent import loop
from toolgen_jax.agent.backend import Backend, ToolCacheFullError, UnknownToolsError, resolve_tools
from toolgen_jax.agent.policy import Policy, ToolChoice
from toolgen_jax.data.records import Message, Tool
from toolgen_jax.serve import _requests

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Outcome:
  decision: loop.Decision
  id_to_name: dict[int, str]
  prompt_tokens: int
  completion_tokens: int


@dataclasses.dataclass
class Job:
  request: _requests.ChatRequest
  tools: list[Tool]
  mode: str  # auto | none | required | named
  forced: str | None
  future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)


@dataclasses.dataclass
class _Step:
  job: Job
  ids: list[int]
  history: list[Message]
  candidates: list[int]
  allow_finish: bool


class _Replayed(Policy):
  """The policy with this step's thought, ranking and arguments already computed (by the batched calls), so that
  the loop's `decide` validates the step exactly as it does for a single request."""

  def __init__(self, policy: Policy, thought: str, ranked: Sequence[ToolChoice], tool: Tool | None = None,
               arguments: str | None = None):
    self.policy, self.thought, self.ranked = policy, thought, list(ranked)
    self.tool, self.arguments_text = tool, arguments

  def think(self, history):
    return self.thought

  def choose_tool(self, history, thought, candidates, *, k=1, allow_finish=True):
    return self.ranked[:k]

  def arguments(self, history, thought, tool):
    if self.arguments_text is not None and tool == self.tool:
      return self.arguments_text
    return self.policy.arguments(history, thought, tool)


def _prompt_tokens(policy: Policy, history: Sequence[Message]) -> int:
  count = getattr(policy, "prompt_tokens", None)
  if count is not None:
    return int(count(history))
  return sum(policy.count_tokens(" ".join(x for x in (m.content, m.thought, m.action_name, m.action_input) if x))
             for m in history)


def decide_batch(backend: Backend, steps: Sequence[_Step]) -> list[loop.Decision | Exception]:
  """One step of each request, batched through the policy (a step whose own arguments or validation raised gets
  its exception). Call with `backend.lock` held."""
  policy = backend.policy
  t0 = time.monotonic()
  thoughts = policy.think_batch([s.history for s in steps])
  t1 = time.monotonic()
  ranked = policy.choose_tool_batch([(s.history, t, s.candidates, s.allow_finish) for s, t in zip(steps, thoughts)],
                                    k=1)
  # The tool each step's `decide` will take, and its arguments for all steps in one batched call.
  tools: list[Tool | None] = []
  for s, r in zip(steps, ranked):
    c = loop.first_allowed(r, backend.corpus, candidates=s.candidates, allow_finish=s.allow_finish)
    tools.append(None if c is None else fmt.FINISH_TOOL if c.tool is None else backend.corpus[c.tool])
  todo = [i for i, t in enumerate(tools) if t is not None]
  t2 = time.monotonic()
  args: list[str | None] = [None] * len(steps)
  try:
    for i, a in zip(todo, policy.arguments_batch([(steps[i].history, thoughts[i], tools[i]) for i in todo])):
      args[i] = a
  except Exception:  # noqa: BLE001  (each step then fills its own, so one step's failure stays its own)
    args = [None] * len(steps)
  log.info("batch of %d: thought %.2f s, action %.2f s, arguments %.2f s", len(steps), t1 - t0, t2 - t1,
            time.monotonic() - t2)
  out: list[loop.Decision | Exception] = []
  for s, t, r, tool, a in zip(steps, thoughts, ranked, tools, args):
    try:
      out.append(loop.decide(s.history, _Replayed(policy, t, r, tool, a), backend.corpus, candidates=s.candidates,
                             allow_finish=s.allow_finish))
    except Exception as e:  # noqa: BLE001  (one request's failure is its own, not the batch's)
      out.append(e)
  return out


class Engine:
  """Decides request steps on a worker thread, in batches of up to `max_batch` requests that arrive within a
  window; at most `max_queue` requests wait (more get 503).

  The window is `window_s`, or `wait_fraction` of the last batch's model time when that is longer (at most
  `max_wait_s`): clients answered together send their next requests together, but their arrivals spread over the
  HTTP parsing and validation of each, and a request that misses the window waits a whole batch (seconds with a
  model) and then runs alone. Waiting 2% of a batch's time costs at most 2% latency; with
  the model-free demo backend (ms per batch) the window stays `window_s`."""

  def __init__(self, backend: Backend, *, window_s: float = 0.005, max_batch: int = 8, max_queue: int = 256,
               wait_fraction: float = 0.02, max_wait_s: float = 0.25):
    self.backend, self.window_s, self.max_batch = backend, window_s, max_batch
    self.wait_fraction, self.max_wait_s, self._last_s = wait_fraction, max_wait_s, 0.0
    self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
    self._thread = threading.Thread(target=self._run, name="toolgen-engine", daemon=True)
    self.batches: list[int] = []  # batch sizes (the last 1000), for tests and benchmarks
    self._thread.start()

  def submit(self, job: Job) -> concurrent.futures.Future:
    try:
      self._queue.put_nowait(job)
    except queue.Full:
      raise _requests.RequestError(503, "the server is busy (request queue full); retry later") from None
    return job.future

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join(timeout=10)

  def _collect(self) -> list[Job] | None:
    job = self._queue.get()
    if job is None:
      return None
    batch = [job]
    deadline = time.monotonic() + max(self.window_s, min(self.max_wait_s, self.wait_fraction * self._last_s))
    while len(batch) < self.max_batch:
      left = deadline - time.monotonic()
      try:
        nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
      except queue.Empty:
        break
      if nxt is None:
        self._queue.put(None)  # stop after this batch
        break
      batch.append(nxt)
    return batch

  def _run(self) -> None:
    while (batch := self._collect()) is not None:
      self.batches = (self.batches + [len(batch)])[-1000:]
      with self.backend.lock:
        t0 = time.monotonic()
        self._run_batch(batch)
        self._last_s = time.monotonic() - t0
      log.info("batch of %d request(s) in %.2f s", len(batch), self._last_s)

  def _prepare(self, job: Job) -> _Step:
    ids = resolve_tools(self.backend, job.tools)
    try:
      name_to_id = {t.name: i for t, i in zip(job.tools, ids)}
      history = _requests.history(job.request, name_to_id)
      if job.mode == "none" or not job.tools:
        candidates, allow_finish = [], True
      elif job.mode == "named":
        candidates, allow_finish = [name_to_id[job.forced]], False
      else:
        candidates, allow_finish = ids, job.mode != "required"
    except BaseException:
      self.backend.tool_cache.unpin(ids)
      raise
    return _Step(job, ids, history, candidates, allow_finish)

  def _run_batch(self, batch: list[Job]) -> None:
    steps = []
    for job in batch:
      try:
        steps.append(self._prepare(job))
      except UnknownToolsError as e:
        job.future.set_exception(_requests.RequestError(422, str(e)))
      except ToolCacheFullError as e:
        job.future.set_exception(_requests.RequestError(503, f"{e}; retry later"))
      except Exception as e:  # noqa: BLE001  (reported to that request as a 500; the engine keeps running)
        job.future.set_exception(e)
    if not steps:
      return
    try:
      decisions = decide_batch(self.backend, steps)
      policy = self.backend.policy
      for s, d in zip(steps, decisions):
        if isinstance(d, Exception):
          s.job.future.set_exception(d)
          continue
        done = " ".join(x for x in (d.thought, "Finish" if d.tool is None else d.tool.name, d.arguments_text) if x)
        s.job.future.set_result(Outcome(d, {i: t.name for t, i in zip(s.job.tools, s.ids)},
                                        _prompt_tokens(policy, s.history), policy.count_tokens(done)))
    except Exception as e:  # noqa: BLE001
      for s in steps:
        if not s.job.future.done():
          s.job.future.set_exception(e)
    finally:
      release = getattr(self.backend.policy, "release_cache", None)
      if release is not None:  # the step's KV cache is not needed past its batch
        release()
      for s in steps:
        self.backend.tool_cache.unpin(s.ids)

