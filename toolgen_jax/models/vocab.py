"""Vocabulary extension: add tool-code tokens to the tokenizer and grow the embedding and LM head.

Initialisations of the new rows (config `vocab.init`):
  random        e_new ~ N(mean(E), std(E))  per hidden dim, over the existing rows (HF's resize default in spirit).
  subword_mean  e_new = mean_j E[s_j] where s = old-tokenizer ids of the token's text (ToolGen Sec. 3.3: a tool
                token starts at the mean of the sub-word embeddings of its name).
  codebook      e_new = mean_{t in members(code)} v_t where v_t is tool t's vector in model space (Toolscaler's
                re-framed embedding: a code token starts at the mean of the tools assigned to it); `tool_vectors`
                comes from `tool_model_vectors` (mean input embedding of each tool document's tokens).
  rqvae_codebook, reframe
                e_new = rows[i], given by the caller (`rows`): each code's vector in model space, computed where the
                codebook meets the model (`codebook.code_vectors`, ToolWeaver's RQ-VAE codebook map and Toolscaler's
                reframed embedding; the pipeline's `code_token_rows`). A NaN row (a code with no vector, e.g. a
                collision suffix) falls back to random.
Rows of existing tokens are copied bit for bit. With an untied head the head's new columns follow the same rule in
the head's own space (sub-word columns of the head; codebook: `head_tool_vectors` or the same `tool_vectors`).

Padding: `pad_to_multiple` (default 1) rounds the vocabulary up with zero rows (TPU-friendly shapes and a vocab axis
that divides the mesh). Ids >= len(tokenizer) are then never produced by the tokenizer; decoders should mask them
with `valid_token_mask`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.models.llama import LlamaConfig
from toolgen_jax.models.tokenizer import Tokenizer

INITS = ("random", "subword_mean", "codebook", "rqvae_codebook", "reframe")
ROW_INITS = ("rqvae_codebook", "reframe")  # rows computed by the caller (`extend_vocab(rows=...)`)


@dataclasses.dataclass
class Model:
  """A backbone after vocabulary extension: what training starts from and what a trained workdir stores."""
  config: LlamaConfig   # with the extended vocab_size
  params: Any
  tokenizer: Tokenizer  # holds the tool tokens
  new_token_start: int  # first id of the tool tokens


def tool_model_vectors(params, config: LlamaConfig, tokenizer: Tokenizer, documents: Sequence[str],
                       matrix: str = "embed") -> np.ndarray:
  """[num_tools, hidden] float32: the mean input-embedding row (or head column) of each document's tokens."""
  table = _matrix(params, config, matrix)
  out = np.zeros((len(documents), config.hidden_size), np.float32)
  for i, ids in enumerate(tokenizer.encode_batch(list(documents))):
    if not ids:
      raise ValueError(f"tool document {i} encodes to no tokens: {documents[i]!r}")
    out[i] = table[np.asarray(ids)].astype(np.float32).mean(0)
  return out


def _matrix(params, config: LlamaConfig, which: str) -> np.ndarray:
  """[V, D] view of the input embedding ('embed') or the head ('head'; the embedding when tied)."""
  if which == "head" and not config.tie_embeddings:
    return np.asarray(params["lm_head"]["kernel"]).T
  return np.asarray(params["embed"]["embedding"])


def valid_token_mask(config: LlamaConfig, tokenizer: Tokenizer) -> np.ndarray:
  """[V] bool: ids the tokenizer can produce (False on vocabulary padding rows)."""
  m = np.zeros((config.vocab_size,), bool)
  m[:len(tokenizer)] = True
  return m


def _init_rows(kind: str, table: np.ndarray, new_ids: Sequence[int], *, rng: np.random.Generator,
               subword_ids: Sequence[Sequence[int]] | None, token_members: Sequence[Sequence[int]] | None,
               tool_vectors: np.ndarray | None, n_old: int, given: np.ndarray | None = None
               ) -> tuple[np.ndarray, int]:
  """[len(new_ids), D] float32 rows for one matrix; returns (rows, number that fell back to random)."""
  old = table[:n_old].astype(np.float32)
  mean, std = old.mean(0), old.std(0)
  rand = (mean + std * rng.standard_normal((len(new_ids), table.shape[1]))).astype(np.float32)
  if kind == "random":
    return rand, 0
  rows, fallback = rand.copy(), 0
  if kind == "subword_mean":
    for r, ids in enumerate(subword_ids):
      if ids:
        rows[r] = old[np.asarray(ids)].mean(0)
      else:
        fallback += 1
    return rows, fallback
  if kind == "codebook":
    for r, members in enumerate(token_members):
      if len(members):
        rows[r] = np.asarray(tool_vectors, np.float32)[np.asarray(members)].mean(0)
      else:
        fallback += 1
    return rows, fallback
  if kind in ROW_INITS:
    ok = np.isfinite(given).all(-1)
    rows[ok] = given[ok]
    return rows, int((~ok).sum())
  raise ValueError(f"unknown vocabulary init {kind!r}; expected one of {INITS}")


