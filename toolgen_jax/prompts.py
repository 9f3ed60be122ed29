"""The prompt format: every text the model is trained on or prompted with is rendered here, and only here.

Training targets and inference prompts must be byte-identical up to where generation starts (a code token the
model never saw after a given header is a code it cannot produce), so the chat rendering, the system turn, the
retrieval and memorisation prompts, the agent's turns, the Finish tool, the end-of-turn id and the inference-time
truncation have this one owner (as gemma keeps `_template.py` beside its tokenizer and sampler). Training
(`training.stages`, `training.input_pipeline`), decoding (`decoding.generative`) and the agent all import it.

Chat: every prompt goes through the tokenizer's chat template (`chat_text`); `render_chat` splits a templated
conversation into (text, is_target) segments, the target of an assistant turn being exactly what the template
appends after the generation prompt (content + end-of-turn), i.e. what the model must generate at inference.

The agent format (ToolGen `OpenAgent/agents/toolgen/toolgen.py`): each assistant step is split into three
generations so that each can be constrained on its own —
  assistant: Thought (free text)
  user:      "Generate the action."
  assistant: the tool's code tokens (decoded under the trie), or the Finish code
  user:      "Please give the input. Here is the documentation: {doc}"
  assistant: Action Input (JSON)
  user:      the Observation (ToolBench `{"error", "response"}` text)
Training on these turns (agent tuning) and prompting with them at inference both call `chat_turns`; `prompt_turns`
renders a partial step (the prompt for one of the three generations).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterable, Mapping, Sequence

from toolgen_jax.data import documents as docs_lib
from toolgen_jax.data.records import Message, Tool
from toolgen_jax.models.tokenizer import encode_text  # noqa: F401  (prompts are tokenised with it)


# ---- tokens --------------------------------------------------------------------------------------------------

def end_of_turn_id(tokenizer: Any) -> int:
  """The id the chat template closes an assistant turn with (`<|im_end|>` / `<|eot_id|>`), else EOS."""
  for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
    i = tokenizer.token_to_id(t)
    if i is not None:
      return int(i)
  return int(tokenizer.eos_id)


# ---- chat rendering ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Example:
  """Text segments (text, is_target); the loss is taken on the tokens of target segments only."""
  id: str
  segments: tuple[tuple[str, bool], ...]

  @property
  def text(self) -> str:
    return "".join(s for s, _ in self.segments)

  @property
  def target_text(self) -> str:
    return "".join(s for s, t in self.segments if t)


def chat_text(tokenizer: Any, turns: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
  """The tokenizer's chat template applied to `turns` (as text; "" for no turns)."""
  fn = getattr(tokenizer, "apply_chat_template", None)
  if fn is None:
    raise TypeError(f"{type(tokenizer).__name__} has no apply_chat_template; prompts need a chat tokenizer")
  if not turns:
    return ""
  return fn(list(turns), tokenize=False, add_generation_prompt=generation_prompt)


def render_chat(tokenizer: Any, turns: Sequence[Mapping[str, str]], example_id: str,
                target_roles: Iterable[str] = ("assistant",), first_target: int = 0) -> Example:
  """Splits the templated chat into segments; each target-role turn's own text (after its generation prompt) is a
  target segment (turns before index `first_target` are context only). Raises if the template does not render
  prefixes as prefixes (then masks would be wrong)."""
  target_roles = set(target_roles)
  segments: list[tuple[str, bool]] = []
  prev = ""
  for i, turn in enumerate(turns):
    full = chat_text(tokenizer, turns[:i + 1], False)
    if turn["role"] in target_roles and i >= first_target:
      head = chat_text(tokenizer, turns[:i], True) if i else ""
      if not (head.startswith(prev) and full.startswith(head)):
        raise ValueError(f"example {example_id}: the chat template does not extend turn {i} as a prefix; "
                         "cannot mark the assistant tokens")
      segments += [(head[len(prev):], False), (full[len(head):], True)]
    else:
      if not full.startswith(prev):
        raise ValueError(f"example {example_id}: the chat template rewrites earlier turns at turn {i}")
      segments.append((full[len(prev):], False))
    prev = full
  merged: list[tuple[str, bool]] = []
  for text, t in segments:  # runs of equal flags are tokenised as one string, as the inference prompt is
    if not text:
      continue
    if merged and merged[-1][1] == t:
      merged[-1] = (merged[-1][0] + text, t)
    else:
      merged.append((text, t))
  return Example(id=example_id, segments=tuple(merged))


