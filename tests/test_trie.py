"""Trie tables against a Python dict trie (the peers' structure), on fixed and variable-length codes."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.decoding.trie import Trie


def dict_trie(seqs):
  root = {}
  for tool, s in seqs.items():
    node = root
    for c in s:
      node = node.setdefault(c, {})
    node[None] = tool
  return root


def random_codes(rng, n, length, k, variable=False):
  if not variable:
    return np.unique(rng.integers(0, k, (n, length)), axis=0)
  seqs = {tuple(rng.integers(0, k, rng.integers(1, length + 1)).tolist()) for _ in range(n)}
  return [list(s) for s in sorted(seqs)]


def test_small_layout_and_lookup():
  codes = np.array([[0, 1], [0, 2], [1, 0], [2, 2]])
  t = Trie.build(codes, tool_ids=[10, 11, 12, 13], code_tokens=[[50, 51, 52], [60, 61, 62]])
  np.testing.assert_array_equal(t.level_start, [0, 1, 4, 8])
  np.testing.assert_array_equal(t.indptr, [0, 3, 5, 6, 7])          # root: 3 children; node 1: 2; ...
  np.testing.assert_array_equal(t.edge_code, [0, 1, 2, 1, 2, 0, 2])
  np.testing.assert_array_equal(t.node_tool, [-1, -1, -1, -1, 10, 11, 12, 13])
  np.testing.assert_array_equal(t.tokens_of([10, 13]), [[50, 61], [52, 62]])
  np.testing.assert_array_equal(t.lookup(np.array([[50, 61], [52, 62], [50, 60], [60, 50]])), [10, 13, -1, -1])
  assert t.level_width == (3, 2)


@pytest.mark.parametrize("variable,budget", [(False, 0), (True, 0), (False, 1 << 30),
                                             pytest.param(True, 1 << 30, marks=pytest.mark.slow)])
def test_candidates_match_dict_trie(variable, budget):
  rng = np.random.default_rng(1)
  k, length = 6, 3
  codes = random_codes(rng, 60, length, k, variable)
  end = 99 if variable else None
  t = Trie.build(codes, code_tokens=np.arange(length * k).reshape(length, k) + 20, end_token=end,
                 dense_budget_bytes=budget)
  kc = t.code_tokens.shape[1]
  want_dense = np.cumprod([budget > 0 and 2 * w >= kc for w in t.level_width]).astype(bool)
  assert [x is not None for x in t.dense] == want_dense.tolist()
  assert budget == 0 or want_dense[:2].all()  # both lookups are exercised
  seqs = {i: tuple(c for c in row if c >= 0) + ((k,) if variable else ()) for i, row in enumerate(np.asarray(
      trie_lib._as_padded(codes)))}
  ref = dict_trie(seqs)
  dt = t.device()
  # Walk every node breadth first, comparing the device candidates with the dict's children.
  frontier = [(0, ref)]
  for d in range(t.depth):
    nodes = np.array([n for n, _ in frontier], np.int32)
    logp = jnp.asarray(rng.normal(size=(1, len(nodes), 200)), jnp.float32)
    lp, tok, child = trie_lib.candidates(dt, d, jnp.asarray(nodes)[None], logp)
    lp, tok, child = map(np.asarray, (lp[0], tok[0], child[0]))
    nxt = []
    for i, (node, sub) in enumerate(frontier):
      got = {int(tok[i, j]): int(child[i, j]) for j in np.nonzero(np.isfinite(lp[i]))[0]}
      want = {int(t.code_tokens[d, c]) for c in sub if c is not None}
      assert set(got) == want, (d, node)
      np.testing.assert_allclose(lp[i][np.isfinite(lp[i])], np.asarray(logp)[0, i, tok[i][np.isfinite(lp[i])]])
      for c, s in sub.items():
        if c is None:
          assert t.node_tool[node] == s
        else:
          nxt.append((got[int(t.code_tokens[d, c])], s))
    frontier = nxt


def test_shared_digit_tokens_numerical_ids():
  """Numerical ids spell every position with the same digit tokens: the position disambiguates."""
  digits = trie_lib.level_token_table(100, 3, 10, shared=True)
  assert (digits[0] == digits[2]).all()
  codes = [[1, 2, 3], [3, 2, 1], [1, 2, 4]]
  t = Trie.build(codes, code_tokens=digits)
  np.testing.assert_array_equal(t.tokens_of([1]), [[103, 102, 101]])
  np.testing.assert_array_equal(t.lookup(np.array([[103, 102, 101], [101, 102, 104], [101, 102, 105]])), [1, 2, -1])


def test_variable_length_end_marker_and_errors():
  t = Trie.build([[3, 1], [3], [3, 1, 2]], tool_ids=[5, 6, 7], end_token=99,
                 code_tokens=np.arange(12).reshape(3, 4) + 100)
  np.testing.assert_array_equal(t.tokens_of([6, 5]), [[103, 99, -1, -1], [103, 105, 99, -1]])
  np.testing.assert_array_equal(t.lookup(t.tokens_of([5, 6, 7])), [5, 6, 7])
  with pytest.raises(ValueError, match="prefix"):
    Trie.build([[3, 1], [3]])
  with pytest.raises(ValueError, match="same code sequence"):
    Trie.build([[3, 1], [3, 1]], tool_ids=[4, 9])
  with pytest.raises(ValueError, match="K=4"):
    Trie.build([[3, 4]], num_codes=4)
  with pytest.raises(ValueError, match="row 1"):
    Trie.build(np.array([[1, 2], [-1, 2]]))
  with pytest.raises(ValueError, match="duplicate"):
    Trie.build([[1], [2]], tool_ids=[3, 3])


def test_remove_and_add():
  rng = np.random.default_rng(2)
  codes = random_codes(rng, 40, 3, 4)
  t = Trie.build(codes)
  gone = [0, 5, 6, 7, 20]
  t2 = t.remove(gone)
  assert set(t2.live_tool_ids.tolist()) == set(range(len(codes))) - set(gone)
  assert np.all(t2.lookup(t.tokens_of(gone)) == -1)
  # Dead subtrees are no longer live: every live internal node has a live tool below.
  for node in np.nonzero(t2.live)[0]:
    assert node >= t2.indptr.shape[0] - 1 or t2.live[t2.indptr[node] + 1:t2.indptr[node + 1] + 1].any()
  with pytest.raises(ValueError, match="never come back"):
    t2.add([[3, 3, 3]], [5])
  with pytest.raises(ValueError, match="already"):
    t2.add([[3, 3, 3]], [1])
  free = next(c for c in np.ndindex(4, 4, 4) if not (codes == c).all(1).any())
  t3 = t2.add([list(free), list(codes[0])], [100, 101])  # a removed tool's code can go to a new tool
  np.testing.assert_array_equal(t3.lookup(t.code_tokens[np.arange(3), [free, codes[0]]]), [100, 101])
  assert 0 not in t3.live_tool_ids and 5 not in t3.live_tool_ids
  assert t3.remove([100]).removed >= {0, 5, 100}


def test_allowed_nodes_matches_reference():
  rng = np.random.default_rng(3)
  codes = random_codes(rng, 50, 3, 4, variable=True)
  t = Trie.build(codes, end_token=50)
  mask = rng.random((3, len(codes))) < 0.2
  got = np.asarray(trie_lib.allowed_nodes(t.device(), jnp.asarray(mask)))
  # Reference: a node is allowed iff an allowed tool's path goes through it.
  want = np.zeros_like(got)
  for q in range(3):
    for tool in np.nonzero(mask[q])[0]:
      node = t.terminal[tool]
      while True:
        want[q, node] = True
        if node == 0:
          break
        node = t.node_parent[node]
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(trie_lib.tool_mask_from_ids([[1, 3], [-1]], 4), [[0, 1, 0, 1], [0, 0, 0, 0]])


def test_memory_at_47k_tools():
  rng = np.random.default_rng(4)
  codes = np.unique(rng.integers(0, 512, (47_500, 4)), axis=0)
  t = Trie.build(codes, code_tokens=trie_lib.level_token_table(49152, 4, 512))
  nb = t.nbytes()
  assert nb["device_bytes"] == t.device().nbytes  # what the search holds on device
  assert nb["device_bytes"] < 64 * 2**20
  assert nb["bytes_per_tool"] < 100
  assert nb["dense_depths"] >= 1  # the root; depth 1 branches < K/2 at 47k tools, so it is CSR


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 5), st.booleans(), st.integers(1, 40))
def test_property_lookup_remove_add(seed, length, k, variable, n):
  rng = np.random.default_rng(seed)
  codes = random_codes(rng, n, length, k, variable)
  end = 7 if variable else None
  t = Trie.build(codes, end_token=end, dense_budget_bytes=int(rng.integers(0, 200)),
                 code_tokens=np.arange(length * k).reshape(length, k) + 10)
  ids = np.arange(len(codes))
  np.testing.assert_array_equal(t.lookup(t.tokens_of(ids)), ids)
  gone = rng.choice(ids, size=int(rng.integers(0, len(ids) + 1)), replace=False)
  t2 = t.remove(gone)
  expect = np.where(np.isin(ids, gone), -1, ids)
  np.testing.assert_array_equal(t2.lookup(t.tokens_of(ids)), expect)
  if len(gone):
    t3 = t2.add([codes[int(gone[0])]], [1000])  # the freed code, a new id
    got = t3.lookup(t.tokens_of(ids))
    assert not np.isin(got, gone).any()
    assert (got == 1000).sum() == 1
