"""Jitted beam search: trie-constrained over tool codes, and unconstrained / greedy for free text.

One beam update (`beam_step`) serves both: from the candidates of every live beam it keeps the best `B` that
continue (live, ranked by the raw sum of log-probabilities) and merges the ones that end (a terminal trie node, or
EOS) into the best `B` finished hypotheses, ranked by the length-normalised score s / |y|^alpha (as `length_penalty`
in transformers' beam search; alpha = 0 ranks by the sum). Live and finished parts are kept apart as in flax's
`examples/wmt/decode.py`, so a short hypothesis never pushes a longer, better one out of the beam.

The model is any step function (`step_fn(params, tokens[N, 1], cache) -> (logits[N, V], cache)`, the model keeps
its positions in the cache) plus `reorder_cache(cache, index[N'])`: `toolgen_jax.models.llama.forward` /
`reorder_cache` fit directly (see `constrained.py`), and the tests use toy models. Static shapes throughout; the
trie search is a Python loop unrolled over the (few, static) code positions, because each position's candidate
width differs; free text uses `lax.while_loop` with flax's early stop.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from toolgen_jax.decoding import trie as trie_lib

NEG_INF = -jnp.inf
StepFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]
ReorderFn = Callable[[Any, jax.Array], Any]


@struct.dataclass
class BeamState:
  """Decode state of Q queries x B beams over at most T generated tokens.

  live_scores:  [Q, B] float32 sum of log-probabilities (-inf: empty slot).
  live_tokens:  [Q, B, T] int32 generated tokens, -1 after the current step.
  live_node:    [Q, B] int32 trie node of each live beam (0 for free text).
  fin_scores:   [Q, B] float32 length-normalised scores, best first (-inf: empty slot).
  fin_tokens:   [Q, B, T] int32, -1 padded.
  fin_tool:     [Q, B] int32 tool id (trie search) or -1.
  """

  live_scores: jax.Array
  live_tokens: jax.Array
  live_node: jax.Array
  fin_scores: jax.Array
  fin_tokens: jax.Array
  fin_tool: jax.Array


@struct.dataclass
class BeamResult:
  """Top-B hypotheses per query, best first. tool_ids is -1 (and scores -inf) where fewer than B exist."""

  tool_ids: jax.Array   # [Q, B] int32
  scores: jax.Array     # [Q, B] float32 (length normalised)
  tokens: jax.Array     # [Q, B, T] int32, -1 padded


def init_state(num_queries: int, beam_size: int, max_len: int) -> BeamState:
  q, b = num_queries, beam_size
  live = jnp.full((q, b), NEG_INF, jnp.float32).at[:, 0].set(0.0)  # one live beam per query at the start
  return BeamState(live_scores=live, live_tokens=jnp.full((q, b, max_len), -1, jnp.int32),
                   live_node=jnp.zeros((q, b), jnp.int32), fin_scores=jnp.full((q, b), NEG_INF, jnp.float32),
                   fin_tokens=jnp.full((q, b, max_len), -1, jnp.int32), fin_tool=jnp.full((q, b), -1, jnp.int32))


def length_norm(length, alpha: float):
  """|y|^alpha, the length penalty of transformers' beam search (alpha = 0: none)."""
  return jnp.asarray(length, jnp.float32) ** alpha if alpha else 1.0


