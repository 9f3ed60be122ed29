"""The code objective: trie children against brute force, and the restricted softmax of training equal to the
scores of trie-constrained beam search (training and decoding normalise the same way)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.decoding import beam_search as bs
from toolgen_jax.decoding import constrained
from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.models import llama
from toolgen_jax.training import code_loss

K, L, START = 4, 2, 240
TABLE = trie_lib.level_token_table(START, L, K)          # [2, 4] ids 240..247
CODES = np.array([[0, 1], [0, 3], [1, 0], [2, 2], [2, 3], [3, 1]], np.int32)


def test_trie_children_mask_matches_brute_force():
  rng = np.random.default_rng(0)
  all_codes = rng.integers(0, 5, (40, 3)).astype(np.int32)
  codes = all_codes[rng.integers(0, 40, 12)].copy()
  codes[0, 2] = -1
  mask = code_loss.trie_children_mask(all_codes, codes, 5)
  for i, c in enumerate(codes):
    for l in range(3):
      if c[l] < 0:
        assert mask[i, l].all()
        continue
      ref = {int(r[l]) for r in all_codes if tuple(r[:l]) == tuple(c[:l])}
      assert set(np.flatnonzero(mask[i, l]).tolist()) == ref
  with pytest.raises(ValueError, match="not a prefix"):
    code_loss.trie_children_mask(all_codes[:1], np.array([[9, 9, 9]]), 10)


def test_full_mode_is_the_vocabulary_cross_entropy():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(3, L, 256)), jnp.float32)
  codes = jnp.asarray([[0, 1], [2, -1], [3, 3]])
  total, aux = code_loss.code_loss_sums(logits, codes, mode="full", token_table=TABLE)
  tok = TABLE[np.arange(L), np.maximum(np.asarray(codes), 0)]
  ref = np.asarray(llama.softmax_cross_entropy(logits, jnp.asarray(tok)))
  ref = ref * (np.asarray(codes) >= 0)
  np.testing.assert_allclose(float(total), ref.sum(), rtol=1e-6)
  assert float(aux["codes"]) == 5


def _tiny_model():
  mc = llama.LlamaConfig.tiny(vocab_size=256, tie_embeddings=True)
  return mc, llama.init_params(mc, jax.random.PRNGKey(3), init_std=0.5)


# "level" took 5x the time of "trie" in the same run (its compile): slow tier; the fast tier keeps "trie".
@pytest.mark.parametrize("mode", [pytest.param("level", marks=pytest.mark.slow), "trie"])
def test_training_scores_equal_beam_search_scores(mode):
  mc, params = _tiny_model()
  prompt = [5, 17, 33, 2, 90]
  # Training side: teacher-forced per-level log-probabilities of every tool's code over the restricted softmax.
  seqs = np.array([prompt + [int(TABLE[0, c[0]])] for c in CODES], np.int32)   # prompt + first code (input)
  x, _ = llama.hidden_states(params, mc, jnp.asarray(seqs))
  h = x[:, len(prompt) - 1:len(prompt) + 1]                                      # positions predicting code 0, 1
  rows = code_loss.level_rows(params["embed"]["embedding"], TABLE)
  logits = code_loss.level_logits(h, rows)
  allowed = code_loss.trie_children_mask(CODES, CODES, K) if mode == "trie" else None
  _, aux = code_loss.code_loss_sums(logits, CODES, mode=mode, allowed=allowed)
  train_logp = -np.asarray(aux["nll"]).sum(1)                                    # [N] log p(tool | prompt)
  # Decoding side: the beam search over the same trie, as many beams as tools, normalised the same way.
  trie = trie_lib.Trie.build(CODES, code_tokens=TABLE).device()
  tokens, mask = constrained.left_pad([prompt], 0, multiple=8)
  first, cache = constrained.prefill(params, mc, jnp.asarray(tokens), jnp.asarray(mask), trie.depth)
  res = bs.trie_beam_search(constrained.LlamaStep(mc), llama.reorder_cache, params, first, cache, trie,
                            beam_size=len(CODES), normalize=mode)
  ids, scores = np.asarray(res.tool_ids[0]), np.asarray(res.scores[0])
  assert sorted(ids.tolist()) == list(range(len(CODES)))
  np.testing.assert_allclose(scores, train_logp[ids], atol=1e-5)
  # The restricted scores are proper distributions: they sum to one over the tools ('trie') or less ('level').
  total = np.exp(train_logp).sum()
  assert (total == pytest.approx(1.0, abs=1e-5)) if mode == "trie" else total < 1.0
  # And they differ from the full-vocabulary scores (the option that was the only one before).
  full = bs.trie_beam_search(constrained.LlamaStep(mc), llama.reorder_cache, params, first, cache, trie,
                             beam_size=len(CODES))
  assert np.max(np.abs(np.sort(np.asarray(full.scores[0])) - np.sort(scores))) > 1e-2


def test_in_domain_subset_keeps_the_normalisation():
  mc, params = _tiny_model()
  trie = trie_lib.Trie.build(CODES, code_tokens=TABLE).device()
  tokens, mask = constrained.left_pad([[5, 17, 33]], 0, multiple=8)
  first, cache = constrained.prefill(params, mc, jnp.asarray(tokens), jnp.asarray(mask), trie.depth)
  step = constrained.LlamaStep(mc)
  everything = bs.trie_beam_search(step, llama.reorder_cache, params, first, cache, trie, beam_size=6,
                                   normalize="trie")
  subset = trie_lib.allowed_nodes(trie, jnp.asarray(trie_lib.tool_mask_from_ids([[0, 4]], len(CODES))))
  some = bs.trie_beam_search(step, llama.reorder_cache, params, first, cache, trie, beam_size=6,
                             normalize="trie", allowed=subset)
  full = dict(zip(np.asarray(everything.tool_ids[0]).tolist(), np.asarray(everything.scores[0]).tolist()))
  got = [(t, s) for t, s in zip(np.asarray(some.tool_ids[0]).tolist(), np.asarray(some.scores[0]).tolist()) if t >= 0]
  assert sorted(t for t, _ in got) == [0, 4]
  for t, s in got:
    assert s == pytest.approx(full[t], abs=1e-6)


def test_per_level_accuracy():
  logits = np.zeros((3, 2, 4))
  logits[0, 0, 1] = logits[1, 0, 2] = logits[2, 0, 0] = 1
  logits[:, 1, 3] = 1
  codes = np.array([[1, 3], [2, 0], [1, -1]])
  acc = code_loss.per_level_accuracy(logits, codes)
  np.testing.assert_allclose(acc, [2 / 3, 1 / 2])
