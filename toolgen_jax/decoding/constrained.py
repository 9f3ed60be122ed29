"""Prompt -> tool codes -> tool ids with the Llama backbone: prefill of left-padded prompts, then the jitted
trie-constrained beam search (the Action step of the agent loop and the retrieval evaluation both call `retrieve`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.decoding import beam_search as bs
from toolgen_jax.decoding import speculative
from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.models import llama


@dataclasses.dataclass(frozen=True)
class LlamaStep:
  """`step_fn` for `toolgen_jax.models.llama`: one token per row, positions kept by the KVCache.

  A frozen dataclass (hashed by its config) so jit's cache is reused across calls with the same model config.
  """

  config: llama.LlamaConfig

  def __call__(self, params, tokens: jax.Array, cache: llama.KVCache):
    logits, cache = llama.forward(params, self.config, tokens, cache=cache)
    return logits[:, -1], cache


@dataclasses.dataclass(frozen=True)
class LlamaVerify:
  """`verify_fn` for `decoding.speculative`: a chunk of tokens per row through the cache -> logits of each."""

  config: llama.LlamaConfig

  def __call__(self, params, tokens: jax.Array, cache: llama.KVCache):
    return llama.forward(params, self.config, tokens, cache=cache)


def llama_accept(old: llama.KVCache, new: llama.KVCache, count: jax.Array) -> llama.KVCache:
  """`accept_fn` for `decoding.speculative`: each row keeps the first count[i] tokens of the chunk it was fed; the
  slots of the rest stay written but masked out (a hole the row never attends to)."""
  slot = jnp.arange(new.max_len)[None, :]
  hole = (slot >= old.index + count[:, None]) & (slot < new.index)
  return new.replace(mask=new.mask & ~hole, next_pos=old.next_pos + count)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Token-id lists -> (tokens [Q, T], attention_mask [Q, T]) left padded, T rounded up to `multiple` so that
  prompts of similar lengths share one compiled search."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("left_pad: every prompt needs at least one token")
  t = max(len(p) for p in prompts)
  t = -(-t // multiple) * multiple
  tokens = np.full((len(prompts), t), pad_id, np.int32)
  mask = np.zeros((len(prompts), t), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, t - len(p):] = p
    mask[i, t - len(p):] = 1
  return tokens, mask


def prefill(params, config: llama.LlamaConfig, tokens: jax.Array, attention_mask: jax.Array, max_new: int):
  """Runs the left-padded prompts [Q, T] into a fresh cache of T + max_new slots -> (logits [Q, V], cache)."""
  q, t = tokens.shape
  cache = llama.init_cache(config, q, t + max_new)
  x, cache = llama.hidden_states(params, config, tokens, attention_mask=attention_mask, cache=cache, fresh_cache=True)
  # Left padding: the last column is every row's last real token; the LM head runs on it alone.
  return llama.logits_from_hidden(params, config, x[:, -1]), cache


@functools.partial(jax.jit, static_argnames=("config", "beam_size", "alpha", "normalize"))
def retrieve(params, config: llama.LlamaConfig, tokens: jax.Array, attention_mask: jax.Array,
             trie: trie_lib.DeviceTrie, *, beam_size: int, alpha: float = 0.0,
             tool_mask: jax.Array | None = None, normalize: str = "full") -> bs.BeamResult:
  """Top-`beam_size` tools for each prompt (one compiled program: prefill + constrained beam search).

  Args:
    tokens, attention_mask: [Q, T] left-padded prompts ending where the tool codes start (see `left_pad`).
    trie: `Trie.device()`.
    tool_mask: optional [Q, num_tools] bool, the candidate tools allowed per query (in-domain setting).
    normalize: the softmax a code is scored by (`trie_beam_search`): 'full' vocabulary, or 'level' / 'trie' as a
      model trained with that `code_loss` mode was.
  Returns:
    BeamResult: tool_ids [Q, B] (-1 past the number of reachable tools), scores [Q, B], tokens [Q, B, D].
  """
  first, cache = prefill(params, config, tokens, attention_mask, trie.depth)
  allowed = None if tool_mask is None else trie_lib.allowed_nodes(trie, tool_mask)
  return bs.trie_beam_search(LlamaStep(config), llama.reorder_cache, params, first, cache, trie,
                             beam_size=beam_size, alpha=alpha, allowed=allowed, normalize=normalize)


@functools.partial(jax.jit, static_argnames=("config", "beam_size", "max_len", "eos_id", "alpha", "unroll"))
def generate(params, config: llama.LlamaConfig, tokens: jax.Array, attention_mask: jax.Array, *, beam_size: int,
             max_len: int, eos_id: int | None = None, alpha: float = 0.0, unroll: bool = False) -> bs.BeamResult:
  """Unconstrained beam search (beam_size=1: greedy) for free text after left-padded prompts."""
  first, cache = prefill(params, config, tokens, attention_mask, max_len)
  return bs.beam_search(LlamaStep(config), llama.reorder_cache, params, first, cache, beam_size=beam_size,
                        max_len=max_len, eos_id=eos_id, alpha=alpha, unroll=unroll)


@functools.partial(jax.jit, static_argnames=("config", "beam_size", "alpha", "normalize"))
def retrieve_from(params, config: llama.LlamaConfig, first_logits: jax.Array, cache: llama.KVCache,
                  trie: trie_lib.DeviceTrie, *, beam_size: int, alpha: float = 0.0,
                  tool_mask: jax.Array | None = None, normalize: str = "full") -> bs.BeamResult:
  """`retrieve` continuing from a cache the prompts already ran into (`prefix_cache.extend`, with room for
  `trie.depth` more tokens): first_logits [Q, V], cache of Q rows; the beam search replicates it per beam."""
  allowed = None if tool_mask is None else trie_lib.allowed_nodes(trie, tool_mask)
  return bs.trie_beam_search(LlamaStep(config), llama.reorder_cache, params, first_logits, cache, trie,
                             beam_size=beam_size, alpha=alpha, allowed=allowed, normalize=normalize)


@functools.partial(jax.jit, static_argnames=("config", "beam_size", "max_len", "eos_id", "alpha", "unroll"))
def generate_from(params, config: llama.LlamaConfig, first_logits: jax.Array, cache: llama.KVCache, *,
                  beam_size: int, max_len: int, eos_id: int | None = None, alpha: float = 0.0,
                  unroll: bool = False) -> bs.BeamResult:
  """`generate` continuing from a cache with room for `max_len` more tokens (`prefix_cache.extend`)."""
  return bs.beam_search(LlamaStep(config), llama.reorder_cache, params, first_logits, cache, beam_size=beam_size,
                        max_len=max_len, eos_id=eos_id, alpha=alpha, unroll=unroll)


@functools.partial(jax.jit, static_argnames=("config", "max_len", "eos_id", "draft", "ngram"))
def generate_drafted(params, config: llama.LlamaConfig, first_logits: jax.Array, cache: llama.KVCache,
                     context: jax.Array, *, max_len: int, eos_id: int | None = None, draft: int = 4,
                     ngram: int = 3) -> speculative.Result:
  """Greedy `generate_from` with prompt-lookup drafts (`decoding.speculative`; draft=0: none): the same tokens
  in fewer model calls, and the cache after them. cache: room for `speculative.capacity(max_len, draft)` more
  slots; context [Q, P]: the prompts' token ids, left padded with -1."""
  return speculative.greedy(LlamaVerify(config), llama_accept, params, first_logits, cache, context,
                            max_len=max_len, eos_id=eos_id, draft=draft, ngram=ngram)
