"""Documents as queries (DSI-QG; NCI's DocAsQuery): several short, distinct texts per tool instead of one cut document.

One memorisation document per tool, cut to 180 characters, leaves 699 of 2,555 BFCL tools sharing their training text
with another tool, and spends a median 52 of the 180 characters on the `python | NAME | NAME:` prefix that every
BFCL document repeats. The views below say what the tool does in the ways a query would:

  name_description   "NAME: description"                    (the name once, not three times)
  description        the description alone
  sentence           each sentence of a multi-sentence description
  parameters         "NAME parameters: p (type): description; ..."

The category is left out unless asked for (and then only when the corpus has several): in BFCL it is the
programming language, which repeats rather than tells tools apart. Texts are whitespace-normalised and cut at a word boundary to `max_chars`. Within a tool
duplicates are dropped; a text that several tools share gets the tool's name prefixed, and what still collides
(tools with the same name and description) is counted in `ViewStats.shared`, never dropped silently.
Sampling (`sample_views`) is seeded and balanced: round-robin over tools, and within a tool over view kinds.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

from toolgen_jax.data.documents import render_parameters
from toolgen_jax.data.records import Tool

KINDS = ("name_description", "description", "sentence", "parameters")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`])")


@dataclasses.dataclass(frozen=True)
class View:
  tool_id: int
  kind: str   # one of KINDS
  text: str


@dataclasses.dataclass
class ViewStats:
  tools: int = 0
  views: int = 0
  renamed: int = 0   # cross-tool duplicates disambiguated with the tool's name
  shared: int = 0    # views whose text still belongs to more than one tool

  def line(self) -> str:
    return (f"{self.views} views of {self.tools} tools ({self.views / max(self.tools, 1):.1f} per tool); "
            f"{self.renamed} disambiguated by name, {self.shared} still shared between tools")


def _clean(text: str) -> str:
  return " ".join(str(text).split())


def _cut(text: str, max_chars: int) -> str:
  if not max_chars or len(text) <= max_chars:
    return text
  cut = text[:max_chars]
  space = cut.rfind(" ")
  return (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,;:")


def display_name(tool: Tool) -> str:
  """The tool's name without BFCL's '#<doc hash>' key suffix."""
  return tool.name.split("#", 1)[0]


def tool_views(tool: Tool, *, max_chars: int = 180, param_chars: int = 320, category: bool = False,
               max_sentences: int = 4) -> list[View]:
  """The views of one tool (module docstring), distinct texts in KINDS order; empty fields give no view. The
  parameters view has its own limit: near-duplicate tools (BFCL's name#hash variants) differ mostly there."""
  name = display_name(tool)
  desc = _clean(tool.description)
  pre = f"{_clean(tool.category)}: " if category and tool.category else ""
  texts: list[tuple[str, str]] = []
  if desc:
    texts.append(("name_description", f"{pre}{name}: {desc}"))
    texts.append(("description", desc))
    sentences = [s for s in _SENTENCE.split(desc) if len(s.split()) >= 3]
    if len(sentences) > 1:
      texts += [("sentence", s) for s in sentences[:max_sentences]]
  else:
    texts.append(("name_description", f"{pre}{name}"))
  params = render_parameters(tool.parameters)
  if params != "none":
    texts.append(("parameters", f"{name} parameters: {_clean(params)}"))
  out, seen = [], set()
  for kind, text in texts:
    text = _cut(text, param_chars if kind == "parameters" else max_chars)
    if text and text.lower() not in seen:
      seen.add(text.lower())
      out.append(View(tool.id, kind, text))
  return out


def corpus_views(tools: Iterable[Tool], *, max_chars: int = 180, param_chars: int = 320, max_sentences: int = 4,
                 category: bool = False) -> tuple[list[View], ViewStats]:
  """Views of every tool, with cross-tool duplicates disambiguated by the tool's name (module docstring).
  category=True prefixes the category where the corpus has several (BFCL's are programming languages: off)."""
  tools = list(tools)
  category = category and len({t.category for t in tools}) > 1
  per_tool = {t.id: tool_views(t, max_chars=max_chars, category=category, max_sentences=max_sentences)
              for t in tools}
  owners = collections.defaultdict(set)
  for tid, vs in per_tool.items():
    for v in vs:
      owners[v.text.lower()].add(tid)
  stats = ViewStats(tools=len(tools))
  names = {t.id: display_name(t) for t in tools}
  out = []
  for tid, vs in per_tool.items():
    seen = set()
    for v in vs:
      text = v.text
      if len(owners[text.lower()]) > 1 and names[tid] not in text:
        text = _cut(f"{names[tid]}: {text}", param_chars if v.kind == "parameters" else max_chars)
        stats.renamed += 1
      if text.lower() in seen:
        continue
      seen.add(text.lower())
      out.append(View(tid, v.kind, text))
  final = collections.defaultdict(set)
  for v in out:
    final[v.text.lower()].add(v.tool_id)
  stats.shared = sum(1 for v in out if len(final[v.text.lower()]) > 1)
  stats.views = len(out)
  return out, stats


def sample_views(views: Sequence[View], n: int, seed: int = 0) -> list[View]:
  """n views balanced by tool and, within a tool, by kind: a seeded round-robin (tools in a random order each
  round, each tool's views in a random order cycling through its kinds), so tools with many views do not crowd
  out tools with few."""
  rng = np.random.default_rng(seed)
  by_tool: dict[int, list[View]] = collections.defaultdict(list)
  for v in views:
    by_tool[v.tool_id].append(v)
  queues = {}
  for tid, vs in by_tool.items():
    by_kind = collections.defaultdict(list)
    for v in vs:
      by_kind[v.kind].append(v)
    kinds = [k for k in KINDS if k in by_kind]
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    for k in kinds:
      by_kind[k] = [by_kind[k][i] for i in rng.permutation(len(by_kind[k]))]
    order = []
    while any(by_kind[k] for k in kinds):  # interleave the kinds
      order += [by_kind[k].pop(0) for k in kinds if by_kind[k]]
    queues[tid] = order
  tids = sorted(queues)
  out, r = [], 0
  while len(out) < n and tids:
    for i in rng.permutation(len(tids)):
      q = queues[tids[i]]
      out.append(q[r % len(q)])
      if len(out) == n:
        break
    r += 1
  return out
