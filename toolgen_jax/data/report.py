"""`LoadReport`: what a reader had to repair, counted per kind, so nothing is dropped or altered silently.

Fatal problems raise `DataError`; everything a reader can recover from (a duplicate tool, an empty description,
an unresolvable relevant API, undecodable bytes) is counted here under a short kind name with the first few
examples, and logged as ONE summary line when the reader finishes.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Mapping

_LOG = logging.getLogger("toolgen_jax.data")
MAX_EXAMPLES = 3


@dataclasses.dataclass
class LoadReport:
  """Counts of recoverable issues (`issues`) and of plain facts about the load (`stats`), per kind."""

  source: str = ""
  path: str = ""
  stats: dict[str, int] = dataclasses.field(default_factory=dict)
  issues: dict[str, int] = dataclasses.field(default_factory=dict)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def count(self, kind: str, example: str | None = None, n: int = 1) -> None:
    """Records `n` occurrences of the recoverable issue `kind`; keeps the first few examples for the log."""
    self.issues[kind] = self.issues.get(kind, 0) + n
    if example is not None:
      ex = self.examples.setdefault(kind, [])
      if len(ex) < MAX_EXAMPLES:
        ex.append(example)

  def stat(self, kind: str, n: int = 1) -> None:
    """Records a fact that is not a problem (files read, records read, qrels groups kept as co-usage only)."""
    self.stats[kind] = self.stats.get(kind, 0) + n

  def merge(self, other: "LoadReport", prefix: str = "") -> None:
    for k, v in other.stats.items():
      self.stat(prefix + k, v)
    for k, v in other.issues.items():
      self.issues[prefix + k] = self.issues.get(prefix + k, 0) + v
      for e in other.examples.get(k, ()):
        ex = self.examples.setdefault(prefix + k, [])
        if len(ex) < MAX_EXAMPLES:
          ex.append(e)

  def summary(self) -> str:
    """One line: `source path: stats; issues (first example each)`."""
    st = ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))
    if self.issues:
      parts = []
      for k, v in sorted(self.issues.items()):
        ex = self.examples.get(k)
        parts.append(f"{k}={v}" + (f" (e.g. {ex[0]})" if ex else ""))
      iss = "; ".join(parts)
    else:
      iss = "no issues"
    return " ".join(f"[{self.source}] {self.path}: {st} | {iss}".split("\n"))  # one line, whatever the examples hold

  def log(self) -> None:
    (_LOG.warning if self.issues else _LOG.info)("%s", self.summary())

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "LoadReport":
    return cls(source=d.get("source", ""), path=d.get("path", ""), stats=dict(d.get("stats", {})),
               issues=dict(d.get("issues", {})), examples={k: list(v) for k, v in d.get("examples", {}).items()})


def histogram(values) -> dict[int, int]:
  """{value: count}, sorted by value (relevant-per-query and similar)."""
  return dict(sorted(collections.Counter(values).items()))
