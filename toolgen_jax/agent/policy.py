"""The model side of the agent: what the loop asks of a policy, a scripted policy for tests, a lexical baseline.

A `Policy` answers three questions per step, each a separate generation in the agent format (`toolgen_jax.prompts`):
  think(history) -> Thought text (free text until a stop string);
  choose_tool(history, thought, candidates) -> ranked tool ids (constrained beam search over the trie of tool codes;
      `candidates` restricts the trie to those tools (the "GT tools" setting); Finish is a code like any other);
  arguments(history, thought, tool) -> Action Input text (optionally built from the tool's schema).
The loop owns validation and execution, so a policy can be wrong but never unsafe. Policies keep no per-episode
state: whatever they need is in `history` (a tuple of `records.Message`); backends serialize calls into a policy
(one model), and `ModelPolicy.add_tools` is the one mutation (under the backend's lock).

`ModelPolicy` (the trained Llama + codebook + trie) lives in `model_policy.py`.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import re
from collections import Counter
from typing import Mapping, Sequence

from toolgen_jax import prompts as fmt
from toolgen_jax.agent import schema as schema_lib
from toolgen_jax.data.records import Message, Tool, ToolCorpus


@dataclasses.dataclass(frozen=True)
class ToolChoice:
  tool: int | None  # a ToolCorpus id, or None for Finish
  score: float = 0.0  # log-probability (model) or any monotone score


class Policy(abc.ABC):

  @abc.abstractmethod
  def think(self, history: Sequence[Message]) -> str:
    """The next Thought."""

  @abc.abstractmethod
  def choose_tool(self, history: Sequence[Message], thought: str, candidates: Sequence[int] | None, *, k: int = 1,
                  allow_finish: bool = True) -> list[ToolChoice]:
    """Up to k actions, best first. `candidates=None`: any tool the policy knows."""

  @abc.abstractmethod
  def arguments(self, history: Sequence[Message], thought: str, tool: Tool) -> str:
    """Action Input text for `tool` (`fmt.FINISH_TOOL` for the final answer)."""

  # Batched forms: a model policy overrides them to run many steps at once (the serving engine, `agent.eval`).

  def think_batch(self, histories: Sequence[Sequence[Message]]) -> list[str]:
    return [self.think(h) for h in histories]

  def choose_tool_batch(self, steps: Sequence[tuple], *, k: int = 1) -> list[list[ToolChoice]]:
    """`choose_tool` for each (history, thought, candidates, allow_finish)."""
    return [self.choose_tool(h, t, c, k=k, allow_finish=f) for h, t, c, f in steps]

  def arguments_batch(self, steps: Sequence[tuple]) -> list[str]:
    """`arguments` for each (history, thought, tool)."""
    return [self.arguments(h, t, tool) for h, t, tool in steps]

  def count_tokens(self, text: str) -> int:
    """Tokens in `text` for usage reports; a model policy counts with its tokenizer, this default counts words and
    punctuation marks."""
    return len(_TOKEN.findall(text))


def steps_taken(history: Sequence[Message]) -> int:
  """Assistant steps since the last user message (the current query's episode)."""
  n = 0
  for m in reversed(history):
    if m.role == "user":
      break
    n += m.role == "assistant"
  return n


def last_query(history: Sequence[Message]) -> str:
  return next((m.content for m in reversed(history) if m.role == "user"), "")


# --- scripted (tests) -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScriptedStep:
  thought: str
  tool: int | None  # None = Finish
  arguments: str = "{}"


class ScriptedPolicy(Policy):
  """Plays a fixed list of steps, indexed by the number of assistant steps already in the history.

  It does not look at `candidates`: it returns what the script says, so tests can check that the loop, not the
  policy, refuses a tool outside the allowed set. Past the end of the script it finishes.
  """

  def __init__(self, steps: Sequence[ScriptedStep], final_answer: str = "done"):
    self.steps, self.final_answer = tuple(steps), final_answer

  def _step(self, history) -> ScriptedStep:
    i = steps_taken(history)
    return self.steps[i] if i < len(self.steps) else ScriptedStep("finish", None, fmt.finish_input(self.final_answer))

  def think(self, history):
    return self._step(history).thought

  def choose_tool(self, history, thought, candidates, *, k=1, allow_finish=True):
    return [ToolChoice(self._step(history).tool, 0.0)]

  def arguments(self, history, thought, tool):
    return self._step(history).arguments


# --- lexical baseline (demo backend, no model) -------------------------------------------------------------------


_WORD = re.compile(r"[a-z0-9]+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


_STOP = frozenset("the a an is are was be to of in on for and or what how which who can you me my i it its this that "
                  "with from by at please give get tell".split())


def _words(text: str) -> list[str]:
  return [w for w in _WORD.findall(text.lower().replace("_", " ")) if len(w) > 1 and w not in _STOP]


class LexicalPolicy(Policy):
  """A model-free baseline: ranks tools by TF-IDF overlap of the query with the tool's name and description.

  It calls the best not-yet-called tool while its score is positive and at most `max_calls` times, then finishes with
  the last observation as its answer; arguments come from `schema.constrained_arguments` with values copied from the
  schema (enum first option, default/example) or from quoted or numeric spans of the query. It stands in for the
  trained model in the chat/server demos and is the floor the trained model's per-step accuracy is compared with.
  """

  def __init__(self, corpus: ToolCorpus, max_calls: int = 2):
    self.corpus, self.max_calls = corpus, max_calls
    self._docs = [Counter(_words(f"{t.tool_name} {t.api_name} {t.description}")) for t in corpus]
    df = Counter(w for d in self._docs for w in d)
    self._idf = {w: math.log(1 + len(self._docs) / c) for w, c in df.items()}

  def _score(self, tid: int, query: Counter) -> float:
    if tid >= len(self._docs):  # a tool added after construction
      t = self.corpus[tid]
      doc = Counter(_words(f"{t.tool_name} {t.api_name} {t.description}"))
    else:
      doc = self._docs[tid]
    return sum(min(c, doc[w]) * self._idf.get(w, 1.0) for w, c in query.items() if w in doc)

  def think(self, history):
    n = steps_taken(history)
    return "I have what I need; I will answer." if n >= self.max_calls else f"Step {n + 1}: pick the best tool."

  def choose_tool(self, history, thought, candidates, *, k=1, allow_finish=True):
    q = Counter(_words(last_query(history)))
    called = {m.action for m in history if m.role == "assistant" and m.action is not None}
    pool = [t.id for t in self.corpus] if candidates is None else [t for t in candidates if 0 <= t < len(self.corpus)]
    ranked = sorted(((self._score(t, q) - (1e3 if t in called else 0.0), t) for t in pool), key=lambda x: (-x[0], x[1]))
    out = [ToolChoice(t, s) for s, t in ranked]
    if allow_finish:
      done = steps_taken(history) >= self.max_calls or not out or out[0].score <= 0
      fin = ToolChoice(None, math.inf if done else -math.inf)
      out = [fin] + out if done else out + [fin]
    return out[:k]

  def arguments(self, history, thought, tool):
    if tool.name == fmt.FINISH_TOOL.name:
      obs = next((m.content for m in reversed(history) if m.role == "observation"), "")
      try:
        obs = json.loads(obs).get("response") or obs
      except (json.JSONDecodeError, AttributeError):
        pass
      return fmt.finish_input(str(obs)[:500] or "I could not find an answer.", give_up=not obs)
    return schema_lib.constrained_arguments(tool.parameters, _QueryFiller(last_query(history)))


class _QueryFiller:
  """Fills values from the query: quoted spans for strings, numbers for numbers; else the schema's fallback."""

  def __init__(self, query: str):
    self.quoted = re.findall(r"['\"]([^'\"]{1,80})['\"]", query)
    # Whole numbers of at most 64 digits: a longer one is no argument value (and past 4300 digits Python's int
    # parser refuses it).
    self.numbers = re.findall(r"(?<![\w.])-?\d{1,64}(?:\.\d{1,64})?(?![\d.])", query)

  def choose(self, prefix, options):
    return len(options) - 1 if options[-1] == "}" else 0  # no optional keys; first enum value

  def text(self, prefix, stop, max_chars):
    if stop == ['"']:
      return self.quoted.pop(0) if self.quoted else ""
    return self.numbers.pop(0) if self.numbers else ""


def known_names(corpus: ToolCorpus) -> Mapping[str, int]:
  """Names a request may use for a corpus tool: `Tool.name`, and ToolBench's `{api}_for_{tool}` function name."""
  from toolgen_jax.agent.executors import toolbench_function_name
  names: dict[str, int] = {}
  for t in corpus:
    names.setdefault(t.name, t.id)
    names.setdefault(toolbench_function_name(t.tool_name, t.api_name), t.id)
  return names


def dumps_args(args: Mapping) -> str:
  return json.dumps(dict(args), ensure_ascii=False)
