"""Beam search against exhaustive scoring of every valid sequence (same model), a NumPy beam search, and a tiny
random Llama with left-padded prompts; property tests on random tries and random logits."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from hypothesis import example, given, settings, strategies as st

from toolgen_jax.decoding import beam_search as bs
from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.decoding.trie import Trie


# --- a toy model: logits = table[hash of the history]; reordering the cache matters --------------------------------

@struct.dataclass
class ToyCache:
  h: jax.Array  # [N] int32


def toy_step(params, tokens, cache):
  h = (cache.h * 31 + tokens[:, 0] + 1) % params["table"].shape[0]
  return params["table"][h], ToyCache(h=h)


def toy_reorder(cache, index):
  return ToyCache(h=cache.h[index])


def make_toy(seed, vocab, states=101, scale=2.0):
  rng = np.random.default_rng(seed)
  return {"table": jnp.asarray(rng.normal(size=(states, vocab)) * scale, jnp.float32)}


def lsm(x):
  x = np.asarray(x, np.float64)
  m = x.max()
  return x - m - np.log(np.exp(x - m).sum())


def toy_score(params, h0, tokens, alpha=0.0):
  """Sum of log p of a token sequence (-1 padded) after history hash h0, normalised by len^alpha."""
  tab = np.asarray(params["table"], np.float64)
  s, h, n = 0.0, int(h0), 0
  lp = lsm(tab[h])
  for t in tokens:
    if t < 0:
      break
    s += lp[t]
    n += 1
    h = (h * 31 + int(t) + 1) % tab.shape[0]
    lp = lsm(tab[h])
  return s / (n ** alpha if alpha else 1.0)


def exhaustive(params, h0, trie, tool_ids, alpha=0.0):
  toks = trie.tokens_of(tool_ids)
  scores = np.array([toy_score(params, h0, t, alpha) for t in toks])
  order = np.argsort(-scores, kind="stable")
  return np.asarray(tool_ids)[order], scores[order]


def run_toy(params, trie, h0, beam, alpha=0.0, allowed=None):
  h0 = jnp.asarray(h0, jnp.int32)
  first = params["table"][h0]
  return bs.trie_beam_search(toy_step, toy_reorder, params, first, ToyCache(h=h0), trie.device(),
                             beam_size=beam, alpha=alpha, allowed=allowed)


def numpy_beam(params, h0, trie, beam):
  """Plain host beam search over a fixed-length trie (the textbook algorithm, dicts and loops)."""
  seqs = {tuple(t): i for i, t in zip(trie.tool_ids, trie.tokens_of(trie.tool_ids)) if i in trie.live_tool_ids}
  prefixes = {s[:d] for s in seqs for d in range(len(s) + 1)}
  beams = [((), 0.0)]
  for _ in range(trie.depth):
    cands = []
    for prefix, score in beams:
      for v in range(params["table"].shape[1]):
        if prefix + (v,) in prefixes:
          cands.append((prefix + (v,), score + toy_score(params, h0, list(prefix) + [v]) - toy_score(
              params, h0, list(prefix))))
    beams = sorted(cands, key=lambda c: -c[1])[:beam]
  return [seqs[p] for p, _ in beams], np.array([s for _, s in beams])


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_wide_beam_equals_exhaustive_fixed_length(budget):
  rng = np.random.default_rng(0)
  k, length = 5, 3
  codes = np.unique(rng.integers(0, k, (40, length)), axis=0)
  trie = Trie.build(codes, code_tokens=np.arange(length * k).reshape(length, k) + 3, dense_budget_bytes=budget)
  params = make_toy(1, 20)
  h0 = [0, 7, 33]
  beam = len(codes)  # >= the number of nodes at any depth: beam search is exhaustive
  res = run_toy(params, trie, h0, beam)
  for q in range(3):
    ids, scores = exhaustive(params, h0[q], trie, np.arange(len(codes)))
    np.testing.assert_array_equal(np.asarray(res.tool_ids[q]), ids)
    np.testing.assert_allclose(np.asarray(res.scores[q]), scores, atol=1e-5)
    np.testing.assert_array_equal(trie.lookup(np.asarray(res.tokens[q])), ids)


def test_atomic_codes_are_top_k_of_tool_tokens():
  """ToolGen's atomic baseline: one new token per tool (1 level, K = N); the beam is the top-B tool tokens."""
  n, first = 30, 4
  trie = Trie.build(np.arange(n)[:, None], code_tokens=trie_lib.level_token_table(first, 1, n))
  params = make_toy(4, first + n)
  res = run_toy(params, trie, [0, 1], beam=7)
  for q in range(2):
    lp = lsm(np.asarray(params["table"][q]))[first:]
    np.testing.assert_array_equal(np.asarray(res.tool_ids[q]), np.argsort(-lp)[:7])
    np.testing.assert_allclose(np.asarray(res.scores[q]), np.sort(lp)[::-1][:7], atol=1e-5)


