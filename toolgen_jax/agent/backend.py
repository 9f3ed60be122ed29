"""What the chat CLI and the server run: a policy, its tool corpus, an executor, and the request tools it can code.

`loader.load_backend(workdir)` builds one: "demo" gives `demo_backend()` (the lexical baseline policy over a few
local Python tools, no model) so the interfaces can be tried and tested without a trained workdir; a trained workdir
gives the model backend.

Request tools are bounded: a tool a request sends that the backend does not know (by name and schema) is coded once
and kept in a least-recently-used `ToolCache` of `tool_cache_size` entries (`serve.tool_cache_size`); the oldest
unused entry is removed from the policy (`remove_tools`) when a new one needs room, so a stream of unseen tools never
grows the shared state without bound. Entries used by a request in flight are pinned and never evicted under it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import json
import threading
from typing import Callable, Iterator, Sequence

from toolgen_jax.agent.executors import CallableExecutor, Executor
from toolgen_jax.agent.policy import LexicalPolicy, Policy, known_names
from toolgen_jax.agent import schema as schema_lib
from toolgen_jax.data.records import Tool, ToolCorpus


class UnknownToolsError(LookupError):
  """Request tools that the backend does not know and cannot add."""


class ToolCacheFullError(RuntimeError):
  """Every cached request tool is in use by a request in flight: no room for another one right now (retry)."""


class ToolCache:
  """Least-recently-used map from a request tool's identity (name, schema, description) to its corpus id, with pins
  for the requests in flight. Not thread-safe: used under `Backend.lock`."""

  def __init__(self, capacity: int):
    if capacity < 1:
      raise ValueError(f"tool cache capacity must be >= 1, got {capacity}")
    self.capacity = capacity
    self._ids: collections.OrderedDict[tuple, int] = collections.OrderedDict()
    self._pins: collections.Counter[int] = collections.Counter()

  def __len__(self) -> int:
    return len(self._ids)

  def get(self, key: tuple) -> int | None:
    tid = self._ids.get(key)
    if tid is not None:
      self._ids.move_to_end(key)
    return tid

  def put(self, key: tuple, tid: int) -> None:
    self._ids[key] = tid
    self._ids.move_to_end(key)

  def evict(self, n: int) -> list[int]:
    """Drops the `n` least recently used unpinned entries -> their ids; raises if fewer are unpinned."""
    victims = [k for k, tid in self._ids.items() if not self._pins[tid]][:n]
    if len(victims) < n:
      raise ToolCacheFullError(f"all {len(self._ids)} cached request tools are in use by requests in flight")
    return [self._ids.pop(k) for k in victims]

  def pin(self, ids: Sequence[int]) -> None:
    self._pins.update(ids)

  def unpin(self, ids: Sequence[int]) -> None:
    self._pins.subtract(ids)
    self._pins += collections.Counter()  # drop zero counts


@dataclasses.dataclass
class Backend:
  """`add_tools(tools) -> ids` codes tools the model has not seen from their documentation (the codebook's
  `add_tools` + trie update for a model backend) and `remove_tools(ids)` takes them out of the policy again; None
  means new tools are refused. Calls into the policy and the tool hooks are serialized by `lock` (a JAX model and
  its trie are shared state). `tool_cache_size` bounds the request tools kept at any time."""

  policy: Policy
  corpus: ToolCorpus
  executor: Executor | None = None
  name: str = "toolgen"
  add_tools: Callable[[Sequence[Tool]], list[int]] | None = None
  remove_tools: Callable[[Sequence[int]], None] | None = None
  lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
  tool_cache_size: int = 256
  tool_cache: ToolCache = dataclasses.field(init=False)
  _names: dict[str, int] | None = dataclasses.field(default=None, init=False, repr=False)

  def __post_init__(self):
    self.tool_cache = ToolCache(self.tool_cache_size)

  def names(self) -> dict[str, int]:
    """Request names of the backend's own tools (computed once: request tools never join this map)."""
    if self._names is None:
      self._names = dict(known_names(self.corpus))
    return self._names


