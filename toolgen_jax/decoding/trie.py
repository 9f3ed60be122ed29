"""Trie transition tables over tool code sequences, built offline in NumPy, looked up on device with static shapes.

A tool is a short sequence of codes (ToolWeaver: L=2 codes of K=1024; Toolscaler: 4 codes of 512; ToolGen atomic:
1 code of N; semantic names: a variable number of subword tokens). Decoding must only ever emit a sequence that
spells a live tool. The peers walk a Python dict per beam and per step (ToolGen `evaluation/utils/utils.py`); we
replace it with array lookups (STATIC, youtube/static-constraint-decoding): node x code -> child.

Layout (`Trie`, host; `DeviceTrie`, device):
- Nodes are numbered breadth first and, within a depth, in (parent, code) order: the root is node 0 and the child
  reached through edge e is node e + 1. So the children of a node are one contiguous run of edges, described by a
  CSR row pointer `indptr` (int32 per internal node) and the sorted `edge_code` of each edge (int16 when the
  alphabet allows): no child ids are stored. A depth's lookup gathers a fixed width (the depth's maximal branching
  factor) of candidates per beam, so its cost does not grow with the number of tools.
- The first depths, where few nodes fan out into many codes, also get a dense int32 table [nodes at depth, K] ->
  child node (or -1): a single gather, no width bound. Depths are made dense from the root down while they fit
  `dense_budget_bytes` (config.decode.dense_budget_bytes) and their maximal branching is at least K/2 (below that
  the CSR step scores fewer candidates and is faster as well as smaller).
- Variable-length codes: when `end_token` is given an END code (index K) is appended to every sequence, so a
  sequence ends where the model emits END (as ToolGen's names end with EOS) and one sequence may be a prefix of
  another. Without it sequences must be prefix-free; all terminal nodes are leaves either way.
- `code_tokens[d, k]` is the vocabulary id of code k at position d (per-level new tokens for RQ codes, shared digit
  tokens for numerical ids, the identity for subword names); `token_to_code` inverts it.
- `live[node]` says whether a live tool lies below a node: `remove` clears it (removed tools never come back, their
  ids are never reused) without renumbering; `add` rebuilds from the live sequences plus the new ones.
- Restriction to a candidate subset (in-domain setting) needs no rebuild: `allowed_nodes` propagates a per-query
  tool mask from the terminal nodes up to the root on device, one segment-max per depth.
- Shared codes (`shared_codes=True`; the codebook's collision policy is 'report', Toolscaler, or 'sinkhorn',
  ToolWeaver, which may leave tools sharing a code tuple): equal sequences end at one terminal node, a shared
  leaf. The search is unchanged: a leaf is one hypothesis, labelled with a representative member (`node_tool`: its
  smallest live tool id). `expand` turns the ranked hypotheses into ranked tools: every live member of a leaf at
  that leaf's score, members in increasing tool id (the deterministic tie-break), leaves in beam order, optionally
  restricted to a candidate set. A leaf is live (and allowed) when any member is. Without `shared_codes`, equal
  sequences are an error, as a codebook that promises unique codes must not produce them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def level_token_table(first_token: int, num_levels: int, codebook_size: int, *, shared: bool = False) -> np.ndarray:
  """[num_levels, K] vocabulary ids of codes when the new tokens are appended from `first_token` on.

  shared=False: level d uses its own K tokens (ToolWeaver / Toolscaler RQ codes);
  shared=True: every level uses the same K tokens (numerical ids spelled with shared digit tokens).
  """
  k = np.arange(codebook_size, dtype=np.int64)
  rows = [first_token + k + (0 if shared else d * codebook_size) for d in range(num_levels)]
  return np.stack(rows).astype(np.int32)


@struct.dataclass
class DeviceTrie:
  """The trie tables on device. Arrays are pytree leaves (pass them to jit as arguments, never close over them);
  the layout is static metadata, so a jitted search recompiles only when the layout changes.

  code_tokens: [D, Kc] int32 token id of code k at position d (Kc = K, + 1 END column when variable length).
  dense: one [n_d, Kc] int32 child table per dense depth d (an empty [0, Kc] array at CSR depths).
  indptr: [num_internal + 1] int32, children of node p are nodes indptr[p] + 1 ... indptr[p + 1].
  edge_code: [num_nodes - 1] int16/int32, the code on the edge into node e + 1.
  node_tool: [num_nodes] int32 tool id of a terminal node (a shared leaf: its representative), -1 elsewhere.
  node_parent: [num_nodes] int32 (root: 0), only read by `allowed_nodes`.
  live: [num_nodes] bool, a live tool lies below.
  member_node, member_tool: [M] int32, the terminal node and tool id of each live tool (M live tools; a shared
    leaf appears once per member), only read by `allowed_nodes`.
  """

  code_tokens: jax.Array
  dense: tuple
  indptr: jax.Array
  edge_code: jax.Array
  node_tool: jax.Array
  node_parent: jax.Array
  live: jax.Array
  member_node: jax.Array
  member_tool: jax.Array
  depth: int = struct.field(pytree_node=False)
  level_start: tuple = struct.field(pytree_node=False)   # D + 2 entries: first node of each depth 0..D, end
  level_dense: tuple = struct.field(pytree_node=False)   # D bools: depth d (the step choosing code d) is dense
  level_width: tuple = struct.field(pytree_node=False)   # D ints: candidates per beam at step d

  @property
  def nbytes(self) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(self)))


@dataclasses.dataclass(frozen=True)
class Trie:
  """Host-side trie over code sequences (see the module docstring for the layout). Build with `Trie.build`."""

  codes: np.ndarray          # [N, D] int32 code sequences of the tools ever added (END appended, -1 padded)
  tool_ids: np.ndarray       # [N] int32
  removed: frozenset         # tool ids removed; never decodable again, never re-addable
  code_tokens: np.ndarray    # [D, Kc] int32
  end_token: int | None
  num_codes: int             # K (without END)
  dense_budget_bytes: int
  level_start: np.ndarray    # [D + 2] int64
  indptr: np.ndarray         # [num_internal + 1] int32
  edge_code: np.ndarray      # [num_nodes - 1]
  node_tool: np.ndarray      # [num_nodes] int32
  node_parent: np.ndarray    # [num_nodes] int32
  terminal: np.ndarray       # [N] int64 terminal node of each row of `codes`
  live: np.ndarray           # [num_nodes] bool
  dense: tuple               # per depth: [n_d, Kc] int32 or None
  level_width: tuple
  shared_codes: bool = False  # equal sequences share a leaf (module docstring)

  # --- construction -------------------------------------------------------------------------------------------

  @classmethod
  def build(cls, codes, tool_ids=None, *, code_tokens=None, num_codes: int | None = None,
            end_token: int | None = None, dense_budget_bytes: int = 64 * 2**20,
            removed: frozenset = frozenset(), shared_codes: bool = False) -> "Trie":
    """Builds the tables.

    Args:
      codes: [N, L] int array of code sequences, or a list of N int sequences of any lengths (variable length
        needs `end_token`); in a padded array, -1 marks positions past a sequence's end.
      tool_ids: [N] ids of the tools (default 0..N-1); distinct.
      code_tokens: [L, K] int token id of each (position, code); default: code k at any position is token k.
      num_codes: K, the codebook size (default: code_tokens.shape[1], else max code + 1).
      end_token: vocabulary id of the END marker (e.g. EOS); appended after every sequence.
      dense_budget_bytes: memory allowed for dense depth tables.
      shared_codes: allow tools with equal sequences (one shared leaf; see `expand`); False raises on them.
    """
    codes = _as_padded(codes)
    n, length = codes.shape
    tool_ids = np.arange(n, dtype=np.int32) if tool_ids is None else np.asarray(tool_ids, dtype=np.int64)
    if tool_ids.shape != (n,):
      raise ValueError(f"tool_ids: expected shape ({n},), got {tool_ids.shape}")
    if n and tool_ids.min() < 0:
      raise ValueError(f"tool_ids: negative id {int(tool_ids.min())}")
    if len(np.unique(tool_ids)) != n:
      raise ValueError("tool_ids: duplicate tool ids")
    back = set(tool_ids.tolist()) & set(removed)
    if back:
      raise ValueError(f"tools {sorted(back)[:10]} were removed and can never come back")
    lengths = (codes >= 0).sum(1)
    if n and not np.all((codes >= 0) == (np.arange(length)[None] < lengths[:, None])):
      bad = int(np.nonzero(~np.all((codes >= 0) == (np.arange(length)[None] < lengths[:, None]), 1))[0][0])
      raise ValueError(f"codes row {bad} (tool {int(tool_ids[bad])}): -1 padding only allowed after the last code")
    if n and lengths.min() == 0:
      raise ValueError(f"codes row {int(np.argmin(lengths))} (tool {int(tool_ids[np.argmin(lengths)])}) is empty")
    if code_tokens is not None:
      code_tokens = np.asarray(code_tokens, dtype=np.int64)
      if code_tokens.ndim != 2 or code_tokens.shape[0] < length:
        raise ValueError(f"code_tokens: expected [>= {length}, K], got {code_tokens.shape}")
      code_tokens = code_tokens[:length]
    if num_codes is None:
      num_codes = code_tokens.shape[1] if code_tokens is not None else int(codes.max(initial=-1)) + 1
    if n and codes.max() >= num_codes:
      row = int(np.argmax(codes.max(1)))
      raise ValueError(f"codes row {row} (tool {int(tool_ids[row])}): code {int(codes[row].max())} >= K={num_codes}")
    if code_tokens is None:
      code_tokens = np.tile(np.arange(num_codes, dtype=np.int64), (length, 1))
    if code_tokens.shape[1] != num_codes:
      raise ValueError(f"code_tokens has {code_tokens.shape[1]} codes per position, K={num_codes}")
    if end_token is not None:  # END is code K at every position; it ends a sequence.
      codes = np.concatenate([codes, np.full((n, 1), -1, codes.dtype)], 1)
      codes[np.arange(n), lengths] = num_codes
      code_tokens = np.concatenate([code_tokens, code_tokens[:1]], 0)
      code_tokens = np.concatenate([code_tokens, np.full((length + 1, 1), end_token)], 1)
      lengths = lengths + 1
    # Without END a short sequence must not be a prefix of a longer one (checked on the sorted rows).
    return cls._from_padded(codes.astype(np.int32), tool_ids.astype(np.int32), lengths, frozenset(removed),
                            code_tokens.astype(np.int32), end_token, num_codes, dense_budget_bytes,
                            bool(shared_codes))

  @classmethod
  def _from_padded(cls, codes, tool_ids, lengths, removed, code_tokens, end_token, num_codes, budget,
                   shared_codes: bool = False) -> "Trie":
    n, depth = codes.shape
    kc = code_tokens.shape[1]
    order = np.lexsort(codes.T[::-1]) if n else np.zeros(0, np.int64)
    sc = codes[order]
    slen = lengths[order]
    # first_diff[i]: first position where sorted rows i and i-1 differ (D when equal).
    if n > 1:
      diff = sc[1:] != sc[:-1]
      first_diff = np.where(diff.any(1), diff.argmax(1), depth)
      dup = np.nonzero(first_diff == depth)[0]
      if len(dup) and not shared_codes:
        a, b = tool_ids[order[dup[0]]], tool_ids[order[dup[0] + 1]]
        raise ValueError(f"tools {int(a)} and {int(b)} have the same code sequence {sc[dup[0]].tolist()} "
                         "(resolve collisions in the codebook, or build with shared_codes=True)")
      pre = np.nonzero((first_diff >= slen[:-1]) & (first_diff < depth))[0]
      if len(pre):
        a, b = tool_ids[order[pre[0]]], tool_ids[order[pre[0] + 1]]
        raise ValueError(f"the code of tool {int(a)} is a prefix of the code of tool {int(b)}; "
                         "variable-length codes need end_token")
      first_diff = np.concatenate([[-1], first_diff])
    else:
      first_diff = np.full(n, -1)
    # node_id[i, d]: node reached by sorted row i after d + 1 codes (-1 past its end).
    node_id = np.full((n, depth), -1, np.int64)
    level_start = [0, 1]
    for d in range(depth):
      has = slen > d
      new = has & (first_diff <= d)
      ids = level_start[-1] + np.cumsum(new) - 1
      node_id[:, d] = np.where(has, ids, -1)
      level_start.append(level_start[-1] + int(new.sum()))
    num_nodes = level_start[-1]
    # Edge e leads into node e + 1; its parent and code come from the row that created the node.
    edge_code = np.zeros(max(num_nodes - 1, 0), np.int32)
    node_parent = np.zeros(num_nodes, np.int32)
    for d in range(depth):
      has = slen > d
      new = has & (first_diff <= d)
      child = node_id[new, d]
      edge_code[child - 1] = sc[new, d]
      node_parent[child] = 0 if d == 0 else node_id[new, d - 1]
    num_internal = level_start[depth]  # nodes at depths 0..D-1 may have children
    counts = np.bincount(node_parent[1:], minlength=num_internal)[:num_internal]
    indptr = np.zeros(num_internal + 1, np.int64)
    indptr[1:] = np.cumsum(counts)
    terminal_sorted = node_id[np.arange(n), slen - 1] if n else np.zeros(0, np.int64)
    node_tool = np.full(num_nodes, -1, np.int32)
    node_tool[terminal_sorted] = tool_ids[order]  # a shared leaf's representative is set by _with_live_rows
    terminal = np.empty(n, np.int64)
    terminal[order] = terminal_sorted
    widths = []
    for d in range(depth):
      c = counts[level_start[d]:level_start[d + 1]]
      widths.append(max(int(c.max(initial=0)), 1))
    # Dense tables from the root down while they fit the budget and the depth fans out widely: a dense step
    # scores all Kc codes per beam, a CSR step only the depth's maximal branching, so where nodes have few
    # children (deep levels, small corpora) CSR is both smaller and faster.
    dense, used = [], 0
    for d in range(depth):
      nd = level_start[d + 1] - level_start[d]
      size = nd * kc * 4
      wide = 2 * widths[d] >= kc
      if wide and used + size <= budget and (not dense or dense[-1] is not None):
        table = np.full((nd, kc), -1, np.int32)
        kids = np.arange(level_start[d + 1], level_start[d + 2])
        table[node_parent[kids] - level_start[d], edge_code[kids - 1]] = kids
        dense.append(table)
        used += size
      else:
        dense.append(None)
    ecode_dtype = np.int16 if kc <= np.iinfo(np.int16).max else np.int32
    live = np.zeros(num_nodes, bool)
    trie = cls(codes=codes, tool_ids=tool_ids, removed=removed, code_tokens=code_tokens, end_token=end_token,
               num_codes=num_codes, dense_budget_bytes=budget, level_start=np.asarray(level_start, np.int64),
               indptr=indptr.astype(np.int32), edge_code=edge_code.astype(ecode_dtype), node_tool=node_tool,
               node_parent=node_parent, terminal=terminal, live=live, dense=tuple(dense), level_width=tuple(widths),
               shared_codes=shared_codes)
    live_tools = ~np.isin(tool_ids, np.fromiter(removed, np.int64, len(removed)))
    return trie._with_live_rows(live_tools)

  def _with_live_rows(self, live_rows: np.ndarray) -> "Trie":
    """Recomputes `live` bottom-up from the terminal nodes of the live rows (one bincount per depth), and, with
    shared codes, each shared leaf's representative: its smallest live member (else its smallest member)."""
    live = np.zeros(self.num_nodes, bool)
    live[self.terminal[live_rows]] = True
    node_tool = self.node_tool
    if self.shared_codes and len(self.terminal):
      order = np.lexsort((self.tool_ids, ~live_rows, self.terminal))  # per leaf: live first, then by id
      first = np.ones(len(order), bool)
      first[1:] = self.terminal[order][1:] != self.terminal[order][:-1]
      node_tool = node_tool.copy()
      node_tool[self.terminal[order][first]] = self.tool_ids[order][first]
    ls = self.level_start
    for d in range(self.depth, 0, -1):
      kids = np.arange(ls[d], ls[d + 1])
      if len(kids):
        hit = np.bincount(self.node_parent[kids], weights=live[kids], minlength=self.num_nodes) > 0
        live |= hit
    return dataclasses.replace(self, live=live, node_tool=node_tool)

  # --- updates ------------------------------------------------------------------------------------------------

  def remove(self, tool_ids: Sequence[int]) -> "Trie":
    """Removes tools: their terminal nodes (and ancestors left without live tools) become unreachable."""
    tool_ids = np.asarray(tool_ids, np.int64).reshape(-1)
    self._rows_of(tool_ids)  # unknown ids are an error
    removed = self.removed | frozenset(tool_ids.tolist())
    keep = ~np.isin(self.tool_ids, np.fromiter(removed, np.int64, len(removed)))
    return dataclasses.replace(self, removed=removed)._with_live_rows(keep)

  def add(self, codes, tool_ids: Sequence[int]) -> "Trie":
    """Adds tools (new ids, live code sequences of their own): rebuilds the tables from live + new sequences."""
    new = _as_padded(codes)
    tool_ids = np.asarray(tool_ids, np.int64).reshape(-1)
    if self.end_token is not None:  # strip our END column from the stored rows
      old = np.where(self.codes == self.num_codes, -1, self.codes)
    else:
      old = self.codes
    keep = ~np.isin(self.tool_ids, np.fromiter(self.removed, np.int64, len(self.removed)))
    if np.isin(tool_ids, self.tool_ids[keep]).any():
      raise ValueError(f"tool ids {sorted(set(tool_ids.tolist()) & set(self.tool_ids.tolist()))[:10]} "
                       "are already in the trie")
    width = max(old.shape[1], new.shape[1])
    old = _pad_to(old[keep], width)
    new = _pad_to(new, width)
    allc = np.concatenate([old, new], 0)
    # Drop trailing all-padding columns that the END column left.
    allc = allc[:, :max(int((allc >= 0).sum(1).max(initial=1)), 1)]
    ct = self.code_tokens[:, :self.num_codes]
    if ct.shape[0] < allc.shape[1]:
      raise ValueError(f"codes of length {allc.shape[1]} exceed the {ct.shape[0]} positions of code_tokens")
    return Trie.build(allc, np.concatenate([self.tool_ids[keep], tool_ids]), code_tokens=ct,
                      num_codes=self.num_codes, end_token=self.end_token,
                      dense_budget_bytes=self.dense_budget_bytes, removed=self.removed,
                      shared_codes=self.shared_codes)

  # --- queries ------------------------------------------------------------------------------------------------

  @property
  def depth(self) -> int:
    return self.codes.shape[1]

  @property
  def num_nodes(self) -> int:
    return int(self.level_start[-1])

  @property
  def live_tool_ids(self) -> np.ndarray:
    return np.sort(self.tool_ids[self._live_rows()])

  def _live_rows(self) -> np.ndarray:
    return ~np.isin(self.tool_ids, np.fromiter(self.removed, np.int64, len(self.removed)))

  def members_of(self, tool_id: int) -> np.ndarray:
    """Live tool ids sharing `tool_id`'s code sequence (its leaf), increasing; [tool_id] without shared codes."""
    row = self._rows_of(np.asarray([tool_id], np.int64))[0]
    same = (self.terminal == self.terminal[row]) & self._live_rows()
    return np.sort(self.tool_ids[same])

  def expand(self, tool_ids: Sequence[int], scores: Sequence[float] | None = None,
             allowed=None) -> tuple[list[int], list[float]]:
    """Ranked hypotheses -> ranked tools: each id (a leaf's representative, -1 = empty slot, skipped) becomes every
    live member of its leaf in increasing tool id, all at that hypothesis' score; members outside `allowed` (a
    container of tool ids, e.g. the in-domain pool) are left out; a tool is listed once (first rank kept).
    Returns (tools, scores) (scores 0.0 when none are given). Without shared codes the ids pass through."""
    scores = [0.0] * len(tool_ids) if scores is None else list(scores)
    out, out_s, seen = [], [], set()
    for tid, sc in zip(tool_ids, scores):
      tid = int(tid)
      if tid < 0:
        continue
      members = self.members_of(tid).tolist() if self.shared_codes else [tid]
      for m in members:
        if m in seen or (allowed is not None and m not in allowed):
          continue
        seen.add(m)
        out.append(m)
        out_s.append(float(sc))
    return out, out_s

  def _rows_of(self, tool_ids: np.ndarray) -> np.ndarray:
    """Rows of `codes` holding these tool ids (KeyError names the unknown ones)."""
    order = np.argsort(self.tool_ids)
    if len(order) == 0:
      order = np.zeros(1, np.int64)
      ok = np.zeros(tool_ids.shape, bool)
    else:
      pos = np.clip(np.searchsorted(self.tool_ids[order], tool_ids), 0, len(order) - 1)
      ok = self.tool_ids[order][pos] == tool_ids
    if not np.all(ok):
      raise KeyError(f"tool ids not in the trie: {tool_ids[~ok][:10].tolist()}")
    return order[pos]

  def tokens_of(self, tool_ids: Sequence[int]) -> np.ndarray:
    """[n, D] vocabulary ids spelling each tool (END included), -1 padded: the training targets."""
    rows = self._rows_of(np.asarray(tool_ids, np.int64).reshape(-1))
    c = self.codes[rows]
    tok = self.code_tokens[np.arange(self.depth)[None], np.maximum(c, 0)]
    return np.where(c >= 0, tok, -1).astype(np.int32)

  def token_to_code(self, tokens: np.ndarray) -> np.ndarray:
    """[..., D] token ids at positions 0..D-1 -> codes (-1 for a token that is no code at its position)."""
    tokens = np.asarray(tokens)
    out = np.full(tokens.shape, -1, np.int32)
    for d in range(min(self.depth, tokens.shape[-1])):
      row = self.code_tokens[d]
      order = np.argsort(row, kind="stable")
      pos = np.clip(np.searchsorted(row[order], tokens[..., d]), 0, len(row) - 1)
      out[..., d] = np.where(row[order][pos] == tokens[..., d], order[pos], -1)
    return out

  def lookup(self, tokens: np.ndarray) -> np.ndarray:
    """[..., D'] token sequences (-1 padded) -> live tool id, -1 when the sequence spells no live tool.

    Vectorised: edges are sorted by (parent, code), so the key parent * Kc + code is sorted and one
    searchsorted per position finds every child.
    """
    tokens = np.asarray(tokens)
    codes = self.token_to_code(tokens)
    kc = self.code_tokens.shape[1]
    keys = self.node_parent[1:].astype(np.int64) * kc + self.edge_code.astype(np.int64)
    node = np.zeros(tokens.shape[:-1], np.int64)
    ok = np.ones(tokens.shape[:-1], bool)
    done = np.zeros(tokens.shape[:-1], bool)
    for d in range(tokens.shape[-1]):
      done |= tokens[..., d] < 0
      step = ~done
      if d >= self.depth:
        ok &= ~step
        continue
      want = node * kc + codes[..., d]
      e = np.clip(np.searchsorted(keys, want), 0, max(len(keys) - 1, 0))
      hit = (len(keys) > 0) & (codes[..., d] >= 0) & (keys[e] == want) if len(keys) else np.zeros_like(ok)
      ok &= ~step | hit
      node = np.where(step & ok, e + 1, node)
    tool = self.node_tool[node]
    return np.where(ok & (tool >= 0) & self.live[node], tool, -1).astype(np.int32)

  def nbytes(self) -> dict:
    """Device bytes of the tables the search reads, and per live tool."""
    arrays = [self.code_tokens, self.indptr, self.edge_code, self.node_tool, self.node_parent, self.live]
    members = 2 * 4 * int(self._live_rows().sum())  # member_node + member_tool, int32 per live tool
    total = int(sum(a.nbytes for a in arrays) + sum(t.nbytes for t in self.dense if t is not None)) + members
    n = max(len(self.live_tool_ids), 1)
    return {"device_bytes": total, "bytes_per_tool": total / n,
            "dense_bytes": int(sum(t.nbytes for t in self.dense if t is not None)),
            "num_nodes": self.num_nodes, "dense_depths": sum(t is not None for t in self.dense)}

  def device(self) -> DeviceTrie:
    kc = self.code_tokens.shape[1]
    dense = tuple(jnp.asarray(t) if t is not None else jnp.zeros((0, kc), jnp.int32) for t in self.dense)
    rows = self._live_rows()
    return DeviceTrie(code_tokens=jnp.asarray(self.code_tokens), dense=dense, indptr=jnp.asarray(self.indptr),
                      edge_code=jnp.asarray(self.edge_code), node_tool=jnp.asarray(self.node_tool),
                      node_parent=jnp.asarray(self.node_parent), live=jnp.asarray(self.live),
                      member_node=jnp.asarray(self.terminal[rows].astype(np.int32)),
                      member_tool=jnp.asarray(self.tool_ids[rows].astype(np.int32)),
                      depth=self.depth, level_start=tuple(int(x) for x in self.level_start),
                      level_dense=tuple(t is not None for t in self.dense), level_width=self.level_width)