def test_narrow_beam_equals_numpy_beam_search():
  rng = np.random.default_rng(5)
  k, length = 6, 3
  codes = np.unique(rng.integers(0, k, (80, length)), axis=0)
  trie = Trie.build(codes, code_tokens=np.arange(length * k).reshape(length, k))
  params = make_toy(6, 18, scale=1.0)
  res = run_toy(params, trie, [3, 4], beam=3)
  for q, h0 in enumerate([3, 4]):
    ids, scores = numpy_beam(params, h0, trie, 3)
    np.testing.assert_array_equal(np.asarray(res.tool_ids[q]), ids)
    np.testing.assert_allclose(np.asarray(res.scores[q]), scores, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_variable_length_with_end_equals_exhaustive(alpha):
  rng = np.random.default_rng(2)
  k, length = 4, 4
  seqs = sorted({tuple(rng.integers(0, k, rng.integers(1, length + 1)).tolist()) for _ in range(30)})
  trie = Trie.build([list(s) for s in seqs], end_token=19, code_tokens=np.arange(length * k).reshape(length, k))
  params = make_toy(3, 20)
  beam = len(seqs)
  res = run_toy(params, trie, [1, 2], beam, alpha=alpha)
  for q, h0 in enumerate([1, 2]):
    ids, scores = exhaustive(params, h0, trie, np.arange(len(seqs)), alpha)
    np.testing.assert_array_equal(np.asarray(res.tool_ids[q]), ids)
    np.testing.assert_allclose(np.asarray(res.scores[q]), scores, atol=1e-5)


def test_subset_and_removed_tools():
  rng = np.random.default_rng(7)
  k, length = 5, 2
  codes = np.unique(rng.integers(0, k, (20, length)), axis=0)
  trie = Trie.build(codes, code_tokens=np.arange(length * k).reshape(length, k)).remove([0, 1, 2])
  params = make_toy(8, 12)
  mask = np.zeros((2, len(codes)), bool)
  mask[0, [1, 4, 5, 9]] = True          # tool 1 is removed: must not come back through the subset
  mask[1, 3:] = True
  allowed = trie_lib.allowed_nodes(trie.device(), jnp.asarray(mask))
  res = run_toy(params, trie, [5, 6], beam=8, allowed=allowed)
  for q, h0 in enumerate([5, 6]):
    pool = [i for i in np.nonzero(mask[q])[0] if i not in (0, 1, 2)]
    ids, scores = exhaustive(params, h0, trie, pool)
    n = min(len(pool), 8)
    np.testing.assert_array_equal(np.asarray(res.tool_ids[q, :n]), ids[:n])
    np.testing.assert_allclose(np.asarray(res.scores[q, :n]), scores[:n], atol=1e-5)
    assert np.all(np.asarray(res.tool_ids[q, n:]) == -1) and np.all(np.isneginf(np.asarray(res.scores[q, n:])))


@pytest.mark.slow  # 5 s of compile; the constrained beam tests stay fast
def test_free_text_beam_equals_exhaustive_and_greedy():
  vocab, max_len, eos = 5, 3, 4
  params = make_toy(9, vocab)
  h0 = jnp.asarray([2, 9], jnp.int32)
  first = params["table"][h0]
  # All hypotheses: sequences ending in EOS at any length <= max_len, or max_len tokens without EOS.
  hyps = [s for n in range(1, max_len + 1) for s in itertools.product(range(vocab), repeat=n)
          if (eos not in s[:-1]) and (s[-1] == eos or n == max_len)]
  for alpha in (0.0, 0.7):
    for unroll in (False, True):
      res = bs.beam_search(toy_step, toy_reorder, params, first, ToyCache(h=h0), beam_size=vocab ** 2,
                           max_len=max_len, eos_id=eos, alpha=alpha, unroll=unroll)
      for q in range(2):
        scores = np.array([toy_score(params, int(h0[q]), s, alpha) for s in hyps])
        order = np.argsort(-scores, kind="stable")[:vocab ** 2]
        np.testing.assert_allclose(np.asarray(res.scores[q]), scores[order], atol=1e-5)
        want = np.full((len(order), max_len), -1)
        for i, j in enumerate(order):
          want[i, :len(hyps[j])] = hyps[j]
        np.testing.assert_array_equal(np.asarray(res.tokens[q]), want)
  # Greedy = argmax at every step, stopping after EOS only when EOS is the argmax.
  tab = np.asarray(params["table"])
  for eos_g in (None, 0, 1, 2, 3):
    res = bs.greedy(toy_step, toy_reorder, params, first, ToyCache(h=h0), max_len=6, eos_id=eos_g)
    for q in range(2):
      h, out = int(h0[q]), []
      while len(out) < 6 and (not out or out[-1] != eos_g):
        tok = int(np.argmax(tab[h]))
        out.append(tok)
        h = (h * 31 + tok + 1) % tab.shape[0]
      np.testing.assert_array_equal(np.asarray(res.tokens[q, 0]), out + [-1] * (6 - len(out)))


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
def test_tiny_llama_left_padded_prompts_equal_exhaustive():
  from toolgen_jax.decoding import constrained
  from toolgen_jax.models import llama
  cfg = llama.LlamaConfig.tiny(vocab_size=64)
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  k, length = 4, 3
  codes = np.unique(rng.integers(0, k, (24, length)), axis=0)
  trie = Trie.build(codes, code_tokens=trie_lib.level_token_table(40, length, k))
  prompts = [[1, 5, 7, 9], [3, 4], [8, 9, 10, 11, 12, 13, 14, 15, 16]]
  tok, mask = constrained.left_pad(prompts, pad_id=0, multiple=8)
  res = constrained.retrieve(params, cfg, jnp.asarray(tok), jnp.asarray(mask), trie.device(), beam_size=len(codes))
  toks = trie.tokens_of(np.arange(len(codes)))
  for q, p in enumerate(prompts):  # reference: full forward (no cache, no padding) of prompt + code tokens
    seqs = np.array([p + list(t) for t in toks])
    logp = np.asarray(jax.nn.log_softmax(llama.forward(params, cfg, jnp.asarray(seqs))[0], -1), np.float64)
    n = len(p)
    scores = sum(logp[np.arange(len(seqs)), n - 1 + i, seqs[:, n + i]] for i in range(length))
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_array_equal(np.asarray(res.tool_ids[q]), order)
    np.testing.assert_allclose(np.asarray(res.scores[q]), scores[order], atol=1e-5)


def test_ranked_tools_dedups():
  r = bs.BeamResult(tool_ids=jnp.asarray([[3, 3, 1, -1], [2, 0, 2, 5]]), scores=jnp.zeros((2, 4)),
                    tokens=jnp.zeros((2, 4, 1), jnp.int32))
  assert bs.ranked_tools(r) == [[3, 1], [2, 0, 5]]
  assert bs.ranked_tools(r, k=2) == [[3, 1], [2, 0]]


@settings(max_examples=12, deadline=None)
@pytest.mark.slow
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(2, 5), st.booleans(), st.integers(2, 30),
       st.integers(1, 6))
