"""The ReAct loop: Thought -> Action (tool code under the trie, or Finish) -> Action Input -> Observation, repeated.

One step (`decide`) asks the policy for a thought, a ranked list of actions and the arguments, and validates them:
the action must be Finish or one of the allowed tools (the request's candidates, else the corpus) and the arguments
must parse and fit the tool's schema. `run_episode` executes valid calls and feeds every failure back as an error
observation, up to a step and a time limit. The episode is recorded as a `records.Trajectory` in the same shape the
data readers produce from ToolBench answers (assistant message = thought + action id + action_input, then an
observation message), so episodes can be trained on (stage 2) or replayed.

Safety: model text is only ever parsed as JSON, never evaluated; nothing runs unless name and arguments validated.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import time
from typing import Any, Callable, Sequence

from toolgen_jax import prompts as fmt
from toolgen_jax.agent import schema as schema_lib
from toolgen_jax.agent.executors import ExecutionResult, Executor
from toolgen_jax.agent.policy import Policy, ToolChoice
from toolgen_jax.data.records import Message, Tool, ToolCorpus, Trajectory


@dataclasses.dataclass(frozen=True)
class Decision:
  """One assistant step before execution. `tool` None = Finish; `error` set = the step cannot run."""

  thought: str
  ranked: tuple[ToolChoice, ...]
  tool: Tool | None
  arguments_text: str
  arguments: dict | None  # validated (and coerced) arguments; None when invalid
  error: str = ""
  kind: str = "call"  # call | finish | invalid_tool | invalid_arguments

  @property
  def is_finish(self) -> bool:
    return self.kind == "finish"

  def message(self) -> Message:
    if self.kind == "invalid_tool":
      return Message(role="assistant", thought=self.thought, action=None, action_name=fmt.INVALID_ACTION,
                     action_input=self.arguments_text)
    is_fin = self.tool is None or self.tool.id == fmt.FINISH_TOOL.id
    return Message(role="assistant", thought=self.thought, action=None if is_fin else self.tool.id,
                   action_name="Finish" if is_fin else self.tool.name, action_input=self.arguments_text)


@dataclasses.dataclass(frozen=True)
class Step:
  decision: Decision
  observation: str  # "" after a valid Finish
  seconds: float


@dataclasses.dataclass(frozen=True)
class Episode:
  trajectory: Trajectory
  steps: tuple[Step, ...]
  final_answer: str | None
  stop_reason: str  # finish | give_up | step_limit | time_limit

  @property
  def finished(self) -> bool:
    return self.stop_reason == "finish"


def error_observation(message: str) -> str:
  return ExecutionResult(error=message).to_observation()


def first_allowed(ranked: Sequence[ToolChoice], corpus: ToolCorpus, *, candidates: Sequence[int] | None = None,
                  allow_finish: bool = True) -> ToolChoice | None:
  """The best-ranked action the step may take (a corpus tool among the candidates, or Finish when allowed)."""
  allowed = None if candidates is None else frozenset(int(c) for c in candidates)

  def ok(c: ToolChoice) -> bool:
    if c.tool is None:
      return allow_finish
    try:
      tid = operator.index(c.tool)  # an int (NumPy's too); anything else is not a tool id
    except TypeError:
      return False
    return 0 <= tid < len(corpus) and (allowed is None or tid in allowed)

  return next((c for c in ranked if ok(c)), None)


def decide(history: Sequence[Message], policy: Policy, corpus: ToolCorpus, *, candidates: Sequence[int] | None = None,
           allow_finish: bool = True, k: int = 1, coerce_strings: bool = True,
           allow_extra_arguments: bool = False) -> Decision:
  """One Thought / Action / Action Input, validated. Never raises for bad model output."""
  thought = policy.think(history)
  ranked = tuple(policy.choose_tool(history, thought, candidates, k=k, allow_finish=allow_finish))
  choice = first_allowed(ranked, corpus, candidates=candidates, allow_finish=allow_finish)
  if choice is None:
    got = ", ".join("Finish" if c.tool is None else str(c.tool) for c in ranked) or "nothing"
    return Decision(thought, ranked, None, "", None, kind="invalid_tool",
                    error=f"the action is not an available tool (got {got}); choose one of the listed tools"
                    + (" or Finish" if allow_finish else ""))
  tool = fmt.FINISH_TOOL if choice.tool is None else corpus[choice.tool]
  text = policy.arguments(history, thought, tool)
  try:
    args = schema_lib.check_arguments(text, tool.parameters, coerce_strings=coerce_strings,
                                      allow_extra=allow_extra_arguments and choice.tool is not None)
  except schema_lib.ArgumentError as e:
    return Decision(thought, ranked, tool, text, None, kind="invalid_arguments",
                    error=f"invalid arguments for {tool.name}: {e}")
  except Exception as e:  # a check that fails is a refusal the model sees, never a crash of the episode
    return Decision(thought, ranked, tool, text if isinstance(text, str) else "", None, kind="invalid_arguments",
                    error=f"invalid arguments for {tool.name}: cannot be checked ({type(e).__name__})")
  return Decision(thought, ranked, tool, text, args, kind="finish" if choice.tool is None else "call")


def _execute(executor: Executor, tool: Tool, args: dict) -> ExecutionResult:
  try:
    return executor(tool, args)
  except Exception as e:  # executors should not raise; if one does, the model sees it instead of the user a crash
    return ExecutionResult(error=f"executor failed: {type(e).__name__}: {e}")


def run_episode(query: str, policy: Policy, executor: Executor, corpus: ToolCorpus, *,
                candidates: Sequence[int] | None = None, max_steps: int = 8, time_limit_s: float = 120.0,
                max_observation_chars: int = 2048, history: Sequence[Message] = (), query_id: str = "",
                on_step: Callable[[Step], Any] | None = None, coerce_strings: bool = True,
                allow_extra_arguments: bool = False) -> Episode:
  """Runs the agent on `query` until Finish, the step limit, or the time limit.

  `candidates` restricts actions to those tool ids (GT-tools setting); None allows every corpus tool. `history`
  prepends earlier turns (a chat session). `on_step` is called after every step (the chat CLI prints it).
  """
  msgs: list[Message] = list(history) + [Message(role="user", content=query)]
  steps: list[Step] = []
  deadline = time.monotonic() + time_limit_s
  final, reason = None, "step_limit"
  for _ in range(max_steps):
    if time.monotonic() > deadline:
      reason = "time_limit"
      break
    t0 = time.monotonic()
    d = decide(msgs, policy, corpus, candidates=candidates, coerce_strings=coerce_strings,
               allow_extra_arguments=allow_extra_arguments)
    if d.kind in ("invalid_tool", "invalid_arguments"):
      obs = error_observation(d.error)
    elif d.is_finish:
      obs = ""
    else:
      obs = _execute(executor, d.tool, d.arguments).to_observation()
    obs = obs[:max_observation_chars]
    msgs.append(d.message())
    if obs:
      msgs.append(Message(role="observation", content=obs))
    step = Step(d, obs, time.monotonic() - t0)
    steps.append(step)
    if on_step is not None:
      on_step(step)
    if d.is_finish:
      give_up = d.arguments.get("return_type") == "give_up_and_restart"
      final = None if give_up else str(d.arguments.get("final_answer", ""))
      reason = "give_up" if give_up else "finish"
      break
  tools = tuple(candidates) if candidates is not None else ()
  traj = Trajectory(id=f"agent-{query_id or abs(hash(query)) % 10**8}", query_id=query_id, messages=tuple(msgs),
                    tools=tools)
  return Episode(traj, tuple(steps), final, reason)


def describe(step: Step, corpus: ToolCorpus | None = None) -> str:
  """Human-readable lines for one step (chat CLI)."""
  d = step.decision
  lines = [f"Thought: {d.thought}"]
  if d.kind == "invalid_tool":
    lines.append(f"Action: <refused> ({d.error})")
  else:
    lines.append(f"Action: {'Finish' if d.is_finish else d.tool.name}"
                 + (f"  (ranked: {', '.join(_choice_name(c, corpus) for c in d.ranked[:3])})" if len(d.ranked) > 1
                    else ""))
    lines.append(f"Action Input: {d.arguments_text}")
  if step.observation:
    lines.append(f"Observation: {step.observation}")
  return "\n".join(lines)


def _choice_name(c: ToolChoice, corpus: ToolCorpus | None) -> str:
  if c.tool is None:
    return "Finish"
  return corpus[c.tool].name if corpus is not None and 0 <= c.tool < len(corpus) else str(c.tool)


def trajectory_json(episode: Episode) -> str:
  return json.dumps(episode.trajectory.to_json(), ensure_ascii=False)
