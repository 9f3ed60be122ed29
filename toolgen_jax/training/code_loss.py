"""An objective spent on codes: cross-entropy at the code positions only, normalised over the codes that can follow.

A tool is a sequence of L codes; its vocabulary ids are `token_table[l, codes[l]]` ([L, K] int32 table of the
(level, code) tokens, -1 padded codes carry no loss). At the position that predicts code l the model's decision
is which code comes next, so the softmax runs over the candidates of that decision only:

  mode 'level':  p(c_l | x, c_<l) = exp(s_l(c_l)) / sum_{k < K} exp(s_l(k))             (the level's K codes)
  mode 'trie':   p(c_l | x, c_<l) = exp(s_l(c_l)) / sum_{k in children(c_<l)} exp(s_l(k))  (the trie children)
  mode 'full':   p(c_l | x, c_<l) = softmax over the whole vocabulary (the causal-LM loss; for free-text turns)

with s_l(k) = <h_l, w_{token_table[l, k]}> the logit of code k's output row at that position. Beam search scores
hypotheses with the same normalisation (`decoding.beam_search.trie_beam_search(normalize=...)`), so the quantity
trained is the quantity decoded. Nothing is spent on the end-of-turn and newline tokens that follow the codes (the
trie never generates them for fixed-length codes); an END code for variable-length tokenizers is not handled here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("level", "trie", "full")


def level_rows(output_rows: jax.Array, token_table: jax.Array, offset: int = 0) -> jax.Array:
  """[L, K, D] output rows of every (level, code): rows `token_table - offset` of `output_rows` [R, D]."""
  return output_rows[jnp.asarray(token_table) - offset]


def level_logits(h: jax.Array, rows: jax.Array) -> jax.Array:
  """s_l(k) = <h_l, w_lk>: h [..., L, D] hidden states at the code-predicting positions, rows [L, K, D] ->
  [..., L, K] float32."""
  return jnp.einsum("...ld,lkd->...lk", h, rows.astype(h.dtype), preferred_element_type=jnp.float32)


def trie_children_mask(all_codes: np.ndarray, codes: np.ndarray, num_codes: int) -> np.ndarray:
  """[N, L, K] bool: at level l, the codes k that follow the prefix codes[n, :l] in some tool of `all_codes`
  [M, L] (the trie's children of that prefix; host NumPy, built once per training set). Padded levels (-1) allow
  every code (they carry no loss)."""
  all_codes, codes = np.asarray(all_codes), np.asarray(codes)
  n, L = codes.shape
  out = np.ones((n, L, num_codes), bool)
  for l in range(L):
    kids: dict[tuple, np.ndarray] = {}
    for row in all_codes[all_codes[:, l] >= 0]:
      kids.setdefault(tuple(row[:l].tolist()), np.zeros(num_codes, bool))[row[l]] = True
    for i in np.flatnonzero(codes[:, l] >= 0):
      key = tuple(codes[i, :l].tolist())
      if key not in kids:
        raise ValueError(f"row {i}: prefix {list(key)} is not a prefix of any tool's code")
      out[i, l] = kids[key]
  return out


def restricted_nll(logits: jax.Array, codes: jax.Array, allowed: jax.Array | None = None) -> jax.Array:
  """-log p(code) per level: logits [..., L, K] float32 over the level's codes, codes [..., L] (-1: padding),
  allowed [..., L, K] bool (the trie's children; None = every code of the level) -> [..., L] (0 on padding)."""
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  logp = jax.nn.log_softmax(logits, axis=-1)
  valid = codes >= 0
  tgt = jnp.take_along_axis(logp, jnp.maximum(codes, 0)[..., None], axis=-1)[..., 0]
  return jnp.where(valid, -tgt, 0.0)


def full_nll(vocab_logits: jax.Array, codes: jax.Array, token_table: jax.Array) -> jax.Array:
  """-log p(code token) under the full-vocabulary softmax: vocab_logits [..., L, V], codes [..., L] -> [..., L]."""
  L = codes.shape[-1]
  tok = jnp.asarray(token_table)[jnp.arange(L), jnp.maximum(codes, 0)]
  lse = jax.nn.logsumexp(vocab_logits, axis=-1)
  tgt = jnp.take_along_axis(vocab_logits, tok[..., None], axis=-1)[..., 0]
  return jnp.where(codes >= 0, lse - tgt, 0.0)


def code_loss_sums(logits: jax.Array, codes: jax.Array, *, mode: str = "level", allowed: jax.Array | None = None,
                   token_table: Any = None, weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """(sum of weighted code NLLs, {'codes': weighted code count, 'correct': weighted top-1 hits, 'nll': [..., L]}).

  logits: [..., L, K] level logits for 'level'/'trie', [..., L, V] vocabulary logits for 'full' (then token_table
  is needed); allowed: [..., L, K] for 'trie'; weights: [...] per example (default 1). Top-1 is taken over the same
  candidates as the softmax (teacher-forced per-level accuracy).
  """
  if mode not in MODES:
    raise ValueError(f"code loss mode must be one of {MODES}, got {mode!r}")
  if mode == "trie" and allowed is None:
    raise ValueError("mode='trie' needs `allowed` (trie_children_mask)")
  codes = jnp.asarray(codes)
  w = jnp.ones(codes.shape[:-1], jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  valid = (codes >= 0).astype(jnp.float32) * w[..., None]
  if mode == "full":
    if token_table is None:
      raise ValueError("mode='full' needs token_table")
    nll = full_nll(logits, codes, token_table)
    L = codes.shape[-1]
    tok = jnp.asarray(token_table)[jnp.arange(L), jnp.maximum(codes, 0)]
    hit = jnp.argmax(logits, axis=-1) == tok
  else:
    mask = allowed if mode == "trie" else None
    nll = restricted_nll(logits, codes, mask)
    masked = logits if mask is None else jnp.where(mask, logits, -jnp.inf)
    hit = jnp.argmax(masked, axis=-1) == codes
  return jnp.sum(nll * valid), {"codes": jnp.sum(valid), "correct": jnp.sum(hit * valid), "nll": nll}


def per_level_accuracy(logits: np.ndarray, codes: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
  """[L] teacher-forced top-1 accuracy per level over the candidates (NaN for a level with no code): the
  diagnostic that says whether level 2 carries information (compare with 1 / mean number of candidates)."""
  logits, codes = np.asarray(logits, np.float64), np.asarray(codes)
  if allowed is not None:
    logits = np.where(allowed, logits, -np.inf)
  hit = (logits.argmax(-1) == codes) & (codes >= 0)
  n = (codes >= 0).reshape(-1, codes.shape[-1]).sum(0)
  with np.errstate(invalid="ignore", divide="ignore"):
    return hit.reshape(-1, codes.shape[-1]).sum(0) / n