# Found by hypothesis: a branch whose allowed tools were all removed and whose live tools were all outside the mask
# used to count as allowed, so beam 1 walked into it and ended empty (fixed in `trie.allowed_nodes`).
@example(seed=1, length=2, k=5, variable=False, n=13, beam=1)
def test_property_only_valid_live_subset_tools(seed, length, k, variable, n, beam):
  rng = np.random.default_rng(seed)
  if variable:
    codes = [list(s) for s in sorted({tuple(rng.integers(0, k, rng.integers(1, length + 1)).tolist())
                                      for _ in range(n)})]
  else:
    codes = np.unique(rng.integers(0, k, (n, length)), axis=0)
  trie = Trie.build(codes, end_token=(length * k) if variable else None,
                    code_tokens=np.arange(length * k).reshape(length, k),
                    dense_budget_bytes=int(rng.integers(0, 300)))
  num = len(codes)
  gone = rng.choice(num, size=int(rng.integers(0, num)), replace=False)
  trie = trie.remove(gone)
  mask = rng.random((2, num)) < 0.6
  params = make_toy(seed % 1000, length * k + 1, scale=3.0)
  res = run_toy(params, trie, [seed % 50, 3], beam, allowed=trie_lib.allowed_nodes(trie.device(), jnp.asarray(mask)))
  ids, toks, scores = map(np.asarray, (res.tool_ids, res.tokens, res.scores))
  for q in range(2):
    valid = ids[q] >= 0
    np.testing.assert_array_equal(trie.lookup(toks[q][valid]), ids[q][valid])  # spells exactly that tool
    assert not np.isin(ids[q], gone).any()
    assert mask[q, ids[q][valid]].all()
    assert len(set(ids[q][valid].tolist())) == valid.sum()
    reachable = len(set(np.nonzero(mask[q])[0]) - set(gone.tolist()))
    assert valid.sum() == min(beam, reachable)  # B live beams always end in >= B distinct tools
    assert np.all(np.diff(scores[q][valid]) <= 1e-6)