def beam_step(state: BeamState, t, cand_logp, cand_token, cand_next, cand_final, cand_tool, *,
              alpha: float = 0.0) -> tuple[BeamState, jax.Array]:
  """One beam update at step t (0-based; the chosen token is the (t+1)-th generated one).

  Args:
    cand_logp: [Q, B, C] log p(candidate | beam) (-inf: not allowed); cand_token [Q, B, C] int32 token ids;
    cand_next [Q, B, C] int32 next trie node; cand_final [Q, B, C] bool, the candidate ends the hypothesis;
    cand_tool [Q, B, C] int32 tool id of a final candidate.
  Returns:
    (new state, parent [Q, B] int32: the old beam each new live beam extends).
  """
  q, b, c = cand_logp.shape
  total = (state.live_scores[..., None] + cand_logp).reshape(q, b * c)
  final = cand_final.reshape(q, b * c)
  flat_token = cand_token.reshape(q, b * c)

  def extend(idx):  # token histories of the candidates at flat indices idx [Q, K]
    parent = idx // c
    hist = jnp.take_along_axis(state.live_tokens, parent[..., None], axis=1)
    tok = jnp.take_along_axis(flat_token, idx, axis=1)
    return hist.at[:, :, t].set(tok), parent

  # Live: best B candidates that continue.
  live_scores, live_idx = jax.lax.top_k(jnp.where(final, NEG_INF, total), b)
  live_tokens, parent = extend(live_idx)
  live_node = jnp.take_along_axis(cand_next.reshape(q, b * c), live_idx, axis=1)
  # Finished: merge the ending candidates (normalised) into the old finished set.
  ending = jnp.where(final, total / length_norm(t + 1, alpha), NEG_INF)
  new_scores, new_idx = jax.lax.top_k(ending, b)
  new_tokens, _ = extend(new_idx)
  new_tool = jnp.take_along_axis(cand_tool.reshape(q, b * c), new_idx, axis=1)
  pool_scores = jnp.concatenate([state.fin_scores, new_scores], 1)
  fin_scores, pick = jax.lax.top_k(pool_scores, b)
  fin_tokens = jnp.take_along_axis(jnp.concatenate([state.fin_tokens, new_tokens], 1), pick[..., None], axis=1)
  fin_tool = jnp.take_along_axis(jnp.concatenate([state.fin_tool, new_tool], 1), pick, axis=1)
  fin_tool = jnp.where(fin_scores > NEG_INF, fin_tool, -1)
  new = BeamState(live_scores=live_scores, live_tokens=live_tokens, live_node=live_node,
                  fin_scores=fin_scores, fin_tokens=fin_tokens, fin_tool=fin_tool)
  return new, parent


def _advance(step_fn, reorder_cache, params, cache, parent, tokens):
  """Reorders the cache to the surviving beams and runs the model on their newest tokens -> logp [Q, B, V]."""
  q, b = parent.shape
  if b > 1:  # one beam has no other to take from: its parent is itself (skip a copy of the whole cache per token)
    flat = (jnp.arange(q, dtype=jnp.int32)[:, None] * b + parent).reshape(-1)
    cache = reorder_cache(cache, flat)
  logits, cache = step_fn(params, jnp.maximum(tokens, 0).reshape(q * b, 1).astype(jnp.int32), cache)
  logits = logits.reshape(q, b, -1)
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), cache


def _expand(reorder_cache, cache, first_logits, beam_size):
  q = first_logits.shape[0]
  if beam_size > 1:
    cache = reorder_cache(cache, jnp.repeat(jnp.arange(q, dtype=jnp.int32), beam_size))
  logp = jax.nn.log_softmax(first_logits.astype(jnp.float32), axis=-1)
  return cache, jnp.broadcast_to(logp[:, None, :], (q, beam_size, logp.shape[-1]))


def _result(state: BeamState, alpha: float, length) -> BeamResult:
  """Finished hypotheses, topped up with live ones (normalised at `length`) where fewer than B finished."""
  b = state.fin_scores.shape[1]
  live = state.live_scores / length_norm(length, alpha)
  scores = jnp.concatenate([state.fin_scores, live], 1)
  tokens = jnp.concatenate([state.fin_tokens, state.live_tokens], 1)
  tools = jnp.concatenate([state.fin_tool, jnp.full_like(state.fin_tool, -1)], 1)
  scores, pick = jax.lax.top_k(scores, b)
  tokens = jnp.take_along_axis(tokens, pick[..., None], axis=1)
  tools = jnp.take_along_axis(tools, pick, axis=1)
  valid = scores > NEG_INF
  return BeamResult(tool_ids=jnp.where(valid, tools, -1), scores=scores,
                    tokens=jnp.where(valid[..., None], tokens, -1))


NORMALIZE = ("full", "level", "trie")


