"""Baseline indexings: unique, prefix-free codes."""

import numpy as np
import pytest

from toolgen_jax.codebook import baselines, collisions


def _prefix_free(codes):
  seqs = [tuple(int(c) for c in r if c >= 0) for r in codes]
  s = set(seqs)
  return all(seq[:k] not in s for seq in seqs for k in range(1, len(seq)))


def test_atomic_and_numerical():
  assert baselines.atomic(3).tolist() == [[0], [1], [2]]
  num = baselines.numerical(1234)
  assert num.shape == (1234, 4) and num[1233].tolist() == [1, 2, 3, 3] and num[7].tolist() == [0, 0, 0, 7]
  assert baselines.numerical(1000).shape == (1000, 3)
  assert collisions.collision_rate(num) == 0


def test_hierarchical_tree_is_unique_prefix_free_and_groups_neighbours():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(5, 8)) * 10
  lab = np.repeat(np.arange(5), 30)
  x = centers[lab] + rng.normal(size=(150, 8))
  x[:4] = x[0]  # identical points must still get distinct codes
  codes = baselines.hierarchical(x, branching=5)
  assert collisions.collision_rate(codes) == 0 and _prefix_free(codes)
  # A well-separated blob shares its first code.
  for b in range(5):
    assert len(np.unique(codes[lab == b, 0])) == 1


def test_semantic_uses_name_tokens_and_disambiguates_repeats():
  vocab = {}
  tok = lambda s: [vocab.setdefault(w, len(vocab)) for w in s.split()]
  codes = baselines.semantic(["get weather", "get", "get weather", "get news"], tok, end_id=999)
  assert codes[1].tolist()[:2] == [vocab["get"], 999]
  assert collisions.collision_rate(codes) == 0 and _prefix_free(codes)
  assert codes[2].tolist()[:4] == [vocab["get"], vocab["weather"], vocab["#2"], 999]
  with pytest.raises(ValueError, match="identical ids"):
    baselines.semantic(["a #2", "a", "a"], tok, end_id=999)