def _schema_key(parameters) -> str:
  """Schema identity for matching a request tool to a known one: normalized types, required keys, enums (not the
  descriptions, which clients rewrite freely)."""

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
  """Corpus ids for request tools: a known tool (same name and same schema) maps to its id; a request tool seen
  recently maps to its cached id; the others are coded through `backend.add_tools`, making room in the cache
  first. The returned ids are pinned (see `request_tools`). Call with `backend.lock` held."""
  names, cache = backend.names(), backend.tool_cache
  ids: list[int | None] = []
  new: dict[tuple, Tool] = {}
  for t in tools:
    tid = names.get(t.name)
    if tid is not None and _schema_key(backend.corpus[tid].parameters) == _schema_key(t.parameters):
      ids.append(tid)
      continue
    key = (t.name, _schema_key(t.parameters), t.description)
    tid = cache.get(key)
    if tid is None:
      new[key] = t
    ids.append(tid)
  if new:
    if backend.add_tools is None:
      raise UnknownToolsError(f"unknown tools {[t.name for t in new.values()]} and this backend cannot add tools")
    if len(new) > cache.capacity:
      raise UnknownToolsError(f"{len(new)} unknown tools in one request; this backend codes at most "
                              f"{cache.capacity} at a time (serve.tool_cache_size)")
    cache.pin([i for i in ids if i is not None])  # this request's cached tools must survive the eviction
    try:
      overflow = len(cache) + len(new) - cache.capacity
      if overflow > 0:
        victims = cache.evict(overflow)
        if backend.remove_tools is not None:
          backend.remove_tools(victims)
    finally:
      cache.unpin([i for i in ids if i is not None])
    added = backend.add_tools(list(new.values()))
    for key, tid in zip(new, added):
      cache.put(key, tid)
    by_key = dict(zip(new, added))
    ids = [by_key[(t.name, _schema_key(t.parameters), t.description)] if i is None else i
           for t, i in zip(tools, ids)]
  cache.pin(ids)
  return ids


@contextlib.contextmanager
def request_tools(backend: Backend, tools: Sequence[Tool]) -> Iterator[list[int]]:
  """`resolve_tools` for the length of a request: its cached tools cannot be evicted until the block ends."""
  with backend.lock:
    ids = resolve_tools(backend, tools)
  try:
    yield ids
  finally:
    with backend.lock:
      backend.tool_cache.unpin(ids)


class SlotCorpus:
  """A `ToolCorpus` whose first tools are fixed and whose next `capacity` ids are slots that request tools take and
  give back, so ids stay below len(base) + capacity however many request tools come and go. Request tools are found
  through the backend's `ToolCache`, not by key (`get_id` knows the fixed tools only)."""

  def __init__(self, base: ToolCorpus, capacity: int):
    self.base = base
    self._slots: list[Tool | None] = [None] * capacity
    self._free = list(range(capacity - 1, -1, -1))

  def __len__(self) -> int:
    return len(self.base) + len(self._slots)

  def __iter__(self) -> Iterator[Tool]:
    yield from self.base
    yield from (t for t in self._slots if t is not None)

  def __getitem__(self, tid: int) -> Tool:
    if tid < len(self.base):
      return self.base[tid]
    t = self._slots[tid - len(self.base)]
    if t is None:
      raise IndexError(f"tool id {tid} is a free request-tool slot")
    return t

  def get_id(self, tool_name: str, api_name: str) -> int | None:
    return self.base.get_id(tool_name, api_name)

  def id_of(self, tool_name: str, api_name: str) -> int:
    return self.base.id_of(tool_name, api_name)

  def live_slots(self) -> int:
    return len(self._slots) - len(self._free)

  def put(self, tools: Sequence[Tool]) -> list[int]:
    if len(tools) > len(self._free):
      raise ToolCacheFullError(f"{len(tools)} request tools, {len(self._free)} free slots")
    out = []
    for t in tools:
      slot = self._free.pop()
      tid = len(self.base) + slot
      self._slots[slot] = dataclasses.replace(t, id=tid)
      out.append(tid)
    return out

  def free(self, ids: Sequence[int]) -> None:
    for tid in ids:
      slot = tid - len(self.base)
      if not 0 <= slot < len(self._slots) or self._slots[slot] is None:
        raise KeyError(f"tool id {tid} is not a taken request-tool slot")
      self._slots[slot] = None
      self._free.append(slot)


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


def demo_backend(max_calls: int = 1, tool_cache_size: int = 256) -> Backend:
  """The lexical baseline policy over five local Python tools. Not a model: for trying the interfaces. Request tools
  take slots of a `SlotCorpus` and give them back when the cache evicts them."""
  corpus = SlotCorpus(ToolCorpus(t for t, _ in DEMO_TOOLS), tool_cache_size)
  executor = CallableExecutor({t.name: fn for t, fn in DEMO_TOOLS}, timeout_s=5.0)
  return Backend(LexicalPolicy(corpus, max_calls=max_calls), corpus, executor, name="demo-lexical",
                 add_tools=corpus.put, remove_tools=corpus.free, tool_cache_size=tool_cache_size)