def normalized_candidates(trie: trie_lib.DeviceTrie, t: int, node: jax.Array, logp: jax.Array,
                          allowed: jax.Array | None = None, normalize: str = "full"):
  """`trie_lib.candidates` with the log-probabilities renormalised as the code loss trains them
  (`training/code_loss.py`): 'full' the vocabulary softmax (unchanged), 'level' a softmax over the step's code
  tokens (`trie.code_tokens[t]`), 'trie' a softmax over the node's live children. The in-domain `allowed` subset
  masks candidates after normalising, so a score means the same with or without it."""
  if normalize not in NORMALIZE:
    raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
  cand_logp, cand_token, cand_child = trie_lib.candidates(trie, t, node, logp, allowed)
  if normalize == "full":
    return cand_logp, cand_token, cand_child
  if normalize == "level":
    lse = jax.nn.logsumexp(jnp.take(logp, trie.code_tokens[t], axis=-1), axis=-1, keepdims=True)
  else:
    live = cand_logp if allowed is None else trie_lib.candidates(trie, t, node, logp, None)[0]
    lse = jax.nn.logsumexp(live, axis=-1, keepdims=True)
  lse = jnp.where(jnp.isfinite(lse), lse, 0.0)  # a node without live children (dead beam): keep -inf, not NaN
  return cand_logp - lse, cand_token, cand_child


@functools.partial(jax.jit, static_argnames=("step_fn", "reorder_cache", "beam_size", "alpha", "normalize"))
def trie_beam_search(step_fn: StepFn, reorder_cache: ReorderFn, params, first_logits: jax.Array, cache,
                     trie: trie_lib.DeviceTrie, *, beam_size: int, alpha: float = 0.0,
                     allowed: jax.Array | None = None, normalize: str = "full") -> BeamResult:
  """Beam search constrained to the live tools of `trie` (optionally to a per-query subset).

  Args:
    step_fn, reorder_cache: the model (module docstring); hashable (module-level functions or functools.partial).
    params: model params (pytree).
    first_logits: [Q, V] next-token logits after each prompt (the prefill's last position).
    cache: the model's cache after the prefill, batch Q (expanded here to Q*B with reorder_cache).
    trie: `Trie.device()` tables.
    beam_size: B.
    alpha: length normalisation exponent (variable-length codes).
    allowed: optional [Q, num_nodes] bool from `trie.allowed_nodes` (in-domain candidate pools).
    normalize: 'full' (vocabulary softmax), 'level' or 'trie': the code loss's normalisation
      (`normalized_candidates`), so a model trained with that loss is decoded with the scores it was trained on.
  Returns:
    BeamResult with tool_ids [Q, B], scores [Q, B] and tokens [Q, B, D].
  """
  q = first_logits.shape[0]
  depth = trie.depth
  cache, logp = _expand(reorder_cache, cache, first_logits, beam_size)
  state = init_state(q, beam_size, depth)
  for t in range(depth):
    cand_logp, cand_token, cand_child = normalized_candidates(trie, t, state.live_node, logp, allowed, normalize)
    tool = trie.node_tool[cand_child]
    state, parent = beam_step(state, t, cand_logp, cand_token, cand_child, tool >= 0, tool, alpha=alpha)
    if t + 1 < depth:
      logp, cache = _advance(step_fn, reorder_cache, params, cache, parent, state.live_tokens[:, :, t])
  return _result(state, alpha, depth)