# ---- retrieval and memorisation ------------------------------------------------------------------------------

def system_turn(system_prompt: str | None) -> list[dict]:
  """The system turn of memorisation/retrieval prompts: none (the template's default) or the given text."""
  return [] if system_prompt is None else [{"role": "system", "content": system_prompt}]


def retrieval_turns(text: str, code_text: str | None = None, system_prompt: str | None = None) -> list[dict]:
  """A retrieval (query -> codes) or memorisation (document -> codes) conversation: the user turn holds `text`,
  the assistant turn the tool's code text (omitted for the inference prompt)."""
  turns = system_turn(system_prompt) + [{"role": "user", "content": text}]
  if code_text is not None:
    turns.append({"role": "assistant", "content": code_text})
  return turns


def prompt_suffix_tokens(tokenizer: Any, system_prompt: str | None = None) -> int:
  """How many tokens a retrieval prompt has after the user's text (the template's end of turn and generation prompt,
  e.g. `<|im_end|>\n<|im_start|>assistant\n`): what truncation must keep so the model still sees where codes start."""
  marker = "\x00"
  text = chat_text(tokenizer, retrieval_turns(marker, system_prompt=system_prompt), True)
  return len(encode_text(tokenizer, text.split(marker, 1)[1]))


def truncate_prompt(ids: Sequence[int], max_prompt_tokens: int, keep_tail: int) -> list[int]:
  """The one truncation rule of training and inference: a prompt longer than `max_prompt_tokens` loses the tail of
  its user text — the chat header and the start of the text (a document's name and description) stay, and so do
  the last `keep_tail` tokens (`prompt_suffix_tokens`: the generation prompt the codes follow)."""
  ids = list(ids)
  if max_prompt_tokens and len(ids) > max_prompt_tokens:
    keep_tail = min(int(keep_tail), max_prompt_tokens - 1)
    ids = ids[:max_prompt_tokens - keep_tail] + (ids[-keep_tail:] if keep_tail else [])
  return ids


def retrieval_prompt_ids(tokenizer: Any, text: str, max_prompt_tokens: int = 0,
                         system_prompt: str | None = None) -> list[int]:
  """Token ids of the retrieval prompt for `text`: exactly the non-target prefix `retrieval_turns` renders for
  training, then `truncate_prompt`."""
  ids = encode_text(tokenizer, chat_text(tokenizer, retrieval_turns(text, system_prompt=system_prompt), True))
  if max_prompt_tokens and len(ids) > max_prompt_tokens:
    ids = truncate_prompt(ids, max_prompt_tokens, prompt_suffix_tokens(tokenizer, system_prompt))
  return ids


# ---- the agent format ----------------------------------------------------------------------------------------

# ToolBench's Finish action (answer files, `answer_generation.function`).
FINISH_SCHEMA = {
    "type": "object",
    "properties": {
        "return_type": {"type": "string", "enum": ["give_answer", "give_up_and_restart"]},
        "final_answer": {"type": "string"},
    },
    "required": ["return_type"],
}

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


def finish_document(template: str = docs_lib.DEFAULT_TEMPLATE, max_chars: int = docs_lib.DEFAULT_MAX_CHARS) -> str:
  """The Finish tool's document, written like a corpus tool's (so a frozen encoder codes it like a tool)."""
  return docs_lib.tool_document(FINISH_TOOL, template, max_chars)
