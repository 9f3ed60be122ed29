"""The agent's chat format: one `Trajectory` rendered as chat turns, for training and for prompting alike.

ToolGen's agent format (`OpenAgent/agents/toolgen/toolgen.py`): each assistant step is split into three generations
so that each can be constrained on its own —
  assistant: Thought (free text)
  user:      "Generate the action."
  assistant: the tool's code tokens (decoded under the trie), or the Finish code
  user:      "Please give the input. Here is the documentation: {doc}"
  assistant: Action Input (JSON)
  user:      the Observation (ToolBench `{"error", "response"}` text)
Training on these turns (stage-2 / agent tuning) and prompting with them at inference must use the same function,
so both call `chat_turns`; `prompt_turns` renders a partial step (the prompt for one of the three generations).
"""

from __future__ import annotations

import json
from typing import Callable, Mapping, Sequence

from toolgen_jax.agent.schema import FINISH_SCHEMA
from toolgen_jax.data.records import Message, Tool

SYSTEM_PROMPT = (
    "You are an AutoGPT, capable of utilizing numerous tools and functions to complete the given task.\n"
    "At each step, give a short thought, then generate an action token; after it you receive the action's "
    "documentation and give its input as JSON; then you see the result. When you have enough information, generate "
    "the Finish action with return_type give_answer and your final_answer; if you cannot handle the task, use "
    "Finish with give_up_and_restart.")
ACTION_REQUEST = "Generate the action."
INPUT_REQUEST = "Please give the input. Here is the documentation: "

FINISH_TOOL = Tool(
    id=-1, tool_name="Finish", api_name="Finish",
    description="Give the final answer (give_answer), or give up (give_up_and_restart).",
    parameters=FINISH_SCHEMA)
"""The Finish action as a tool (ToolBench's `Finish` function); `Message.action is None` stands for it."""

# A stand-in action name (ToolBench's) for a step whose chosen tool was refused; its Message has `action=None` too.
INVALID_ACTION = "invalid_hallucination_function_name"


def is_unknown_action(m: Message) -> bool:
  """An assistant step whose action names no tool of the corpus and is not Finish (ToolBench's hallucinated names)."""
  return m.role == "assistant" and m.action is None and m.action_name != "Finish"


def known_steps(messages: Sequence[Message]) -> tuple[tuple[Message, ...], int]:
  """The messages without unknown-action steps and the observations that answered them, and how many steps went.

  Training (`stages.trajectory_examples`) and per-step evaluation (`agent.eval`) both read trajectories through this,
  so the model is never prompted with a history of a kind it was not trained on (such a step has no code to render).
  """
  out: list[Message] = []
  dropped, skip_obs = 0, False
  for m in messages:
    if is_unknown_action(m):
      dropped, skip_obs = dropped + 1, True
      continue
    if m.role == "observation" and skip_obs:
      continue
    skip_obs = False
    out.append(m)
  return tuple(out), dropped


def tool_documentation(tool: Tool) -> str:
  """The documentation shown after an action token (name, description, JSON-schema parameters)."""
  return json.dumps({"name": tool.name, "description": tool.description, "parameters": dict(tool.parameters)},
                    ensure_ascii=False)


def chat_turns(messages: Sequence[Message], *, action_text: Callable[[Message], str],
               tool_of: Callable[[Message], Tool], system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
  """Chat turns ({'role', 'content'}) of a (possibly partial) trajectory in the agent format above.

  `action_text(m)` writes an assistant message's action as the model generates it (the tool's code tokens, or the
  Finish code); `tool_of(m)` gives the tool whose documentation follows it (`FINISH_TOOL` for Finish). The source's
  own system message is replaced by `system_prompt` (None keeps the trajectory's).
  """
  out: list[dict] = []
  if system_prompt is not None:
    out.append({"role": "system", "content": system_prompt})
  for m in messages:
    if m.role == "system":
      if system_prompt is None:
        out.append({"role": "system", "content": m.content})
    elif m.role == "user":
      out.append({"role": "user", "content": m.content})
    elif m.role == "observation":
      out.append({"role": "user", "content": m.content})
    elif m.role == "assistant":
      out.extend(assistant_turns(m, action_text=action_text, tool_of=tool_of))
    else:
      raise ValueError(f"unknown message role {m.role!r}")
  return out


def assistant_turns(m: Message, *, action_text: Callable[[Message], str],
                    tool_of: Callable[[Message], Tool]) -> list[dict]:
  out = []
  if m.thought:
    out.append({"role": "assistant", "content": m.thought})
  out.append({"role": "user", "content": ACTION_REQUEST})
  out.append({"role": "assistant", "content": action_text(m)})
  out.append({"role": "user", "content": INPUT_REQUEST + tool_documentation(tool_of(m))})
  out.append({"role": "assistant", "content": m.action_input or "{}"})
  return out


def prompt_turns(history: Sequence[Message], stage: str, *, action_text: Callable[[Message], str],
                 tool_of: Callable[[Message], Tool], thought: str | None = None, tool: Tool | None = None,
                 action: str | None = None, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
  """Turns ending where the model must generate: stage 'think' (a Thought), 'act' (the action code, after
  `thought`) or 'input' (the Action Input for `tool`, whose code text is `action`)."""
  if stage not in ("think", "act", "input"):
    raise ValueError(f"stage must be think|act|input, got {stage!r}")
  out = chat_turns(history, action_text=action_text, tool_of=tool_of, system_prompt=system_prompt)
  if stage == "think":
    return out
  if thought:
    out.append({"role": "assistant", "content": thought})
  out.append({"role": "user", "content": ACTION_REQUEST})
  if stage == "act":
    return out
  if tool is None or action is None:
    raise ValueError("stage 'input' needs the chosen tool and its action text")
  out.append({"role": "assistant", "content": action})
  out.append({"role": "user", "content": INPUT_REQUEST + tool_documentation(tool)})
  return out


def finish_input(answer: str, give_up: bool = False) -> str:
  return json.dumps({"return_type": "give_up_and_restart" if give_up else "give_answer", "final_answer": answer},
                    ensure_ascii=False)


def as_text(turns: Sequence[Mapping[str, str]]) -> str:
  """Plain-text view of turns (for logs and the chat CLI's --verbose)."""
  return "\n".join(f"[{t['role']}] {t['content']}" for t in turns)
