"""Collision rate and resolution: unique codes for every tool, nothing dropped or merged, deterministic."""

import numpy as np
import pytest

from toolgen_jax.codebook import collisions


def test_rate_and_groups():
  codes = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 3], [4, 4]])
  assert collisions.collision_rate(codes) == pytest.approx(3 / 6)
  groups = collisions.collision_groups(codes)
  assert [g.tolist() for g in groups] == [[0, 1, 3], [2, 4]]
  assert collisions.collision_rate(np.zeros((0, 2), np.int32)) == 0.0


def test_sinkhorn_resolution_moves_members_to_free_nearest_codes():
  k = 8
  codes = np.array([[0, 1], [0, 1], [0, 1], [0, 2], [1, 1]])
  # Member costs: tool 0 prefers 1, tool 1 prefers 5, tool 2 prefers 2 (taken by tool 3) then 6.
  cost = np.full((5, k), 10.0)
  cost[0, 1] = 0.0
  cost[1, [1, 5]] = [0.5, 0.1]
  cost[2, [1, 2, 6]] = [0.4, 0.0, 0.2]
  out, rep = collisions.resolve(codes, lambda ids: cost[ids], k)
  assert out.shape == (5, 2)  # no suffix needed
  assert out[:, 1].tolist() == [1, 5, 6, 2, 1]
  assert (out[:, 0] == codes[:, 0]).all()  # prefixes untouched
  assert rep.rate_before == pytest.approx(2 / 5) and rep.rate_after == 0 and rep.suffixed_tools == 0
  assert rep.moved_by_sinkhorn == 2


def test_overfull_prefix_gets_suffixes_without_dropping_tools():
  k = 2
  codes = np.zeros((5, 2), np.int32)  # five tools, one prefix, only two last-level codes
  rng = np.random.default_rng(0)
  cost = rng.random((5, k))
  out, rep = collisions.resolve(codes, lambda ids: cost[ids], k)
  assert out.shape == (5, 3) and len(out) == 5
  assert collisions.collision_rate(out) == 0 and rep.rate_after == 0
  # No code is a proper prefix of another (the trie needs this): tools with a suffix share no 2-prefix with
  # an un-suffixed tool.
  plain = {tuple(r[:2]) for r in out if r[2] == -1}
  suffixed = {tuple(r[:2]) for r in out if r[2] != -1}
  assert not plain & suffixed


def test_suffix_only_and_determinism():
  codes = np.array([[3], [3], [3], [1]])
  out, rep = collisions.resolve(codes, None, 4)
  assert out.tolist() == [[3, 0], [3, 1], [3, 2], [1, -1]]
  assert rep.suffixed_tools == 3
  rng = np.random.default_rng(1)
  big = rng.integers(0, 6, (500, 2)).astype(np.int32)
  cost = rng.random((500, 6))
  a, _ = collisions.resolve(big, lambda ids: cost[ids], 6)
  b, _ = collisions.resolve(big, lambda ids: cost[ids], 6)
  np.testing.assert_array_equal(a, b)
  assert collisions.collision_rate(a) == 0


def test_policies_report_sinkhorn_unique():
  """Per-method collision handling: 'report' (Toolscaler) leaves codes as quantised, 'sinkhorn' (ToolWeaver) moves
  what it can and leaves the rest shared, 'unique' (ours) leaves nothing shared; every report counts the groups."""
  k = 2
  codes = np.array([[0, 0], [0, 0], [0, 0], [1, 1], [1, 1], [2, 0]], np.int32)
  cost = np.random.default_rng(3).random((6, k))
  out, rep = collisions.apply_policy("report", codes, lambda ids: cost[ids], k)
  np.testing.assert_array_equal(out, codes)
  assert (rep.policy, rep.groups_before, rep.tools_in_collisions, rep.shared_groups, rep.shared_tools,
          rep.largest_group) == ("report", 2, 5, 2, 5, 3)
  assert rep.rate_before == rep.rate_after == pytest.approx(3 / 6)
  out, rep = collisions.apply_policy("sinkhorn", codes, lambda ids: cost[ids], k)
  assert out.shape == codes.shape  # no suffix level
  # prefix 0 has two last-level codes for three tools: one stays shared; prefix 1 separates fully
  assert rep.policy == "sinkhorn" and rep.moved_by_sinkhorn == 2 and rep.shared_groups == 1
  assert rep.shared_tools == 2 and rep.rate_after == pytest.approx(1 / 6) == collisions.collision_rate(out)
  out, rep = collisions.apply_policy("unique", codes, lambda ids: cost[ids], k)
  assert rep.policy == "unique" and collisions.collision_rate(out) == 0 and rep.shared_groups == 0
  assert rep.largest_group == 1 and rep.suffixed_tools == 2
  with pytest.raises(ValueError, match="collision policy"):
    collisions.apply_policy("merge", codes, None, k)
