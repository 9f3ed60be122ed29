"""In-memory records every reader maps into, so the rest of the framework never sees a source format.

A `Tool` is one callable API function (ToolBench: one RapidAPI endpoint; BFCL: one function doc). Tools get a
stable integer id from their position in the `ToolCorpus`; queries and trajectories refer to tools by that id.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Iterator, Mapping, Sequence


class DataError(ValueError):
  """A fatal problem in an input file: names the file, the record index and the field."""

  def __init__(self, path: str, record: int | str | None, field: str | None, message: str):
    self.path, self.record, self.field = str(path), record, field
    where = f"{path}"
    if record is not None:
      where += f", record {record}"
    if field is not None:
      where += f", field '{field}'"
    super().__init__(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class Tool:
  """One API function. `parameters` is a JSON schema object ({'type': 'object', 'properties', 'required'})."""

  id: int
  tool_name: str
  api_name: str
  category: str = ""
  description: str = ""
  parameters: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"type": "object", "properties": {}, "required": []})
  method: str = ""
  template_response: Any = None
  source: str = ""
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # source-specific fields (Gorilla api_call, ...)

  @property
  def key(self) -> tuple[str, str]:
    return (self.tool_name, self.api_name)

  @property
  def name(self) -> str:
    """Display name: `api_name` alone when it equals the tool name (BFCL), else `tool_name.api_name`.

    BFCL names with several different docs are keyed `tool_name = name#<doc hash>`, `api_name = name`; their
    display name is the tool name itself (`get_weather#3f2a1c`).
    """
    if self.api_name == self.tool_name or self.tool_name.startswith(self.api_name + "#"):
      return self.tool_name
    return f"{self.tool_name}.{self.api_name}"

  def to_json(self) -> dict:
    return dataclasses.asdict(self) | {"parameters": dict(self.parameters), "extra": dict(self.extra)}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Tool":
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class Query:
  """A user request with its relevant tools (ids, in the order the source lists them).

  `group` is I1/I2/I3 (ToolBench G1/G2/G3) or a source-specific label; `candidates` is the query's own candidate
  pool (StableToolBench `api_list`) used by the in-domain setting, None when the source has none.
  """

  id: str
  text: str
  relevant: tuple[int, ...]
  group: str = ""
  split: str = ""
  candidates: tuple[int, ...] | None = None

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["relevant"] = list(self.relevant)
    d["candidates"] = None if self.candidates is None else list(self.candidates)
    return d

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Query":
    d = dict(d)
    d["relevant"] = tuple(d["relevant"])
    if d.get("candidates") is not None:
      d["candidates"] = tuple(d["candidates"])
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class Message:
  """One turn. Assistant turns are split into thought / action (tool id, or None for Finish) / action_input."""

  role: str  # system | user | assistant | observation
  content: str = ""
  thought: str | None = None
  action: int | None = None
  action_name: str | None = None  # the name as written in the source ("Finish" for the final answer)
  action_input: str | None = None  # JSON text


@dataclasses.dataclass(frozen=True)
class Trajectory:
  id: str
  query_id: str
  messages: tuple[Message, ...]
  tools: tuple[int, ...] = ()  # tools offered to the model in this episode

  def to_json(self) -> dict:
    return {"id": self.id, "query_id": self.query_id, "tools": list(self.tools),
            "messages": [dataclasses.asdict(m) for m in self.messages]}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Trajectory":
    return cls(id=d["id"], query_id=d["query_id"], tools=tuple(d.get("tools", ())),
               messages=tuple(Message(**m) for m in d["messages"]))


class ToolCorpus:
  """Tools deduplicated on (tool_name, api_name), with lookups both ways and a category index.

  Ids are dense and stable: the i-th tool added has id i. `add` returns the id of an existing tool with the same
  key (and an identical doc); a conflicting doc under the same key is reported by the caller (readers count it).
  """

  def __init__(self, tools: Iterable[Tool] = ()):
    self._tools: list[Tool] = []
    self._by_key: dict[tuple[str, str], int] = {}
    for t in tools:
      self.add(t)

  def add(self, tool: Tool) -> int:
    if tool.key in self._by_key:
      return self._by_key[tool.key]
    tid = len(self._tools)
    tool = dataclasses.replace(tool, id=tid)
    self._tools.append(tool)
    self._by_key[tool.key] = tid
    return tid

  def __len__(self) -> int:
    return len(self._tools)

  def __iter__(self) -> Iterator[Tool]:
    return iter(self._tools)

  def __getitem__(self, tid: int) -> Tool:
    return self._tools[tid]

  def __contains__(self, key: tuple[str, str]) -> bool:
    return tuple(key) in self._by_key

  def id_of(self, tool_name: str, api_name: str) -> int:
    return self._by_key[(tool_name, api_name)]

  def get_id(self, tool_name: str, api_name: str) -> int | None:
    return self._by_key.get((tool_name, api_name))

  @property
  def categories(self) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for t in self._tools:
      out.setdefault(t.category, []).append(t.id)
    return out

  def to_jsonl(self) -> str:
    return "".join(json.dumps(t.to_json(), ensure_ascii=False) + "\n" for t in self._tools)

  @classmethod
  def from_records(cls, records: Sequence[Mapping[str, Any]]) -> "ToolCorpus":
    c = cls()
    for i, r in enumerate(records):
      tool = Tool.from_json(r)
      if c.add(tool) != i:
        raise ValueError(f"tool record {i} ({tool.key}) is a duplicate or out of order")
    return c
