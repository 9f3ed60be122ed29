"""Collisions: tools whose code sequences are equal, and what each method does about them (`codebook.collisions`).

Each paper handles them its own way, so the policy is a per-method setting (`POLICIES`), recorded in the codebook and
in its `CollisionReport` (counts and rates before and after):

  sinkhorn  ToolWeaver ("uniform mapping: resolve collisions using Sinkhorn-Knopp optimal transport", released
            README; `index/generate_indices_toolweaver.py`): the colliding tools' last level is re-assigned by an
            entropic-OT plan (step 1 below). Tools that still share a code tuple afterwards stay shared and are
            reported: the released script re-encodes colliding groups with Sinkhorn, then leaves the loop while
            collisions remain ("we no longer differentiate them"), so its `<f_n>` collision token is never reached.
  report    Toolscaler (section 4.2 codes, collisions only counted in its analysis): codes are what the quantiser
            gives. Tools sharing a code tuple share one trie leaf (`decoding/trie.py`: the leaf decodes to all of
            its member tools, at that beam's score, in tool-id order).
  unique    our guarantee, not either paper's as run (it is what the released `<f_n>` token intends): step 1, then a
            disambiguating suffix level (step 2), so every tool ends with its own code sequence and the trie maps
            each leaf to exactly one tool.
  (ToolGen's atomic ids, one token per tool, never collide; its config reports 0.)

Shared codes downstream: a member's training target is the shared code text (`code_vocab.CodeVocabulary.tool_text`),
so memorisation teaches every member's document the same code, and each Query-Tool pair stays one retrieval example
(a query whose relevant tools share a code has that target once per tool, as the pairs are, not deduplicated).
Retrieval ranks a shared leaf's members at the leaf's beam score, in increasing tool id (`decoding/trie.py`).

Resolution (`resolve`), never dropping or merging tools:
  1. Sinkhorn re-assignment of the last level (ToolWeaver's approach): in each colliding group the member nearest
     to the shared code keeps it (fewest codes change); the others are spread over the last-level codes still
     free under their prefix by an entropic-OT plan on their last-level distances (centred costs, eps 0.003 as
     the released code's resolution pass), rounded greedily to distinct codes in decreasing plan probability.
     Groups are processed in order of their smallest tool id, so the result is deterministic.
  2. (`suffix=True`, the 'unique' policy) whatever still collides gets a disambiguating suffix code: one extra
     level whose value is the member's rank (by tool id) in its group; every other tool has -1 there (codes are -1
     padded, variable length). Because all tools of a colliding group get a suffix, no code is a proper prefix of
     another.
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


POLICIES = ("sinkhorn", "report", "unique")  # config.codebook.collisions (module docstring)


@dataclasses.dataclass(frozen=True)
class CollisionReport:
  """Counts before and after a policy. A rate is (N - #distinct code tuples) / N (`collision_rate`); a group is a
  set of >= 2 tools sharing one full code tuple. `shared_*` describe the codes as finally used (0 under 'unique')."""
  rate_before: float
  groups_before: int
  tools_in_collisions: int
  moved_by_sinkhorn: int
  rate_after_sinkhorn: float
  suffixed_tools: int
  rate_after: float
  policy: str = "unique"
  shared_groups: int = 0      # groups of tools left sharing a code tuple (trie leaves with several tools)
  shared_tools: int = 0       # tools in those groups
  largest_group: int = 1      # most tools under one code tuple (1: every code is unique)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def shared_counts(codes: np.ndarray) -> dict:
  """{'shared_groups', 'shared_tools', 'largest_group'} of `codes` [N, L] (-1 padded rows compare as written)."""
  g = collision_groups(codes) if len(codes) else []
  return {"shared_groups": len(g), "shared_tools": int(sum(len(x) for x in g)),
          "largest_group": int(max((len(x) for x in g), default=1))}


def report_only(codes: np.ndarray) -> CollisionReport:
  """The 'report' policy: codes unchanged, collisions counted."""
  r = collision_rate(codes)
  g = collision_groups(codes)
  return CollisionReport(r, len(g), int(sum(len(x) for x in g)), 0, r, 0, r, policy="report",
                         **shared_counts(codes))


def apply_policy(policy: str, codes: np.ndarray, last_costs: Callable[[np.ndarray], np.ndarray] | None,
                 codebook_size: int) -> tuple[np.ndarray, CollisionReport]:
  """`codes` [N, L] handled as `policy` says (module docstring) -> (codes, report)."""
  if policy not in POLICIES:
    raise ValueError(f"collision policy must be one of {POLICIES}, got {policy!r}")
  if policy == "report":
    return np.array(codes, np.int32, copy=True), report_only(codes)
  return resolve(codes, last_costs, codebook_size, suffix=policy == "unique")


def _lse(x: np.ndarray, axis: int) -> np.ndarray:
  m = np.max(x, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):
    return np.squeeze(np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m, axis)


def _group_plans(cost: np.ndarray, free: np.ndarray, eps: float, iters: int) -> np.ndarray:
  """Log-domain Sinkhorn (float64, NumPy) for a batch of equally sized groups. cost [B, g, K], free [B, K] bool ->
  log plan [B, g, K]; rows uniform 1/g, columns uniform over each group's free codes, taken codes get no mass.
  Costs are centred to [-1, 1] over the free codes of each group (as `sinkhorn.center_costs`)."""
  big = np.where(free[:, None, :], cost, np.nan)
  hi, lo = np.nanmax(big, axis=(1, 2), keepdims=True), np.nanmin(big, axis=(1, 2), keepdims=True)
  mid = (hi + lo) / 2
  c = (cost - mid) / (hi - mid + 1e-5)
  lk = np.where(free[:, None, :], -c / eps, -np.inf)
  b, g, k = cost.shape
  log_a = -np.log(g)
  with np.errstate(divide="ignore"):
    log_b = np.where(free, -np.log(np.maximum(free.sum(1, keepdims=True), 1)), -np.inf)
  f, h = np.zeros((b, g)), np.zeros((b, k))
  with np.errstate(invalid="ignore"):  # taken columns: -inf - -inf, masked out by the where
    for _ in range(iters):
      f = log_a - _lse(lk + h[:, None, :], axis=2)
      h = np.where(free, log_b - _lse(lk + f[:, :, None], axis=1), -np.inf)
  return lk + f[:, :, None] + h[:, None, :]


def resolve(codes: np.ndarray, last_costs: Callable[[np.ndarray], np.ndarray] | None, codebook_size: int, *,
            epsilon: float = 0.003, iters: int = 50, suffix: bool = True) -> tuple[np.ndarray, CollisionReport]:
  """Step 1 (Sinkhorn) and, with `suffix`, step 2 of the module docstring. suffix=True makes every row of `codes`
  [N, L] unique -> (codes [N, L] or [N, L + 1] with a -1 padded suffix, report); suffix=False (ToolWeaver's
  'sinkhorn' policy) leaves what step 1 could not separate shared -> (codes [N, L], report).

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
    # Occupancy of last-level codes under each prefix (all tools); a group may use its own original code.
    prefix_rows = _rows(codes[:, :-1]) if l > 1 else np.zeros(n, np.dtype((np.void, 1)))
    occupied: dict[bytes, set[int]] = {}
    for key, last in zip(prefix_rows.tolist(), codes[:, -1].tolist()):
      occupied.setdefault(key, set()).add(last)
    keys = [prefix_rows[g[0]].tolist() for g in groups]
    # The member nearest to the shared code keeps it; the others ("movers") are re-assigned.
    movers = []
    all_costs = np.asarray(last_costs(np.concatenate(groups)), np.float64)  # one call for every member
    bounds = np.cumsum([0] + [len(g) for g in groups])
    for gi, g in enumerate(groups):
      c = all_costs[bounds[gi]:bounds[gi + 1]]
      keep = int(np.argmin(c[:, int(codes[g[0], -1])]))
      movers.append((np.delete(g, keep), np.delete(c, keep, axis=0)))
    # Plans for all groups at once (batched by mover count) from the initial occupancy ...
    plans: list[np.ndarray | None] = [None] * len(groups)
    by_size: dict[int, list[int]] = {}
    for gi, (mv, _) in enumerate(movers):
      by_size.setdefault(len(mv), []).append(gi)
    for size, gis in by_size.items():
      for lo in range(0, len(gis), 256):
        chunk = gis[lo:lo + 256]
        free = np.ones((len(chunk), codebook_size), bool)
        for r, gi in enumerate(chunk):
          free[r, list(occupied[keys[gi]])] = False
        cost = np.stack([movers[gi][1] for gi in chunk])
        ok = free.any(1)
        logp = _group_plans(cost, free | ~ok[:, None], epsilon, iters)
        for r, gi in enumerate(chunk):
          plans[gi] = logp[r] if ok[r] else None
    # ... then greedy rounding in group order against the live occupancy: highest plan entries first, one tool
    # per code, never a code another tool holds by now.
    for gi, (mv, _) in enumerate(movers):
      if plans[gi] is None:
        continue
      key = keys[gi]
      taken = occupied[key]
      order = np.argsort(-plans[gi], axis=None, kind="stable")
      rows_done: dict[int, int] = {}
      cols_done: set[int] = set()
      for flat in order:
        i, j = divmod(int(flat), codebook_size)
        if i in rows_done or j in cols_done or j in taken or not np.isfinite(plans[gi][i, j]):
          continue
        rows_done[i] = j
        cols_done.add(j)
        if len(rows_done) == len(mv):
          break
      for i, tool in enumerate(mv):
        if i in rows_done:
          moved += 1
          codes[tool, -1] = rows_done[i]
          taken.add(rows_done[i])
  after_sk = collision_rate(codes)
  suffixed = 0
  rest = collision_groups(codes) if suffix else []
  if rest:
    col = np.full((n, 1), -1, np.int32)
    for g in rest:
      col[g, 0] = np.arange(len(g), dtype=np.int32)
      suffixed += len(g)
    codes = np.concatenate([codes, col], axis=1)
  report = CollisionReport(before, len(groups), in_coll, moved, after_sk, suffixed, collision_rate(codes),
                           policy="unique" if suffix else "sinkhorn", **shared_counts(codes))
  return codes, report