def _free_text_candidates(logp: jax.Array, beam_size: int, eos_id: int | None):
  """Per beam: its best B non-EOS tokens (enough for the B best live beams) plus EOS (the only ending one).

  One beam is greedy decoding: the argmax token only, so EOS ends the text exactly when it is the argmax (keeping
  a less likely EOS hypothesis aside, as B > 1 does, could return an early EOS that greedy never takes).
  """
  beam_size = min(beam_size, logp.shape[-1])
  if beam_size == 1:
    lp, tok = jax.lax.top_k(logp, 1)
    tok = tok.astype(jnp.int32)
    return lp, tok, (tok == eos_id) if eos_id is not None else jnp.zeros(lp.shape, bool)
  if eos_id is None:
    lp, tok = jax.lax.top_k(logp, beam_size)
    return lp, tok.astype(jnp.int32), jnp.zeros(lp.shape, bool)
  lp, tok = jax.lax.top_k(logp.at[..., eos_id].set(NEG_INF), beam_size)
  lp = jnp.concatenate([lp, logp[..., eos_id:eos_id + 1]], -1)
  tok = jnp.concatenate([tok.astype(jnp.int32), jnp.full(lp.shape[:-1] + (1,), eos_id, jnp.int32)], -1)
  return lp, tok, tok == eos_id


@functools.partial(jax.jit, static_argnames=("step_fn", "reorder_cache", "beam_size", "max_len", "eos_id",
                                             "alpha", "unroll"))
def beam_search(step_fn: StepFn, reorder_cache: ReorderFn, params, first_logits: jax.Array, cache, *,
                beam_size: int, max_len: int, eos_id: int | None = None, alpha: float = 0.0,
                unroll: bool = False) -> BeamResult:
  """Unconstrained beam search over free text (beam_size=1: greedy), same machinery as `trie_beam_search`.

  Hypotheses end at `eos_id` (EOS included in the tokens) or at `max_len` tokens; the loop stops early once no
  live beam can beat the worst finished one (flax wmt). unroll=True: a Python loop (short, fixed lengths).
  Returns BeamResult with tool_ids all -1 and tokens [Q, B, max_len].
  """
  q = first_logits.shape[0]
  cache, logp = _expand(reorder_cache, cache, first_logits, beam_size)
  state = init_state(q, beam_size, max_len)

  def update(state, logp, t):
    lp, tok, fin = _free_text_candidates(logp, beam_size, eos_id)
    zeros = jnp.zeros(tok.shape, jnp.int32)
    return beam_step(state, t, lp, tok, zeros, fin, zeros - 1, alpha=alpha)

  if unroll:
    for t in range(max_len):
      state, parent = update(state, logp, t)
      if t + 1 < max_len:
        logp, cache = _advance(step_fn, reorder_cache, params, cache, parent, state.live_tokens[:, :, t])
    return _result(state, alpha, max_len)

  def not_done(carry):
    t, state, _, _ = carry
    best_live = state.live_scores[:, 0] / length_norm(max_len, alpha)
    worst_fin = state.fin_scores[:, -1]
    can_improve = jnp.any(best_live > worst_fin) if eos_id is not None else True
    return (t < max_len) & can_improve

  def body(carry):
    t, state, logp, cache = carry
    state, parent = update(state, logp, t)
    logp, cache = jax.lax.cond(
        t + 1 < max_len,
        lambda: _advance(step_fn, reorder_cache, params, cache, parent, state.live_tokens[:, :, t]),
        lambda: (logp, cache))
    return t + 1, state, logp, cache

  t, state, _, _ = jax.lax.while_loop(not_done, body, (jnp.int32(0), state, logp, cache))
  return _result(state, alpha, max_len)


def greedy(step_fn: StepFn, reorder_cache: ReorderFn, params, first_logits, cache, *, max_len: int,
           eos_id: int | None = None) -> BeamResult:
  """Greedy decoding: beam search with one beam."""
  return beam_search(step_fn, reorder_cache, params, first_logits, cache, beam_size=1, max_len=max_len,
                     eos_id=eos_id)


def ranked_tools(result: BeamResult, k: int | None = None) -> list[list[int]]:
  """Per query, the distinct tool ids of the beam in rank order (first occurrence kept), at most k: the ranked
  list NDCG@k scores for multi-tool queries (I2/I3). Host-side."""
  import numpy as np
  ids = np.asarray(result.tool_ids)
  out = []
  for row in ids:
    seen, ranked = set(), []
    for t in row.tolist():
      if t >= 0 and t not in seen:
        seen.add(t)
        ranked.append(t)
    out.append(ranked[:k] if k else ranked)
  return out
