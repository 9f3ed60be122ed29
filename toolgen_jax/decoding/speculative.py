"""Greedy decoding with prompt-lookup drafts: several tokens per model call, the same text as plain greedy.

Decoding one token per model call reads every weight once per token; at small batch that read, more than the
arithmetic, is the cost, so a call of k + 1 tokens costs less than k + 1 calls (on the 2-core CPU of BENCHMARKS.md,
2 tokens a row cost little more than 1, while 5 cost ~1.7x: hence `agent.draft_tokens` = 1 there).
Prompt-lookup decoding (Saxena 2023; `prompt_lookup_num_tokens` in transformers' `generate`, the "ngram"
speculative method of vLLM) drafts those k tokens for free: it finds the latest earlier occurrence of the last
`ngram` tokens in the prompt and the text so far and proposes the k tokens that followed it. One model call scores
[last token, k drafts]; draft i is kept while it equals the model's own argmax after the tokens before it, and the
argmax after the last kept one is a further token of its own, so every call yields 1 to k + 1 tokens, each exactly
the token greedy decoding picks (up to float rounding: the verification runs the tokens as one chunk). Agent
thoughts and JSON arguments repeat names, ids and phrases of the prompt (and small models repeat themselves), which
is where the drafts are accepted.

Rows accept different numbers of drafts while the cache's write slot is shared (`KVCache.index`), so every call
writes k + 1 slots per row and `accept_fn` masks out each row's rejected ones: a cache needs room for
(max_len - 1) * (k + 1) + 1 generated slots (`capacity`). The loop returns the cache, so that the next prompt,
which extends this one by the generated text (the agent's action prompt is the thought prompt plus the thought),
continues from it instead of running the text again (`prefix_cache`). draft = 0 is plain greedy decoding, one
token per call, with that cache. The model enters through two functions, so the loop is independent of it:
  verify_fn(params, tokens [N, T], cache) -> (logits [N, T, V], cache with the T tokens written);
  accept_fn(old_cache, new_cache, count [N]) -> the new cache holding only the first `count` of each row's T tokens.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

VerifyFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]
AcceptFn = Callable[[Any, Any, jax.Array], Any]


@struct.dataclass
class Result:
  """tokens [N, max_len] int32 (-1 after each row's end; EOS included); `cache` after the prompts and each row's
  first fed[i] tokens (all its tokens but the last, which was never run); `calls`, the model calls made."""

  tokens: jax.Array
  cache: Any
  fed: jax.Array
  calls: jax.Array


def capacity(max_len: int, draft: int) -> int:
  """Generated slots a cache needs for `greedy`: every call writes draft + 1 slots, and yields at least one token."""
  return max(max_len - 1, 0) * (draft + 1) + 1


def lookup(context: jax.Array, out: jax.Array, n: jax.Array, *, draft: int, ngram: int) -> jax.Array:
  """Drafts [N, draft] int32: per row, the `draft` tokens that followed the latest earlier occurrence of the row's
  last g tokens in context ++ out[:n] (g = ngram, else the largest smaller g that occurs; 0s where nothing does).

  context [N, P] int32 left padded with -1 (the prompt); out [N, M] int32 generated tokens, n [N] how many.
  """
  full = jnp.concatenate([context, out], axis=1)  # a row's real tokens are contiguous: prompt then text so far
  width = full.shape[1]
  end = context.shape[1] + n  # one past each row's last token
  best = jnp.full(n.shape, -1, jnp.int32)
  for g in range(1, ngram + 1):  # larger g last: it overrides a shorter match where it has one
    last = jnp.take_along_axis(full, jnp.clip(end[:, None] - g + jnp.arange(g)[None, :], 0, width - 1), axis=1)
    starts = width - g + 1
    hit = jnp.ones((full.shape[0], starts), bool)
    for i in range(g):
      hit &= full[:, i:i + starts] == last[:, i:i + 1]
    pos = jnp.arange(starts)[None, :]
    hit &= (pos + g < end[:, None]) & (last >= 0).all(axis=1, keepdims=True)  # an earlier match, a token after it
    at = jnp.max(jnp.where(hit, pos + g, -1), axis=1)  # the latest: the first token after the match
    best = jnp.where(at >= 0, at, best)
  idx = best[:, None] + jnp.arange(draft)[None, :]
  tok = jnp.take_along_axis(full, jnp.clip(idx, 0, width - 1), axis=1)
  ok = (best[:, None] >= 0) & (idx < end[:, None]) & (tok >= 0)
  return jnp.where(ok, tok, 0).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("verify_fn", "accept_fn", "max_len", "eos_id", "draft", "ngram"))
def greedy(verify_fn: VerifyFn, accept_fn: AcceptFn, params, first_logits: jax.Array, cache, context: jax.Array, *,
           max_len: int, eos_id: int | None = None, draft: int = 4, ngram: int = 3) -> Result:
  """Greedy decoding of up to `max_len` tokens after prompts whose next-token logits are `first_logits` [N, V]
  and whose keys and values are in `cache` (with room for `capacity(max_len, draft)` more slots), drafting
  `draft` tokens per call from `context` [N, P] (the prompts' token ids, left padded with -1).

  Returns the same tokens as `beam_search.greedy` (EOS included, -1 after it), and the cache.
  """
  if draft < 0 or ngram < 1:
    raise ValueError(f"draft={draft} must be >= 0 and ngram={ngram} >= 1")
  num = first_logits.shape[0]
  out = jnp.full((num, max_len), -1, jnp.int32)
  pending = jnp.argmax(first_logits, axis=-1).astype(jnp.int32)  # emitted, not yet in the cache
  out = out.at[:, 0].set(pending)
  n = jnp.ones((num,), jnp.int32)
  done = (n >= max_len) | ((pending == eos_id) if eos_id is not None else False)
  cols = jnp.arange(draft + 1)[None, :]

  def body(carry):
    out, n, pending, done, cache, calls = carry
    drafts = lookup(context, out, n, draft=draft, ngram=ngram) if draft else jnp.zeros((num, 0), jnp.int32)
    logits, new = verify_fn(params, jnp.concatenate([pending[:, None], drafts], axis=1), cache)
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [N, draft + 1]: greedy's token after each fed one
    kept = jnp.sum(jnp.cumprod(drafts == best[:, :-1], axis=1), axis=1)  # drafts equal to greedy's, in a row
    count = kept + 1  # the kept drafts' tokens are best[:, :kept]; best[:, kept] is one more
    if eos_id is not None:
      first_eos = jnp.min(jnp.where((best == eos_id) & (cols < count[:, None]), cols, draft + 1), axis=1)
      count = jnp.minimum(count, first_eos + 1)
    count = jnp.where(done, 0, jnp.minimum(count, max_len - n))
    slot = n[:, None] + cols  # where each of best's tokens goes in `out`
    write = cols < count[:, None]
    rows = jnp.broadcast_to(jnp.arange(num)[:, None], slot.shape)
    out = out.at[rows, jnp.where(write, slot, max_len)].set(best, mode="drop")
    ended = (jnp.any(write & (best == eos_id), axis=1) if eos_id is not None else False)
    cache = accept_fn(cache, new, count)  # the fed token and the kept drafts, as far as the text goes
    pending = jnp.where(done, pending, jnp.take_along_axis(best, kept[:, None], axis=1)[:, 0])
    n = n + count
    done = done | ended | (n >= max_len)
    return out, n, pending, done, cache, calls + 1

  carry = (out, n, pending, done, cache, jnp.int32(0))
  out, n, _, _, cache, calls = jax.lax.while_loop(lambda c: ~jnp.all(c[3]), body, carry)
  return Result(tokens=out, cache=cache, fed=n - 1, calls=calls)