def extend_vocab(params, config: LlamaConfig, tokenizer: Tokenizer, new_tokens: Sequence[str],
                 init: str = "random", *, rng: jax.Array | int = 0, special: bool = False,
                 token_texts: Sequence[str] | None = None,
                 token_members: Sequence[Sequence[int]] | None = None, tool_vectors: np.ndarray | None = None,
                 head_tool_vectors: np.ndarray | None = None, rows: np.ndarray | None = None,
                 head_rows: np.ndarray | None = None, pad_to_multiple: int = 1,
                 verbose: bool = True) -> tuple[dict, LlamaConfig, Tokenizer]:
  """Adds `new_tokens` to tokenizer and model (embedding rows, head columns when untied).

  Args:
    params, config: the model; tokenizer: its tokenizer (mutated in place: tokens are added to it).
    new_tokens: token strings (`toolgen_jax.code_vocab.token_strings(codebook)` for tool codes).
    init: one of `INITS` (see module docstring).
    rng: a jax key or an int seed for the random rows (and random fallbacks).
    special: add as special tokens (stripped by decode(skip_special_tokens=True)); tool codes are not special.
    token_texts: subword_mean only: the text whose sub-words initialise each token (ToolGen: the tool name);
      default: the token string itself.
    token_members: codebook only: tool ids assigned to each new token (`len(new_tokens)` lists).
    tool_vectors: codebook only: [num_tools, D] tool vectors in model space (`tool_model_vectors`).
    head_tool_vectors: codebook, untied head: tool vectors in head space (default: tool_vectors).
    rows: rqvae_codebook / reframe only: [len(new_tokens), D] float rows in embedding space (NaN: random).
    head_rows: the same, untied head: rows in head space (default: rows).
    pad_to_multiple: round the vocabulary up to a multiple of this (zero rows).

  Returns:
    (params, config with the new vocab_size, tokenizer). Tokens that already exist keep their id and row.
  """
  if init not in INITS:
    raise ValueError(f"unknown vocabulary init {init!r}; expected one of {INITS}")
  new_tokens = list(new_tokens)
  if len(set(new_tokens)) != len(new_tokens):
    raise ValueError("new_tokens contains duplicates")
  if init == "codebook":
    if token_members is None or tool_vectors is None:
      raise ValueError("init='codebook' needs token_members (tool ids per new token) and tool_vectors [N, D]")
    if len(token_members) != len(new_tokens):
      raise ValueError(f"token_members has {len(token_members)} entries for {len(new_tokens)} new tokens")
    tool_vectors = np.asarray(tool_vectors, np.float32)
    if tool_vectors.ndim != 2 or tool_vectors.shape[1] != config.hidden_size:
      raise ValueError(f"tool_vectors has shape {tool_vectors.shape}, expected [num_tools, {config.hidden_size}]")
    bad = [m for ms in token_members for m in ms if not 0 <= m < len(tool_vectors)]
    if bad:
      raise ValueError(f"token_members refers to tool ids {bad[:3]} outside [0, {len(tool_vectors)})")
  if init in ROW_INITS:
    if rows is None:
      raise ValueError(f"init={init!r} needs rows [len(new_tokens), D] (computed where the codebook meets the model)")
    for name, r in (("rows", rows), ("head_rows", head_rows)):
      if r is not None and np.shape(r) != (len(new_tokens), config.hidden_size):
        raise ValueError(f"{name} has shape {np.shape(r)}, expected [{len(new_tokens)}, {config.hidden_size}]")
  if token_texts is not None and len(token_texts) != len(new_tokens):
    raise ValueError(f"token_texts has {len(token_texts)} entries for {len(new_tokens)} new tokens")

  fresh = [i for i, t in enumerate(new_tokens) if tokenizer.token_to_id(t) is None]
  # Sub-words come from the tokenizer *before* the tokens exist, else a token would encode to itself.
  subword_ids = None
  if init == "subword_mean":
    texts = token_texts or new_tokens
    subword_ids = [tokenizer.encode(texts[i]) for i in fresh]
  n_old = len(tokenizer)
  ids = tokenizer.add_tokens([new_tokens[i] for i in fresh], special=special)
  needed = max(config.vocab_size, len(tokenizer))
  vocab = -(-needed // pad_to_multiple) * pad_to_multiple
  seed = int(jax.random.randint(rng, (), 0, 2**31 - 1)) if isinstance(rng, jax.Array) else int(rng)
  np_rng = np.random.default_rng(seed)
  members = None if token_members is None else [token_members[i] for i in fresh]
  pick = lambda r: None if r is None else np.asarray(r, np.float32)[np.asarray(fresh, np.int64)]

  new_params = dict(params)
  new_config = config.replace(vocab_size=vocab)
  fallbacks = {}
  for which in (("embed",) if config.tie_embeddings else ("embed", "head")):
    table = _matrix(params, config, which)
    vecs = tool_vectors if which == "embed" or head_tool_vectors is None else head_tool_vectors
    given = pick(rows if which == "embed" or head_rows is None else head_rows)
    new_rows, fallbacks[which] = _init_rows(init, table, ids, rng=np_rng, subword_ids=subword_ids,
                                            token_members=members, tool_vectors=vecs, n_old=n_old, given=given)
    grown = np.zeros((vocab, config.hidden_size), table.dtype)
    grown[:table.shape[0]] = table
    if ids:
      grown[np.asarray(ids)] = new_rows.astype(table.dtype)
    if which == "embed":
      new_params["embed"] = {**params["embed"], "embedding": jnp.asarray(grown)}
    else:
      new_params["lm_head"] = {**params["lm_head"], "kernel": jnp.asarray(np.ascontiguousarray(grown.T))}
  if verbose:
    print(f"extend_vocab: {len(fresh)} new tokens ({len(new_tokens) - len(fresh)} already present), init={init}; "
          f"{fallbacks['embed']} rows fell back to random (no sub-words / no member tools / no code vector)")
  return new_params, new_config, tokenizer
