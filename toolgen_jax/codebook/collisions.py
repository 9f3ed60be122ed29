"""Collisions: every tool must end with its own code sequence (the trie maps a code to exactly one tool).

Resolution, never dropping or merging tools:
  1. Sinkhorn re-assignment of the last level (ToolWeaver's approach): the members of each colliding group are
     spread over the last-level codes still free under their shared prefix, by an entropic-OT plan on their
     last-level distances (centred costs, eps 0.003 as the released code's resolution pass), rounded greedily to
     distinct codes in decreasing plan probability. Groups are processed in order of their smallest tool id, so
     the result is deterministic.
  2. Whatever still collides (a prefix with more tools than last-level codes) gets a disambiguating suffix code:
     one extra level whose value is the member's rank (by tool id) in its group; every other tool has -1 there
     (codes are -1 padded, variable length). Because all tools of a colliding group get a suffix, no code is a
     proper prefix of another.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


def _rows(codes: np.ndarray) -> np.ndarray:
  codes = np.ascontiguousarray(np.asarray(codes, np.int32))
  if codes.ndim != 2:
    raise ValueError(f"codes must be [N, L], got shape {codes.shape}")
  return codes.view(np.dtype((np.void, codes.dtype.itemsize * codes.shape[1]))).ravel()


def collision_rate(codes: np.ndarray) -> float:
  """Fraction of tools whose code sequence is not unique beyond the first holder: (N - #distinct) / N."""
  codes = np.asarray(codes)
  if len(codes) == 0:
    return 0.0
  return float(len(codes) - len(np.unique(_rows(codes)))) / len(codes)


def collision_groups(codes: np.ndarray) -> list[np.ndarray]:
  """Groups (sorted tool ids, size >= 2) of tools sharing one full code sequence, ordered by smallest id."""
  r = _rows(codes)
  _, inverse, counts = np.unique(r, return_inverse=True, return_counts=True)
  inverse = inverse.ravel()
  dup = counts[inverse] > 1
  ids = np.nonzero(dup)[0]
  if len(ids) == 0:
    return []
  order = np.lexsort((ids, inverse[ids]))
  ids, keys = ids[order], inverse[ids][order]
  splits = np.nonzero(np.diff(keys))[0] + 1
  groups = np.split(ids, splits)
  return sorted(groups, key=lambda g: int(g[0]))


@dataclasses.dataclass(frozen=True)
class CollisionReport:
  rate_before: float
  groups_before: int
  tools_in_collisions: int
  moved_by_sinkhorn: int
  rate_after_sinkhorn: float
  suffixed_tools: int
  rate_after: float

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _sinkhorn_np(cost: np.ndarray, eps: float, iters: int) -> np.ndarray:
  """Small dense log-domain Sinkhorn (float64, NumPy) for one group; uniform marginals. -> plan [g, k]."""
  from scipy.special import logsumexp
  hi, lo = cost.max(), cost.min()
  c = (cost - (hi + lo) / 2) / (hi - (hi + lo) / 2 + 1e-5)
  g, k = c.shape
  lk = -c / eps
  f, h = np.zeros(g), np.zeros(k)
  for _ in range(iters):
    f = -np.log(g) - logsumexp(lk + h[None], axis=1)
    h = -np.log(k) - logsumexp(lk + f[:, None], axis=0)
  return lk + f[:, None] + h[None]


def resolve(codes: np.ndarray, last_costs: Callable[[np.ndarray], np.ndarray] | None, codebook_size: int, *,
            epsilon: float = 0.003, iters: int = 50) -> tuple[np.ndarray, CollisionReport]:
  """Makes every row of `codes` [N, L] unique. -> (codes [N, L] or [N, L + 1] with a -1 padded suffix, report).

  last_costs(ids [G]) -> [G, K]: the members' costs for every last-level code (squared distances of the residual
  entering the last level); None skips step 1 (suffixes only, e.g. for the semantic baseline).
  """
  codes = np.array(codes, np.int32, copy=True)
  n, l = codes.shape
  before = collision_rate(codes)
  groups = collision_groups(codes)
  in_coll = int(sum(len(g) for g in groups))
  moved = 0
  if groups and last_costs is not None:
    # Occupancy of last-level codes under each prefix, by tools outside collision groups and already-resolved ones.
    prefix_rows = _rows(codes[:, :-1]) if l > 1 else np.zeros(n, np.dtype((np.void, 1)))
    occupied: dict[bytes, set[int]] = {}
    for i in range(n):
      occupied.setdefault(prefix_rows[i].tobytes(), set()).add(int(codes[i, -1]))
    for g in groups:
      key = prefix_rows[g[0]].tobytes()
      original = int(codes[g[0], -1])
      taken = occupied[key] - {original}
      mask = np.ones(codebook_size, bool)
      mask[list(taken)] = False
      free = np.nonzero(mask)[0]
      if len(free) == 0:
        continue
      cost = np.asarray(last_costs(g), np.float64)[:, free]
      plan = _sinkhorn_np(cost, epsilon, iters)
      # Greedy rounding: highest plan entries first, one tool per code.
      order = np.argsort(-plan, axis=None, kind="stable")
      rows_done: dict[int, int] = {}
      cols_done: set[int] = set()
      for flat in order:
        i, j = divmod(int(flat), len(free))
        if i in rows_done or j in cols_done:
          continue
        rows_done[i] = int(free[j])
        cols_done.add(j)
        if len(rows_done) == min(len(g), len(free)):
          break
      for i, tool in enumerate(g):
        if i in rows_done:
          new = rows_done[i]
          moved += int(new != codes[tool, -1])
          codes[tool, -1] = new
          occupied[key].add(new)
  after_sk = collision_rate(codes)
  suffixed = 0
  rest = collision_groups(codes)
  if rest:
    suffix = np.full((n, 1), -1, np.int32)
    for g in rest:
      suffix[g, 0] = np.arange(len(g), dtype=np.int32)
      suffixed += len(g)
    codes = np.concatenate([codes, suffix], axis=1)
  report = CollisionReport(before, len(groups), in_coll, moved, after_sk, suffixed, collision_rate(codes))
  return codes, report