@pytest.mark.slow
def test_tiny_llama_greedy_generate_equals_full_forward_argmax():
  from toolgen_jax.decoding import constrained
  from toolgen_jax.models import llama
  cfg = llama.LlamaConfig.tiny(vocab_size=48)
  params = llama.init_params(cfg, jax.random.PRNGKey(1))
  prompts = [[4, 5, 6], [7, 8, 9, 10, 11, 12, 13]]
  tok, mask = constrained.left_pad(prompts, pad_id=0, multiple=8)
  res = constrained.generate(params, cfg, jnp.asarray(tok), jnp.asarray(mask), beam_size=1, max_len=4)
  for q, p in enumerate(prompts):
    seq = list(p)
    for _ in range(4):  # reference: full forward without cache or padding, argmax of the last position
      seq.append(int(jnp.argmax(llama.forward(params, cfg, jnp.asarray([seq]))[0][0, -1])))
    np.testing.assert_array_equal(np.asarray(res.tokens[q, 0]), seq[len(p):])


# --- shared codes (Toolscaler's 'report' / ToolWeaver's 'sinkhorn' collision policies) ---------------------------

def _shared_trie(seed=11, k=4, length=2, leaves=9, tools=20):
  """`tools` tools over `leaves` distinct code tuples: several tools share a leaf (tool ids shuffled so a leaf's
  members are not consecutive)."""
  rng = np.random.default_rng(seed)
  uniq = np.unique(rng.integers(0, k, (4 * leaves, length)), axis=0)[:leaves]
  assign = np.concatenate([np.arange(leaves), rng.integers(0, leaves, tools - leaves)])
  codes = uniq[rng.permutation(assign)]
  return Trie.build(codes, code_tokens=np.arange(length * k).reshape(length, k) + 2, shared_codes=True), codes


