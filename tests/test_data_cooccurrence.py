"""Co-occurrence graph: counts against a brute-force dense reference, symmetry, zero diagonal, the normalised
adjacency against NumPy float64, edges, save/load, remap."""

import numpy as np
import pytest

from toolgen_jax.data import cooccurrence as cooc
from toolgen_jax.data.records import Message, Query, Trajectory


def dense_reference(groups, n):
  c = np.zeros((n, n), np.int64)
  for g in groups:
    s = sorted(set(g))
    for u in s:
      for v in s:
        if u != v:
          c[u, v] += 1
  return c


def test_counts_match_brute_force_and_are_symmetric():
  rng = np.random.default_rng(0)
  n = 30
  groups = [rng.choice(n, size=rng.integers(1, 6), replace=True).tolist() for _ in range(200)]
  g = cooc.from_groups(groups, n)
  ref = dense_reference(groups, n)
  np.testing.assert_array_equal(g.counts.toarray(), ref)
  assert (g.counts != g.counts.T).nnz == 0 and g.counts.diagonal().sum() == 0
  pairs, w = g.edges()
  assert g.num_edges == len(pairs) == int((np.triu(ref, 1) > 0).sum())
  assert (pairs[:, 0] < pairs[:, 1]).all()
  np.testing.assert_array_equal(w, ref[pairs[:, 0], pairs[:, 1]])


@pytest.mark.parametrize("norm", ["sym", "row", "none"])
def test_normalised_adjacency_matches_numpy(norm):
  groups = [[0, 1, 2], [0, 1], [2, 3], [1, 3], [5]]
  n = 6
  c = dense_reference(groups, n).astype(np.float64)
  d = c.sum(1)
  inv = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0.0)
  ref = {"sym": np.sqrt(inv)[:, None] * c * np.sqrt(inv)[None, :], "row": inv[:, None] * c, "none": c}[norm]
  a = cooc.from_groups(groups, n).adjacency(norm).toarray()
  np.testing.assert_allclose(a, ref, rtol=1e-6)
  if norm == "sym":
    np.testing.assert_allclose(a, a.T)
    assert np.abs(np.linalg.eigvalsh(a)).max() <= 1 + 1e-6  # spectrum of D^-1/2 C D^-1/2 lies in [-1, 1]
  if norm == "row":
    np.testing.assert_allclose(a.sum(1)[d > 0], 1.0, rtol=1e-6)
  assert not a[4].any() and not a[5].any()  # isolated tools have zero rows
  with pytest.raises(ValueError):
    cooc.from_groups(groups, n).adjacency("bogus")


def test_episodes_merge_query_and_its_trajectory():
  qs = [Query(id="q1", text="t", relevant=(0, 1)), Query(id="q2", text="t", relevant=(2,))]
  msgs = lambda *acts: tuple(Message(role="assistant", action=a, action_name="x") for a in acts)
  trajs = [Trajectory(id="a", query_id="q1", messages=msgs(0, 1, None)),   # same tools as q1: counted once
           Trajectory(id="b", query_id="q2", messages=msgs(3)),            # q2 = {2, 3}
           Trajectory(id="c", query_id="zz", messages=msgs(3, 4, 4))]      # unknown query: its own episode
  g = cooc.build(6, qs, trajs, extra_groups=[[0, 1], [5]])
  ref = dense_reference([[0, 1], [2, 3], [3, 4], [0, 1]], 6)
  np.testing.assert_array_equal(g.counts.toarray(), ref)


def test_save_load_and_remap(tmp_path):
  g = cooc.from_groups([[0, 1, 2], [2, 3]], 4)
  g.save(tmp_path / "c.npz")
  h = cooc.Cooccurrence.load(tmp_path / "c.npz")
  np.testing.assert_array_equal(g.counts.toarray(), h.counts.toarray())
  r = g.remap([3, 2, 1, 0], 5)  # reverse ids into a bigger corpus
  np.testing.assert_array_equal(r.counts.toarray()[:4, :4], g.counts.toarray()[::-1, ::-1])
  merged = g.remap([0, 0, 1, 2], 3)  # tools 0 and 1 become one: their mutual edge vanishes (no self loops)
  assert merged.counts.diagonal().sum() == 0 and merged.counts[0, 1] == 2
  with pytest.raises(ValueError):
    cooc.from_groups([[0, 9]], 4)
