"""KV-cache reuse across prompts that share a prefix (one agent step: thought, action, arguments).

The three generations of an agent step are prompts that grow by appending: the action prompt is the thought prompt
plus the thought and the action request, the arguments prompt is the action prompt plus the action code and the
tool's documentation, and each schema-constrained value is the arguments prompt plus the JSON written so far. Re-
prefilling each from scratch costs the whole prompt every time; here a `PrefixCache` keeps the KV cache of a batch
of prompts with the token ids each row holds, and `extend` continues new prompts from it: every new prompt takes
the cached row with which it shares the longest token prefix, keeps that many of the row's cached tokens (gathered
and packed to the right of a fresh cache, so no slot is wasted on a discarded suffix), and runs the model on the
rest only. Rotary positions are the count of real tokens before a token (as `llama.hidden_states` assigns them to
left-padded prompts), so a kept key is the key a full prefill computes, and the continuation equals a re-prefill
of the whole prompt up to float rounding (`tests/test_prefix_cache.py`).

Token prefixes, not text prefixes, are compared: a tokenizer may merge characters across the boundary of a
prompt and its continuation, and the first differing token is where the cached computation stops being valid.
Shapes are rounded (rows to a power of two, widths and chunks by `bucket`: two sizes per octave) so that similar
batches share a compiled program. `shared` keeps, between batches, only what every prompt starts with (the chat
header and system prompt) as one row, so the next batch does not prefill it again (prefix caching across requests,
as vLLM's automatic prefix caching does for a common system prompt).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.models import llama


@dataclasses.dataclass(frozen=True)
class PrefixCache:
  """The KV cache of R rows (`llama.KVCache`, [L, R, S, K, Dh]) and, per row, the token ids its real slots hold in
  order (host side; rows past the real prompts, added to round the batch up, hold a copy of row 0)."""

  cache: llama.KVCache
  tokens: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class Continued:
  """What `extend` returns for R prompts (the first R rows of every array are theirs).

  prefix:      the cache after the prompts (one row per prompt, in order), ready for a generation of `extra` tokens.
  last_logits: [R', V] float32 next-token logits after each prompt.
  logprobs:    [R', T-1] float32 log p(chunk[:, t+1] | ...) within the fed chunk (with `logprobs=True`), else None.
  keep:        per prompt, how many of its leading tokens came from the cache (the rest were fed).
  width:       T, the chunk's length: token i >= keep[j] of prompt j sits at chunk column T - len(prompt j) + i.
  """

  prefix: PrefixCache
  last_logits: jax.Array
  logprobs: jax.Array | None
  keep: list[int]
  width: int


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
  """Length of the longest common prefix of two token-id sequences."""
  n = min(len(a), len(b))
  if n == 0:
    return 0
  diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
  return int(diff[0]) if diff.size else n


def match(prefix: PrefixCache | None, prompts: Sequence[Sequence[int]],
          limits: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
  """For each prompt, the cached row sharing the longest token prefix with it and how many tokens to keep:
  min(common prefix, limit), where the limit defaults to len(prompt) - 1 (at least one token is fed, so the
  continuation has next-token logits)."""
  rows, keep = [], []
  for j, p in enumerate(prompts):
    limit = len(p) - 1 if limits is None else min(int(limits[j]), len(p) - 1)
    best, n = 0, 0
    if prefix is not None:
      for r, cached in enumerate(prefix.tokens):
        c = common_prefix(cached, p)
        if c > n:
          best, n = r, c
    rows.append(best)
    keep.append(max(0, min(n, limit)))
  return rows, keep


def _pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def bucket(n: int, m: int) -> int:
  """The smallest of m, 2m, 3m, 4m, 6m, 8m, 12m, ... (two sizes per octave) that holds n: at most 1.5x the
  multiple of m it replaces, so a padded prefill wastes at most a third, while similar sizes still share one
  compiled program."""
  u = -(-max(int(n), 1) // m)
  p = _pow2(u)
  return m * (p if p <= 2 or 3 * p // 4 < u else 3 * p // 4)


def _pack_rows(cache: llama.KVCache, rows: jax.Array, keep: jax.Array, width: int, capacity: int) -> llama.KVCache:
  """A cache of len(rows) rows and `capacity` slots: row j holds the first keep[j] real tokens of cached row
  rows[j], packed into slots [width - keep, width); index = width, the next token's position = keep."""
  real = cache.mask[rows]  # [R, S]
  s = real.shape[1]
  order = jnp.argsort(~real, axis=1, stable=True)  # each row's real slots first, in order
  i = jnp.arange(width)[None, :] - (width - keep[:, None])  # [R, W]: which kept token lands in slot w
  valid = i >= 0
  slot = jnp.take_along_axis(order, jnp.clip(i, 0, s - 1), axis=1)
  src = rows[:, None]
  pad = ((0, 0), (0, 0), (0, capacity - width), (0, 0), (0, 0))
  k = jnp.pad(cache.k[:, src, slot], pad)  # [L, R, capacity, K, Dh]
  v = jnp.pad(cache.v[:, src, slot], pad)
  return llama.KVCache(k=k, v=v, mask=jnp.pad(valid, ((0, 0), (0, capacity - width))),
                       index=jnp.asarray(width, jnp.int32), next_pos=keep.astype(jnp.int32))


_pack = jax.jit(_pack_rows, static_argnames=("width", "capacity"))


@functools.partial(jax.jit, static_argnames=("config", "logprobs", "piece"), donate_argnames=("packed",))
def _continue(params, config: llama.LlamaConfig, packed: llama.KVCache, tokens: jax.Array, mask: jax.Array, *,
              logprobs: bool, piece: int):
  """packed: the kept tokens (`_pack`); tokens, mask [R, T] left padded -> (last logits [R, V], logprobs [R, T-1]
  | None, the cache with the chunk after the kept tokens). The packing is a program of its own, so this one (the
  model) compiles per (rows, slots, chunk) only, whatever shape the cache it was packed from had.

  The chunk runs in pieces of at most `piece` tokens, each continuing through the cache from the one before (a
  chunked prefill): attention scores are rows x heads x piece x (cache + piece) floats, not rows x heads x T^2 (a
  batch of 8 ToolBench histories of ~8k tokens would need ~20 GB at once). The values are those of one pass."""
  new = packed
  t = tokens.shape[1]
  xs = []
  for a in range(0, t, piece):
    x, new = llama.hidden_states(params, config, tokens[:, a:a + piece], attention_mask=mask[:, a:a + piece],
                                 cache=new)
    xs.append(x if logprobs else x[:, -1:])
  x = jnp.concatenate(xs, axis=1)
  last = llama.logits_from_hidden(params, config, x[:, -1])
  lp = None
  if logprobs:
    logits = llama.logits_from_hidden(params, config, x[:, :-1])
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[:, 1:, None], -1)[..., 0]
  return last, lp, new


def shared(prefix: PrefixCache | None, *, multiple: int = 32, min_tokens: int = 16) -> PrefixCache | None:
  """The tokens every row of `prefix` starts with (for an agent's prompts: the chat header and system prompt), as
  a one-row cache that the next batch's prompts continue from instead of prefilling them again; None when fewer
  than `min_tokens` are shared. Its memory is one row of that many tokens (the rest of the cache is dropped)."""
  if prefix is None or not prefix.tokens:
    return None
  n = min(len(t) for t in prefix.tokens)
  for t in prefix.tokens[1:]:
    n = min(n, common_prefix(prefix.tokens[0], t))
  if n < min_tokens:
    return None
  width = bucket(n, multiple)
  cache = _pack(prefix.cache, jnp.zeros((1,), jnp.int32), jnp.full((1,), n, jnp.int32), width=width,
                capacity=width)
  return PrefixCache(cache, (tuple(prefix.tokens[0][:n]),))


def extend(params, config: llama.LlamaConfig, prefix: PrefixCache | None, prompts: Sequence[Sequence[int]], *,
           pad_id: int, multiple: int = 32, chunk_multiple: int | None = None, extra: int = 0,
           limits: Sequence[int] | None = None, logprobs: bool = False, max_piece: int = 1024) -> Continued:
  """Runs `prompts` (token-id lists) continuing from `prefix` (None: a fresh prefill) into a cache with room for
  `extra` generated tokens. `limits` cap, per prompt, how many leading tokens may come from the cache (scoring a
  continuation from token i needs the logits at i - 1, so the caller keeps at most i - 1). The kept width and the
  fed chunk are rounded up by `bucket` (to `multiple`, and `chunk_multiple`, default `multiple`, times 1, 2, 3, 4,
  6, 8, ...), the room for `extra` to a multiple of 8 likewise. A chunk longer than `max_piece` tokens runs in
  pieces of that many (the prefill's attention memory is bounded by it)."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("extend: every prompt needs at least one token")
  prompts = [list(map(int, p)) for p in prompts]
  rows, keep = match(prefix, prompts, limits)
  if prefix is None:
    prefix = PrefixCache(llama.init_cache(config, 1, multiple), ((),))
  n = _pow2(len(prompts))
  rows_p, keep_p = rows + [rows[0]] * (n - len(rows)), keep + [keep[0]] * (n - len(keep))
  chunks = [p[k:] for p, k in zip(prompts, keep)]
  chunks += [chunks[0]] * (n - len(chunks))
  t = bucket(max(map(len, chunks)), chunk_multiple or multiple)
  tokens = np.full((n, t), pad_id, np.int32)
  mask = np.zeros((n, t), np.int32)
  for j, c in enumerate(chunks):
    tokens[j, t - len(c):], mask[j, t - len(c):] = c, 1
  width = bucket(max(keep_p), multiple)
  capacity = width + t + (bucket(extra, 8) if extra else 0)
  packed = _pack(prefix.cache, jnp.asarray(rows_p, jnp.int32), jnp.asarray(keep_p, jnp.int32), width=width,
                 capacity=capacity)
  last, lp, cache = _continue(params, config, packed, jnp.asarray(tokens), jnp.asarray(mask), logprobs=logprobs,
                              piece=max(1, min(t, max_piece)))
  held = tuple(tuple(p) for p in prompts) + (tuple(prompts[0]),) * (n - len(prompts))
  return Continued(PrefixCache(cache, held), last, lp, keep, t)