def _as_padded(codes) -> np.ndarray:
  if isinstance(codes, np.ndarray) or (hasattr(codes, "shape") and hasattr(codes, "dtype")):
    arr = np.asarray(codes)
    if arr.ndim != 2:
      raise ValueError(f"codes: expected [N, L], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"codes: expected integers, got {arr.dtype}")
    if arr.size and arr.min() < -1:
      raise ValueError(f"codes: negative code {int(arr.min())} (-1 is padding)")
    return arr.astype(np.int64)
  seqs = [np.asarray(s, np.int64).reshape(-1) for s in codes]
  width = max((len(s) for s in seqs), default=1)
  out = np.full((len(seqs), width), -1, np.int64)
  for i, s in enumerate(seqs):
    if len(s) and s.min() < 0:
      raise ValueError(f"codes row {i}: negative code {int(s.min())}")
    out[i, :len(s)] = s
  return out


def _pad_to(a: np.ndarray, width: int) -> np.ndarray:
  if a.shape[1] >= width:
    return a
  return np.concatenate([a, np.full((a.shape[0], width - a.shape[1]), -1, a.dtype)], 1)


# --- device-side lookups -----------------------------------------------------------------------------------------

def candidates(trie: DeviceTrie, d: int, node: jax.Array, logp: jax.Array, allowed: jax.Array | None = None):
  """Children of `node` at step d (choosing the code at position d) with their log-probabilities.

  Args:
    node: [Q, B] int32 current node of each beam (a node at depth d; anything for dead beams).
    logp: [Q, B, V] next-token log-probabilities.
    allowed: optional [Q, num_nodes] bool, a query's allowed nodes (see `allowed_nodes`).
  Returns:
    cand_logp [Q, B, C] (-inf for no child), cand_token [Q, B, C] int32, cand_child [Q, B, C] int32
    (a valid node id everywhere, meaningful where cand_logp > -inf), C = trie.level_width[d] or Kc when dense.
  """
  q, b = node.shape
  lo = trie.level_start[d]
  n_at_d = trie.level_start[d + 1] - lo
  if trie.level_dense[d]:
    row = jnp.clip(node - lo, 0, max(n_at_d - 1, 0))
    child = trie.dense[d][row]                                  # [Q, B, Kc]
    token = jnp.broadcast_to(trie.code_tokens[d], child.shape)
    valid = child >= 0
  else:
    width = trie.level_width[d]
    safe = jnp.clip(node, 0, trie.indptr.shape[0] - 2)
    start = trie.indptr[safe]
    count = trie.indptr[safe + 1] - start
    j = jnp.arange(width, dtype=jnp.int32)
    edge = start[..., None] + j                                 # [Q, B, C]
    valid = j < count[..., None]
    edge = jnp.where(valid, edge, 0)
    code = trie.edge_code[edge].astype(jnp.int32)
    token = trie.code_tokens[d][code]
    child = edge + 1
  child = jnp.where(valid, child, 0)
  valid &= trie.live[child]
  if allowed is not None:
    valid &= jnp.take_along_axis(allowed, child.reshape(q, -1), axis=1).reshape(child.shape)
  lp = jnp.take_along_axis(logp, token, axis=-1)
  return jnp.where(valid, lp, -jnp.inf), token.astype(jnp.int32), child.astype(jnp.int32)


def allowed_nodes(trie: DeviceTrie, tool_mask: jax.Array) -> jax.Array:
  """[Q, num_tools] bool allowed tools -> [Q, num_nodes] bool nodes with an allowed tool below (root included).

  Tool ids outside the mask's range are not allowed, nor are removed tools: only terminals that are allowed *and*
  live propagate up, so a node is allowed only if an allowed live tool lies below it (else a beam could enter a
  branch whose allowed tools were all removed while its live ones are all outside the mask, and end with nothing).
  One scatter-max per depth, bottom up, so the candidate subset (the in-domain setting's GT pool) needs no rebuilt
  trie.
  """
  q, t = tool_mask.shape
  tool = trie.member_tool  # every live tool at its terminal node: a shared leaf is allowed if any member is
  ok = tool < t
  hit = jnp.where(ok[None], tool_mask[:, jnp.clip(tool, 0, max(t - 1, 0))], False)
  allowed = jnp.zeros((q, trie.node_tool.shape[0]), bool).at[:, trie.member_node].max(hit)
  ls = trie.level_start
  for d in range(trie.depth, 0, -1):
    kids = slice(ls[d], ls[d + 1])
    if ls[d + 1] == ls[d]:
      continue
    parents = trie.node_parent[kids]
    allowed = allowed.at[:, parents].max(allowed[:, kids])
  return allowed


def tool_mask_from_ids(candidate_ids, num_tools: int) -> np.ndarray:
  """[Q][M] candidate tool ids (ragged lists, or an array with -1 padding) -> [Q, num_tools] bool mask."""
  mask = np.zeros((len(candidate_ids), num_tools), bool)
  for i, ids in enumerate(candidate_ids):
    ids = np.asarray(ids, np.int64).reshape(-1)
    ids = ids[ids >= 0]
    if len(ids) and ids.max() >= num_tools:
      raise ValueError(f"query {i}: candidate tool id {int(ids.max())} >= num_tools={num_tools}")
    mask[i, ids] = True
  return mask
