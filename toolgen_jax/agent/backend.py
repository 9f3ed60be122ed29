"""What the chat CLI and the server run: a policy, its tool corpus, an executor, and a way to add new tools.

The interfaces never build a model themselves: `load_backend(workdir)` decides. "demo" gives a model-free backend
(the lexical baseline policy over a few local Python tools) so the interfaces can be tried and tested without a
trained workdir; a trained workdir gives the model backend (`model_policy.load_model_backend`).
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import threading
from typing import Callable, Sequence

from toolgen_jax.agent.executors import CallableExecutor, Executor
from toolgen_jax.agent.policy import LexicalPolicy, Policy, known_names
from toolgen_jax.agent import schema as schema_lib
from toolgen_jax.data.records import Tool, ToolCorpus


@dataclasses.dataclass
class Backend:
  """`add_tools(tools) -> ids` codes tools the model has not seen from their documentation (the codebook's
  `add_tools` + trie update for a model backend); None means new tools are refused. Calls into the policy and
  `add_tools` are serialized by `lock` (a JAX model and a growing corpus are shared state)."""

  policy: Policy
  corpus: ToolCorpus
  executor: Executor | None = None
  name: str = "toolgen"
  add_tools: Callable[[Sequence[Tool]], list[int]] | None = None
  lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

  def names(self) -> dict[str, int]:
    return dict(known_names(self.corpus))


class UnknownToolsError(LookupError):
  """Request tools that the backend does not know and cannot add."""


def _schema_key(parameters) -> str:
  """Schema identity for matching a request tool to a known one: normalized types, required keys, enums (not the
  descriptions, which clients rewrite freely)."""
  import json

  def strip(s):
    if isinstance(s, dict):
      return {k: strip(v) for k, v in s.items() if k not in ("description", "default", "title")}
    if isinstance(s, list):
      return [strip(v) for v in s]
    return s

  n = strip(schema_lib.normalize_schema(parameters))
  if isinstance(n.get("required"), list):
    n["required"] = sorted(n["required"])
  return json.dumps(n, sort_keys=True)


def resolve_tools(backend: Backend, tools: Sequence[Tool]) -> list[int]:
  """Corpus ids for request tools: a known tool (same name and same schema) maps to its id; the others are coded
  through `backend.add_tools`. Call with `backend.lock` held."""
  names = backend.names()
  ids: list[int | None] = []
  new: list[Tool] = []
  for t in tools:
    tid = names.get(t.name)
    if tid is not None and _schema_key(backend.corpus[tid].parameters) == _schema_key(t.parameters):
      ids.append(tid)
    else:
      ids.append(None)
      new.append(t)
  if new:
    if backend.add_tools is None:
      raise UnknownToolsError(f"unknown tools {[t.name for t in new]} and this backend cannot add tools")
    added = iter(backend.add_tools(new))
    ids = [next(added) if i is None else i for i in ids]
  return ids


def corpus_add_tools(corpus: ToolCorpus) -> Callable[[Sequence[Tool]], list[int]]:
  """`add_tools` for model-free policies: adds the tools to the corpus (a name reused with another schema gets a
  distinct key, so the known tool is not overwritten)."""

  def add(tools: Sequence[Tool]) -> list[int]:
    out = []
    for t in tools:
      key = _schema_key(t.parameters)
      api = t.api_name
      existing = corpus.get_id(t.tool_name, api)
      if existing is not None and _schema_key(corpus[existing].parameters) != key:
        api = f"{t.api_name}#{abs(hash(key)) % 10**8}"
      out.append(corpus.add(dataclasses.replace(t, api_name=api)))
    return out

  return add


# --- the demo backend -------------------------------------------------------------------------------------------

_S = lambda **props: {"type": "object", "properties": props, "required": list(props)}
_CITIES = {"paris": (21, 2_102_650), "london": (17, 8_799_800), "tokyo": (26, 13_960_000), "lyon": (23, 522_250)}


def _weather(city: str):
  c = _CITIES.get(city.strip().lower())
  return {"city": city, "temp_c": c[0], "sky": "clear"} if c else {"error": f"unknown city {city!r}"}


def _population(city: str):
  c = _CITIES.get(city.strip().lower())
  return {"city": city, "population": c[1]} if c else {"error": f"unknown city {city!r}"}


def _add(a: float, b: float):
  return {"result": a + b}


def _convert(value: float, unit: str):
  factors = {"km_to_miles": 0.621371, "miles_to_km": 1.609344, "kg_to_lb": 2.204623, "lb_to_kg": 0.453592}
  return {"result": round(value * factors[unit], 6), "unit": unit}


def _today():
  return {"date": datetime.date.today().isoformat()}


DEMO_TOOLS = (
    (Tool(0, "weather", "weather", "Demo", "current weather and temperature in a city", _S(city={"type": "string"})),
     _weather),
    (Tool(0, "population", "population", "Demo", "how many people live in a city (population)",
          _S(city={"type": "string"})), _population),
    (Tool(0, "calculator", "calculator", "Demo", "add two numbers, sum",
          _S(a={"type": "number"}, b={"type": "number"})), _add),
    (Tool(0, "unit_converter", "unit_converter", "Demo", "convert km miles kg lb units",
          _S(value={"type": "number"},
             unit={"type": "string", "enum": ["km_to_miles", "miles_to_km", "kg_to_lb", "lb_to_kg"]})), _convert),
    (Tool(0, "today", "today", "Demo", "today's date, what day is it", _S()), _today),
)


def demo_backend(max_calls: int = 1) -> Backend:
  """The lexical baseline policy over five local Python tools. Not a model: for trying the interfaces."""
  corpus = ToolCorpus(t for t, _ in DEMO_TOOLS)
  executor = CallableExecutor({t.name: fn for t, fn in DEMO_TOOLS}, timeout_s=5.0)
  return Backend(LexicalPolicy(corpus, max_calls=max_calls), corpus, executor, name="demo-lexical",
                 add_tools=corpus_add_tools(corpus))


def load_backend(workdir: str | pathlib.Path, **policy_kw) -> Backend:
  """"demo" -> `demo_backend()`; a trained workdir -> the model backend (params, tokenizer, codebook, trie);
  `policy_kw` go to its `ModelPolicy` (e.g. pad_multiple)."""
  if str(workdir) == "demo":
    return demo_backend()
  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"--workdir={workdir}: no such directory (use --workdir=demo for the model-free demo)")
  from toolgen_jax.agent import model_policy  # imports JAX and the model only when a workdir is used
  return model_policy.load_model_backend(path, **policy_kw)
