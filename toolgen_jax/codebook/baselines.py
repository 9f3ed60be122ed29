"""Baseline tool indexings from the papers' tables (ToolGen section 3.1; ToolWeaver/Toolscaler baselines).

All return codes [N, L] int32, -1 padded, unique per tool:
  atomic        one new token per tool (ToolGen's choice): codes[i] = (i,)
  numerical     the tool's index as a fixed-width digit string, one level per digit
  hierarchical  ToolGen's clustering tree: recursive k-means with `branching` children until a node has at most
                `branching` tools; a tool's code is its path of child indices plus its rank in the leaf
  semantic      the tool's own name in the LLM's existing vocabulary (tokenizer ids) followed by an end id, so that no
                name is a prefix of another (the trie needs prefix-free codes); identical names get a suffix
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from toolgen_jax.codebook import collisions


def atomic(num_tools: int) -> np.ndarray:
  return np.arange(num_tools, dtype=np.int32)[:, None]


def numerical(num_tools: int, base: int = 10) -> np.ndarray:
  """[N, W] digits (most significant first) of 0..N-1 in `base`, W = max(1, ceil(log_base N))."""
  width = max(1, math.ceil(math.log(max(num_tools, 2), base) - 1e-12))
  ids = np.arange(num_tools, dtype=np.int64)
  digits = [(ids // base ** (width - 1 - p)) % base for p in range(width)]
  return np.stack(digits, 1).astype(np.int32)


def hierarchical(embeddings: np.ndarray, branching: int = 10, seed: int = 0, max_depth: int = 12) -> np.ndarray:
  """ToolGen's hierarchical index: recursive k-means (k = branching) on the tool embeddings. -> [N, depth + 1].

  scikit-learn's KMeans is used here on purpose: the tree has thousands of tiny, differently sized clustering
  problems, for which a jitted k-means would recompile per shape (ToolGen does the same).
  """
  from sklearn.cluster import KMeans
  x = np.asarray(embeddings, np.float32)
  n = len(x)
  paths: list[list[int]] = [[] for _ in range(n)]
  stack = [(np.arange(n), 0)]
  while stack:
    ids, depth = stack.pop()
    if len(ids) <= branching or depth >= max_depth:
      for rank, t in enumerate(ids):
        paths[t].append(rank)
      continue
    labels = KMeans(branching, n_init=1, random_state=seed).fit(x[ids]).labels_
    if len(np.unique(labels)) == 1:  # identical points: split by position so the recursion terminates
      labels = np.arange(len(ids)) % branching
    for c in range(branching):
      sub = ids[labels == c]
      if len(sub):
        for t in sub:
          paths[t].append(c)
        stack.append((sub, depth + 1))
  width = max(len(p) for p in paths) if paths else 1
  out = np.full((n, width), -1, np.int32)
  for i, p in enumerate(paths):
    out[i, :len(p)] = p
  # Leaves of different depths can make one path a prefix of another only if a leaf rank equals a child index
  # at the same depth: ranks are appended at leaves, children at internal nodes, so paths are prefix-free.
  return out


def semantic(names: Sequence[str], tokenize: Callable[[str], Sequence[int]], end_id: int) -> np.ndarray:
  """Token ids of each tool name, then `end_id`. -> [N, L] -1 padded, prefix-free.

  The k-th repeat (k >= 2, by tool id) of a name is written "name #k", so that its code stays in the LLM's own
  vocabulary; a remaining clash raises rather than merging tools.
  """
  seen: dict[str, int] = {}
  toks = []
  for s in names:
    seen[s] = seen.get(s, 0) + 1
    text = s if seen[s] == 1 else f"{s} #{seen[s]}"
    toks.append(list(tokenize(text)) + [int(end_id)])
  width = max((len(t) for t in toks), default=1)
  out = np.full((len(toks), width), -1, np.int32)
  for i, t in enumerate(toks):
    if int(end_id) in t[:-1]:
      raise ValueError(f"semantic codes: tool {i} name {names[i]!r} tokenizes to the end id {end_id}")
    out[i, :len(t)] = t
  if collisions.collision_rate(out):
    raise ValueError("semantic codes: distinct names tokenized to identical ids (e.g. 'a #2' written literally); "
                     f"groups: {[g.tolist() for g in collisions.collision_groups(out)[:5]]}")
  return out