def brute_force(params, h0, trie, pool, alpha=0.0):
  """Every tool of `pool` scored by its own code tokens, ranked by (-score, tool id): the reference ranking of a
  shared-code retriever (members of one leaf tie at its score and come in id order)."""
  pool = np.asarray(sorted(pool))
  s = np.array([toy_score(params, h0, t, alpha) for t in trie.tokens_of(pool)])
  order = np.lexsort((pool, -np.round(s, 5)))
  return pool[order].tolist(), s[order]


def test_shared_leaf_decodes_to_all_members_and_brute_force_agrees():
  trie, codes = _shared_trie()
  assert len(np.unique(codes, axis=0)) < len(codes)  # the fixture really shares codes
  with pytest.raises(ValueError, match="same code sequence"):
    Trie.build(codes, code_tokens=np.arange(8).reshape(2, 4) + 2)  # a 'unique' trie refuses shared codes
  params = make_toy(12, 12)
  h0 = [0, 5, 9]
  leaves = len(np.unique(codes, axis=0))
  res = run_toy(params, trie, h0, beam=leaves)  # as wide as the leaves: exhaustive over hypotheses
  for q in range(3):
    tools, scores = trie.expand(np.asarray(res.tool_ids[q]), np.asarray(res.scores[q]))
    ref, ref_s = brute_force(params, h0[q], trie, range(len(codes)))
    assert tools == ref
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    # each hypothesis' label is its leaf's smallest member; its members are exactly the tools with that code
    for tid in np.asarray(res.tool_ids[q]):
      members = trie.members_of(int(tid))
      assert members[0] == tid
      assert members.tolist() == np.nonzero((codes == codes[tid]).all(1))[0].tolist()


def test_shared_leaves_narrow_beam_matches_numpy_beam_then_members():
  trie, codes = _shared_trie(seed=13, k=5, length=3, leaves=25, tools=60)
  params = make_toy(14, 17, scale=1.0)
  res = run_toy(params, trie, [3, 8], beam=4)
  for q, h0 in enumerate([3, 8]):
    # the textbook beam search over the distinct code tuples (one representative each), then members by id
    reps = sorted({tuple(c): i for i, c in reversed(list(enumerate(codes.tolist())))}.values())
    uniq = Trie.build(codes[reps], np.asarray(reps), code_tokens=trie.code_tokens[:, :trie.num_codes])
    ids, scores = numpy_beam(params, h0, uniq, 4)
    want = [m for i in ids for m in np.nonzero((codes == codes[i]).all(1))[0].tolist()]
    tools, got_s = trie.expand(np.asarray(res.tool_ids[q]), np.asarray(res.scores[q]))
    assert tools == want
    np.testing.assert_allclose(got_s, np.repeat(scores, [int((codes == codes[i]).all(1).sum()) for i in ids]),
                               atol=1e-5)


def test_shared_leaf_with_candidates_and_removed_members():
  trie, codes = _shared_trie(seed=15)
  groups = [g for g in (np.nonzero((codes == c).all(1))[0] for c in np.unique(codes, axis=0)) if len(g) >= 2]
  g = groups[0]
  trie = trie.remove([int(g[0])])  # the leaf's smallest member retires: the leaf stays live through the others
  assert trie.members_of(int(g[1])).tolist() == g[1:].tolist()
  assert int(trie.node_tool[trie.terminal[trie._rows_of(np.asarray([g[1]]))[0]]]) == g[1]
  params = make_toy(16, 12)
  pool = [int(g[-1])] + [int(t) for t in range(len(codes)) if t % 3 == 0 and t != g[0]]
  mask = trie_lib.tool_mask_from_ids([pool], len(codes))
  allowed = trie_lib.allowed_nodes(trie.device(), jnp.asarray(mask))
  res = run_toy(params, trie, [4], beam=len(codes), allowed=allowed)
  tools, scores = trie.expand(np.asarray(res.tool_ids[0]), np.asarray(res.scores[0]), allowed=set(pool))
  ref, ref_s = brute_force(params, 4, trie, pool)
  assert tools == ref and int(g[0]) not in tools
  np.testing.assert_allclose(scores, ref_s, atol=1e-5)
