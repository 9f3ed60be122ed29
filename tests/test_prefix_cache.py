"""KV-cache reuse (toolgen_jax/decoding/prefix_cache.py) against re-prefilling the whole prompt, on a tiny random
Llama: next-token logits, a greedy continuation and the trie-constrained beam (tokens equal, scores within 1e-5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.decoding import constrained
from toolgen_jax.decoding import prefix_cache as pc
from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.models import llama

PAD = 0


@pytest.fixture(scope="module")
def model():
  config = llama.LlamaConfig.tiny(vocab_size=64)
  return llama.init_params(config, jax.random.PRNGKey(0)), config


def _prompts(seed, n, lo, hi):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, 58, int(rng.integers(lo, hi))).tolist() for _ in range(n)]


def _full(params, config, prompts, extra):
  tokens, mask = constrained.left_pad(prompts, PAD, 16)
  return constrained.prefill(params, config, jnp.asarray(tokens), jnp.asarray(mask), extra)


def test_common_prefix_and_match():
  assert pc.common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and pc.common_prefix([], [1]) == 0
  assert pc.common_prefix([1, 2], [1, 2]) == 2
  prefix = pc.PrefixCache(cache=None, tokens=((1, 2, 3), (1, 9, 9, 9), (7,)))
  rows, keep = pc.match(prefix, [[1, 9, 9, 9, 5], [1, 2, 3], [4], [1, 2, 3, 4]], limits=[99, 99, 99, 1])
  assert rows == [1, 0, 0, 0] and keep == [4, 2, 0, 1]  # at least one token fed; a limit caps the kept prefix


def test_bucket_sizes():
  assert [pc.bucket(n, 16) for n in (1, 16, 17, 32, 33, 48, 49, 64, 65, 96, 97, 128, 129, 200)] == \
      [16, 16, 32, 32, 48, 48, 64, 64, 96, 96, 128, 128, 192, 256]
  for n in range(1, 3000, 7):  # holds n, wastes at most a third beyond the first two sizes
    b = pc.bucket(n, 32)
    assert b >= n and b % 32 == 0 and (b <= 64 or b <= 1.5 * n)


@pytest.mark.slow  # two more programs compile; the equality above covers the continuation itself
def test_shared_prefix_is_one_row_and_continuing_from_it_equals_a_full_prefill(model):
  params, config = model
  head = _prompts(5, 1, 20, 21)[0]
  first = [head + p for p in _prompts(6, 3, 3, 20)]
  step1 = pc.extend(params, config, None, first, pad_id=PAD, multiple=16, extra=4)
  shared = pc.shared(step1.prefix, multiple=16)
  assert shared.tokens == (tuple(head),) and shared.cache.k.shape[1] == 1 and shared.cache.k.shape[2] == 32
  assert pc.shared(step1.prefix, multiple=16, min_tokens=21) is None
  nxt = [head + p for p in _prompts(7, 2, 5, 25)]
  cont = pc.extend(params, config, shared, nxt, pad_id=PAD, multiple=16)
  assert cont.keep == [20, 20]
  ref, _ = _full(params, config, nxt, 0)
  np.testing.assert_allclose(np.asarray(cont.last_logits)[:2], np.asarray(ref)[:2], atol=1e-5, rtol=1e-5)


def test_extended_prompts_equal_a_full_prefill(model):
  params, config = model
  first = _prompts(0, 3, 5, 40)
  grown = [p + q for p, q in zip(first, _prompts(1, 3, 1, 30))]
  grown.append(first[0][:3] + [61, 62])  # diverges early from a cached row: most of that row is discarded
  grown.append(_prompts(2, 1, 10, 20)[0])  # shares nothing
  step1 = pc.extend(params, config, None, first, pad_id=PAD, multiple=16, extra=4)
  ref1, _ = _full(params, config, first, 4)
  np.testing.assert_allclose(np.asarray(step1.last_logits)[:3], np.asarray(ref1)[:3], atol=1e-5, rtol=1e-5)
  step2 = pc.extend(params, config, step1.prefix, grown, pad_id=PAD, multiple=16, chunk_multiple=8,
                    logprobs=True)
  assert step2.keep[:3] == [len(p) for p in first] and step2.keep[3] == 3 and step2.keep[4] == 0
  ref2, _ = _full(params, config, grown, 4)
  np.testing.assert_allclose(np.asarray(step2.last_logits)[:5], np.asarray(ref2)[:5], atol=1e-5, rtol=1e-5)
  # per-token log-probabilities of the fed part equal a forward pass over the whole prompt
  lp = np.asarray(step2.logprobs)
  for j, p in enumerate(grown):
    logits, _ = llama.forward(params, config, jnp.asarray([p]))
    ref = np.asarray(jax.nn.log_softmax(logits[0], -1))[np.arange(len(p) - 1), p[1:]]
    t = step2.width
    got = lp[j, t - len(p) + step2.keep[j]:t - 1]
    np.testing.assert_allclose(got, ref[step2.keep[j]:], atol=1e-5, rtol=1e-5)


def test_a_chunk_run_in_pieces_equals_one_pass(model):
  params, config = model
  prompts = _prompts(8, 3, 20, 45)
  whole = pc.extend(params, config, None, prompts, pad_id=PAD, multiple=16, extra=4, logprobs=True)
  parts = pc.extend(params, config, None, prompts, pad_id=PAD, multiple=16, extra=4, logprobs=True, max_piece=16)
  assert whole.width == parts.width == 48  # three pieces of 16, the first all padding for the shorter prompts
  np.testing.assert_allclose(np.asarray(parts.last_logits), np.asarray(whole.last_logits), atol=1e-5, rtol=1e-5)
  for j, prompt in enumerate(prompts):  # log p of each real token after the first (padding positions mean nothing)
    real = slice(whole.width - len(prompt), whole.width - 1)
    np.testing.assert_allclose(np.asarray(parts.logprobs)[j, real], np.asarray(whole.logprobs)[j, real], atol=1e-5)
  for a, b in ((parts.prefix.cache.mask, whole.prefix.cache.mask), (parts.prefix.cache.next_pos,
                                                                    whole.prefix.cache.next_pos)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  real = np.asarray(whole.prefix.cache.mask)[None, :, :, None, None]
  np.testing.assert_allclose(np.asarray(parts.prefix.cache.k) * real, np.asarray(whole.prefix.cache.k) * real,
                             atol=1e-5)


@pytest.mark.slow  # compile-bound (four programs); the fast tier keeps the logits / log-probability equality above
def test_greedy_and_trie_beam_from_a_continued_cache_equal_re_prefill(model):
  params, config = model
  first = _prompts(3, 4, 8, 30)
  grown = [p + q for p, q in zip(first, _prompts(4, 4, 2, 12))]
  step1 = pc.extend(params, config, None, first, pad_id=PAD, multiple=16)
  cont = pc.extend(params, config, step1.prefix, grown, pad_id=PAD, multiple=16, extra=12)
  got = constrained.generate_from(params, config, cont.last_logits, cont.prefix.cache, beam_size=1, max_len=12)
  tokens, mask = constrained.left_pad(grown, PAD, 16)
  ref = constrained.generate(params, config, jnp.asarray(tokens), jnp.asarray(mask), beam_size=1, max_len=12)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
  # trie over code tokens 58..63 (2 levels x 3), 7 tools, a per-query tool mask
  codes = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 2]])
  trie = trie_lib.Trie.build(codes, np.arange(7), code_tokens=trie_lib.level_token_table(58, 2, 3)).device()
  cont = pc.extend(params, config, step1.prefix, grown, pad_id=PAD, multiple=16, extra=trie.depth)
  mask_t = jnp.asarray(trie_lib.tool_mask_from_ids([[0, 1, 2, 3], [4, 5, 6], [0, 6], list(range(7))], 7))
  got = constrained.retrieve_from(params, config, cont.last_logits, cont.prefix.cache, trie, beam_size=4,
                                  tool_mask=mask_t)
  ref = constrained.retrieve(params, config, jnp.asarray(tokens), jnp.asarray(mask), trie, beam_size=4,
                             tool_mask=mask_t)
  np.testing.assert_array_equal(np.asarray(got.tool_ids), np.asarray(ref.tool_ids))
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
  np.testing.assert_allclose(np.asarray(got.scores), np.asarray(ref.scores), atol=1e-5, rtol=0)
  assert np.isfinite(np.asarray(got.scores)[:, :2]).all()
