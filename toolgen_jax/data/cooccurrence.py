"""Tool co-occurrence graph: which tools are needed together (ToolWeaver's collaborative signal).

C[u, v] counts the *episodes* in which tools u != v are both used. An episode is one query (its relevant tools,
united with the tools actually called by trajectories of the same query id), one trajectory without a loaded
query, or one qrels group without query text (COLT ToolBench-G3). Counting per episode, not per trajectory,
keeps a query and its own DFS answer from counting one co-use twice. C is symmetric with a zero diagonal.

The normalised adjacency used as A_uv (ToolWeaver's collaborative regulariser on the tool graph) is the
symmetric normalisation of GCNs, A = D^-1/2 C D^-1/2 with D = diag(sum_v C[u, v]); rows of isolated tools are
zero. The exact normalisation of ToolWeaver's released code was not available to check, so `adjacency` also
offers 'row' (D^-1 C, a random walk) and 'none' (raw counts).
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from toolgen_jax.data.records import Query, Trajectory


@dataclasses.dataclass(frozen=True)
class Cooccurrence:
  """`counts`: [N, N] CSR int32, symmetric, zero diagonal; N = number of tools in the corpus."""

  counts: sp.csr_matrix

  @property
  def num_tools(self) -> int:
    return int(self.counts.shape[0])

  @property
  def num_edges(self) -> int:
    """Undirected edges (u < v with C[u, v] > 0)."""
    return int(self.counts.nnz // 2)

  def edges(self) -> tuple[np.ndarray, np.ndarray]:
    """([E, 2] int32 pairs with u < v, sorted), [E] int32 counts."""
    upper = sp.triu(self.counts, k=1).tocoo()
    order = np.lexsort((upper.col, upper.row))
    pairs = np.stack([upper.row[order], upper.col[order]], axis=1).astype(np.int32)
    return pairs, upper.data[order].astype(np.int32)

  def degree(self) -> np.ndarray:
    """[N] weighted degree sum_v C[u, v] (int64)."""
    return np.asarray(self.counts.sum(axis=1), dtype=np.int64).ravel()

  def adjacency(self, normalization: str = "sym") -> sp.csr_matrix:
    """[N, N] float32 CSR. 'sym': D^-1/2 C D^-1/2 (symmetric); 'row': D^-1 C (rows sum to 1); 'none': C."""
    c = self.counts.astype(np.float64)
    d = self.degree().astype(np.float64)
    with np.errstate(divide="ignore"):
      if normalization == "sym":
        s = np.where(d > 0, 1.0 / np.sqrt(d), 0.0)
        a = sp.diags(s) @ c @ sp.diags(s)
      elif normalization == "row":
        a = sp.diags(np.where(d > 0, 1.0 / d, 0.0)) @ c
      elif normalization == "none":
        a = c
      else:
        raise ValueError(f"unknown normalization {normalization!r}: use 'sym', 'row' or 'none'")
    return sp.csr_matrix(a, dtype=np.float32)

  def neighbors(self, tool: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour ids, counts) of one tool."""
    lo, hi = self.counts.indptr[tool], self.counts.indptr[tool + 1]
    return self.counts.indices[lo:hi].copy(), self.counts.data[lo:hi].copy()

  def remap(self, mapping: Sequence[int] | np.ndarray, num_tools: int) -> "Cooccurrence":
    """Moves tool i to id mapping[i] in a corpus of `num_tools` (used by `dataset.merge`); counts of tools that
    land on the same id add up, and the diagonal is cleared again."""
    m = np.asarray(mapping, dtype=np.int64)
    coo = self.counts.tocoo()
    return _from_pairs(m[coo.row], m[coo.col], coo.data, num_tools)

  def __add__(self, other: "Cooccurrence") -> "Cooccurrence":
    if other.num_tools != self.num_tools:
      raise ValueError(f"cannot add co-occurrence graphs over {self.num_tools} and {other.num_tools} tools")
    return Cooccurrence(_clean(self.counts + other.counts))

  def to_arrays(self) -> dict[str, np.ndarray]:
    c = self.counts
    return {"indptr": c.indptr.astype(np.int64), "indices": c.indices.astype(np.int32),
            "data": c.data.astype(np.int32), "shape": np.asarray(c.shape, dtype=np.int64)}

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "Cooccurrence":
    shape = tuple(int(x) for x in arrays["shape"])
    counts = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape, dtype=np.int32)
    return cls(counts)

  def save(self, path: str | pathlib.Path) -> None:
    with open(path, "wb") as f:
      np.savez(f, **self.to_arrays())

  @classmethod
  def load(cls, path: str | pathlib.Path) -> "Cooccurrence":
    with np.load(path) as z:
      return cls.from_arrays({k: z[k] for k in z.files})


def _clean(m: sp.spmatrix) -> sp.csr_matrix:
  m = sp.csr_matrix(m, dtype=np.int32)
  m.setdiag(0)
  m.eliminate_zeros()
  m.sort_indices()
  return m


def _from_pairs(rows, cols, data, num_tools: int) -> Cooccurrence:
  m = sp.coo_matrix((np.asarray(data, dtype=np.int64), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
                    shape=(num_tools, num_tools)).tocsr()  # duplicates are summed
  return Cooccurrence(_clean(m))


def empty(num_tools: int) -> Cooccurrence:
  return Cooccurrence(sp.csr_matrix((num_tools, num_tools), dtype=np.int32))


def from_groups(groups: Iterable[Iterable[int]], num_tools: int) -> Cooccurrence:
  """C[u, v] = number of groups containing both u and v (u != v); repeats inside a group count once."""
  rows: list[int] = []
  cols: list[int] = []
  for g in groups:
    ids = sorted(set(int(t) for t in g))
    if len(ids) < 2:
      continue
    for u, v in itertools.permutations(ids, 2):
      rows.append(u)
      cols.append(v)
  if not rows:
    return empty(num_tools)
  r = np.asarray(rows, np.int64)
  c = np.asarray(cols, np.int64)
  if r.max() >= num_tools or r.min() < 0:
    raise ValueError(f"tool id out of range [0, {num_tools}) in co-occurrence groups")
  return _from_pairs(r, c, np.ones_like(r), num_tools)


def episode_groups(queries: Sequence[Query], trajectories: Sequence[Trajectory] = (),
                   extra_groups: Iterable[Iterable[int]] = ()) -> list[tuple[int, ...]]:
  """One tool set per episode (see the module docstring): per query id, relevant tools plus tools called in its
  trajectories; trajectories of unknown queries on their own; then `extra_groups` (qrels groups without text)."""
  by_query: dict[str, set[int]] = {}
  order: list[str] = []
  for q in queries:
    if q.id not in by_query:
      by_query[q.id] = set()
      order.append(q.id)
    by_query[q.id].update(q.relevant)
  orphans: list[set[int]] = []
  for t in trajectories:
    called = {m.action for m in t.messages if m.role == "assistant" and m.action is not None}
    if t.query_id in by_query:
      by_query[t.query_id].update(called)
    else:
      orphans.append(called)
  groups = [tuple(sorted(by_query[k])) for k in order] + [tuple(sorted(g)) for g in orphans]
  groups += [tuple(sorted(set(int(x) for x in g))) for g in extra_groups]
  return groups


def build(num_tools: int, queries: Sequence[Query] = (), trajectories: Sequence[Trajectory] = (),
          extra_groups: Iterable[Iterable[int]] = ()) -> Cooccurrence:
  """The co-occurrence graph of a dataset's episodes (queries with >= 2 relevant tools, trajectories, groups)."""
  return from_groups(episode_groups(queries, trajectories, extra_groups), num_tools)
