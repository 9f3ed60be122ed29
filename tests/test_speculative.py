"""Prompt-lookup greedy decoding (toolgen_jax/decoding/speculative.py): the drafts a context gives, the loop on a
toy model whose drafts are always right (calls counted exactly), and on a tiny random Llama against plain greedy
(`beam_search`, the reference) with the returned cache continuing like a full prefill of prompt + text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.decoding import constrained
from toolgen_jax.decoding import prefix_cache as pc
from toolgen_jax.decoding import speculative
from toolgen_jax.models import llama

PAD = 0


def test_lookup_takes_the_latest_longest_match_and_zeros_without_one():
  ctx = jnp.asarray([[-1, 5, 6, 7, 8, 5, 6, 9, 4],
                     [-1, -1, 1, 2, 3, 4, 5, 6, 7]], jnp.int32)
  out = jnp.asarray([[5, 6, -1, -1], [9, -1, -1, -1]], jnp.int32)
  n = jnp.asarray([2, 1], jnp.int32)
  d = np.asarray(speculative.lookup(ctx, out, n, draft=3, ngram=2))
  # row 0 ends "... 5 6": "5 6" occurs at 1 (then 7 8 5) and 5 (then 9 4 5); the latest wins.
  # row 1 ends "7 9": neither "7 9" nor "9" occurs before; no drafts.
  assert d.tolist() == [[9, 4, 5], [0, 0, 0]]
  # ngram=1 falls back to a one-token match; a draft never reads past the row's end.
  d = np.asarray(speculative.lookup(ctx, jnp.asarray([[6, -1], [4, -1]], jnp.int32), jnp.asarray([1, 1]), draft=3,
                                    ngram=1))
  assert d.tolist() == [[9, 4, 6], [5, 6, 7]]


def _counter_model(vocab: int, eos: int | None):
  """Next token = (token + 1) % vocab; the cache counts each row's accepted tokens."""

  def verify(params, tokens, cache):
    return jax.nn.one_hot((tokens + 1) % vocab, vocab) * 10.0, cache

  def accept(old, new, count):
    return old + count

  return verify, accept


@pytest.mark.parametrize("draft", [0, 1, 3])
def test_always_right_drafts_give_draft_plus_one_tokens_per_call(draft):
  vocab, max_len = 50, 13
  verify, accept = _counter_model(vocab, None)
  ctx = jnp.asarray([list(range(40)), [-1] * 10 + list(range(30))], jnp.int32)  # counting: lookup drafts it
  first = jax.nn.one_hot(jnp.asarray([0, 0]), vocab)
  res = speculative.greedy(verify, accept, None, first, jnp.zeros((2,), jnp.int32), ctx, max_len=max_len,
                           draft=draft, ngram=2)
  want = [list(range(max_len))] * 2
  assert np.asarray(res.tokens).tolist() == want
  assert int(res.calls) == -(-(max_len - 1) // (draft + 1))  # the first token is free (the prompt's logits)
  assert np.asarray(res.fed).tolist() == [max_len - 1] * 2 and np.asarray(res.cache).tolist() == [max_len - 1] * 2


def test_eos_ends_a_row_inside_an_accepted_draft():
  vocab, eos = 50, 45
  verify, accept = _counter_model(vocab, eos)
  ctx = jnp.asarray([list(range(41, 49)), list(range(1, 9))], jnp.int32)
  first = jax.nn.one_hot(jnp.asarray([41, 1]), vocab)
  res = speculative.greedy(verify, accept, None, first, jnp.zeros((2,), jnp.int32), ctx, max_len=12, eos_id=eos,
                           draft=3, ngram=1)
  tokens = np.asarray(res.tokens)
  assert tokens[0].tolist() == [41, 42, 43, 44, 45] + [-1] * 7  # EOS included, nothing after it
  assert tokens[1].tolist() == list(range(1, 13))
  assert np.asarray(res.fed).tolist() == [4, 11]


@pytest.fixture(scope="module")
def model():
  config = llama.LlamaConfig.tiny(vocab_size=64)
  return llama.init_params(config, jax.random.PRNGKey(0)), config


@pytest.mark.parametrize("draft", [0, 2])
def test_llama_drafted_greedy_equals_greedy_and_its_cache_continues_like_a_prefill(model, draft):
  params, config = model
  rng = np.random.default_rng(0)
  loop = rng.integers(1, 60, 6).tolist()
  prompts = [loop * 4 + rng.integers(1, 60, 3).tolist(), rng.integers(1, 60, 9).tolist(), loop * 2]
  max_len = 12
  ref_cont = pc.extend(params, config, None, prompts, pad_id=PAD, multiple=16, extra=max_len)
  ref = np.asarray(constrained.generate_from(params, config, ref_cont.last_logits, ref_cont.prefix.cache,
                                             beam_size=1, max_len=max_len).tokens)[:, 0]
  cont = pc.extend(params, config, None, prompts, pad_id=PAD, multiple=16,
                   extra=speculative.capacity(max_len, draft))
  ctx, _ = constrained.left_pad(cont.prefix.tokens, -1, 32)
  res = constrained.generate_drafted(params, config, cont.last_logits, cont.prefix.cache, jnp.asarray(ctx),
                                     max_len=max_len, draft=draft, ngram=2)
  np.testing.assert_array_equal(np.asarray(res.tokens), ref)
  if draft == 0:
    assert int(res.calls) == max_len - 1
  # The cache holds prompt + fed tokens (holes masked): the next prompt continues from it like a full prefill.
  fed = np.asarray(res.fed)
  held = tuple(tuple(p) + tuple(int(t) for t in ref[r, :fed[r]]) for r, p in enumerate(cont.prefix.tokens))
  nxt = [list(held[r]) + [int(ref[r, fed[r]]), 7] for r in range(len(prompts))]
  got = pc.extend(params, config, pc.PrefixCache(res.cache, held), nxt, pad_id=PAD, multiple=16)
  assert got.keep == [len(h) for h in held[:len(prompts)]]
  full = pc.extend(params, config, None, nxt, pad_id=PAD, multiple=16)
  np.testing.assert_allclose(np.asarray(got.last_logits)[:3], np.asarray(full.last_logits)[:3], atol=1e-4)
