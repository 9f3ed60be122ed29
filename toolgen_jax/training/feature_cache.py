"""Compute the frozen part once: hidden states at the first trainable layer, cached per training example.

With the bottom n layers frozen, every epoch of the CPU recipe recomputes the same layer-n states of the same
inputs (53% of a step's FLOPs at n = 24 of 30). Here they are computed once per run, stored in the workdir, and the
trainable top is trained from them for as many epochs as wanted (`training/code_engine.py`).

What is cached (per example, right-padded to T tokens):
* n < num_layers ('layer_input'): x_n [T, D], the residual stream entering layer n at every position (the top
  layers attend over all of them), plus the attention mask; the top layers, the final norm and the head run per step.
* n = num_layers ('code_positions'): x_L [L, D] at the code-predicting positions only (before the final norm);
  only the output rows (and the final norm) train.
Both also keep `code_pos` [N, L] (the position whose output predicts code l: the token before it) and `codes` [N, L].

Staleness: the prompt's tokens are all pretrained and frozen, but the position that predicts code l > 0 reads the
input embedding of code l-1, an added row. Cached states stay exact only if those input rows do not change while
training from the cache: the engine trains separate output rows for the codes instead (`optimizer.Partition` with
code_head=True, input_rows=False: the code tokens' input and output roles are untied).

Training the input rows too (`train.code_inputs_epochs`): the cache then also keeps the prompt's keys and values at
every layer (`prefix_kv`), so a step recomputes only the code tokens themselves (L - 1 tokens through the frozen
layers, attending over the cached prompt): the states at code positions 1.. follow the trained input rows exactly,
and the prompt's states (level 1, the text term) are unchanged because no code token is part of a prompt.

Memory: N * T * D * itemsize bytes for 'layer_input' (SmolLM2, D = 576, T = 64, float32: 147 KiB per example, 377
MB for the 2,555 BFCL tool documents) and N * L * D * itemsize for 'code_positions' (4.6 KiB per example at L = 2).
`cache_nbytes` computes it; the arrays are .npy files read through memory maps, so RAM holds one batch plus the page
cache. float16 storage halves it (values rounded; cached == uncached then holds to float16 precision only).
The prompt's keys and values (`prefix_kv`) take P * layers * 2 * kv_heads * head_dim * itemsize per example of P
prompt tokens, stored ragged (SmolLM2: 23 KiB per token in float16; `prefix_kv_nbytes`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.models import llama

KINDS = ("layer_input", "code_positions")
STORE_DTYPES = ("float32", "float16")


# ---- examples ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class CodeExamples:
  """Training examples as the code engine sees them (host arrays, right-padded).

  tokens [N, T] int32: the prompt and the code tokens up to the last code (exclusive: its output predicts nothing
  that is trained); attention_mask [N, T] int32; code_pos [N, L] int32: the position whose output predicts code l
  (-1 padded); codes [N, L] int32 (-1 padded); truncated: how many examples lost their prompt's start.
  """
  tokens: np.ndarray
  attention_mask: np.ndarray
  code_pos: np.ndarray
  codes: np.ndarray
  truncated: int = 0

  def __len__(self) -> int:
    return len(self.tokens)


def code_examples(encoded: Sequence[np.ndarray], token_table: np.ndarray, seq_len: int,
                  pad_id: int = 0, keep_tail: int | None = None) -> CodeExamples:
  """Token id sequences (prompt + code tokens + anything after, e.g. `input_pipeline.encode_example(...)[0]`) ->
  `CodeExamples`. The i-th code token found is code level i, looked up in `token_table` [L, K] (vocabulary id of
  each (level, code)). A sequence longer than seq_len: with keep_tail (`prompts.prompt_suffix_tokens`) its prompt is
  cut by `prompts.truncate_prompt`, the rule inference uses (the user text's tail goes, header and generation prompt
  stay); keep_tail=None keeps its last seq_len tokens (the recipe input pipeline's rule)."""
  from toolgen_jax.prompts import truncate_prompt
  token_table = np.asarray(token_table)
  L = token_table.shape[0]
  lookup = [{int(t): k for k, t in enumerate(row) if t >= 0} for row in token_table]  # -1: a level's unused slot
  is_code = np.zeros(int(token_table.max()) + 1, bool)
  is_code[token_table[token_table >= 0]] = True
  n = len(encoded)
  out = CodeExamples(tokens=np.full((n, seq_len), pad_id, np.int32), attention_mask=np.zeros((n, seq_len), np.int32),
                     code_pos=np.full((n, L), -1, np.int32), codes=np.full((n, L), -1, np.int32))
  for i, ids in enumerate(encoded):
    ids = np.asarray(ids)
    pos = np.flatnonzero(is_code[np.minimum(ids, len(is_code) - 1)] & (ids < len(is_code)))
    if not 0 < len(pos) <= L or pos[0] == 0:
      raise ValueError(f"example {i}: {len(pos)} code tokens (expected 1..{L} after a prompt)")
    codes = [lookup[l].get(int(ids[p]), -1) for l, p in enumerate(pos)]
    if min(codes) < 0:
      raise ValueError(f"example {i}: code token ids {ids[pos].tolist()} do not follow the levels of token_table")
    seq = ids[:pos[-1]]
    cut = max(0, len(seq) - seq_len)
    out.truncated += cut > 0
    if cut and keep_tail is not None:  # the prompt [0, pos[0]) loses `cut` tokens of its text's tail
      if pos[0] - cut < 1:
        raise ValueError(f"example {i}: seq_len={seq_len} leaves no prompt before the first code")
      prompt = truncate_prompt(seq[:pos[0]], pos[0] - cut, keep_tail)
      seq = np.concatenate([np.asarray(prompt, seq.dtype), seq[pos[0]:]])
      pos = pos - cut
      cut = 0
    seq = seq[cut:]
    out.tokens[i, :len(seq)] = seq
    out.attention_mask[i, :len(seq)] = 1
    out.code_pos[i, :len(pos)] = pos - 1 - cut
    out.codes[i, :len(pos)] = codes
    if out.code_pos[i, 0] < 0:
      raise ValueError(f"example {i}: seq_len={seq_len} leaves no prompt before the first code")
  return out


# ---- the two halves of the forward pass ----------------------------------------------------------------------

def attention_inputs(config: llama.LlamaConfig, attention_mask: jax.Array, dtype) -> tuple[tuple, jax.Array]:
  """(rope tables, [B, T, T] bool mask) exactly as `llama.hidden_states` builds them for a cache-less pass."""
  am = attention_mask.astype(bool)
  T = am.shape[1]
  positions = jnp.maximum(jnp.cumsum(am.astype(jnp.int32), axis=1) - 1, 0)
  mask = jnp.tril(jnp.ones((T, T), bool))[None] & am[:, None, :]
  mask = mask | ~jnp.any(mask, axis=-1, keepdims=True)
  return llama.rope_tables(positions, llama.rope_inv_freq(config), dtype), mask


def run_layers(layers, config: llama.LlamaConfig, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """The residual stream after the stacked `layers` (a slice of params['layers']): x [B, T, D] -> [B, T, D].
  The decoder block is the model's own (`llama._layer`), scanned as `llama.hidden_states` scans it."""
  rope, mask = attention_inputs(config, attention_mask, x.dtype)

  def body(x, lp):
    return llama._layer(config, rope, x, lp, mask, None, None)[0], None  # pylint: disable=protected-access

  body = llama._remat(body, config)  # pylint: disable=protected-access
  return jax.lax.scan(body, x, layers)[0]


def run_top(layers, config: llama.LlamaConfig, x: jax.Array, attention_mask: jax.Array,
            code_pos: jax.Array) -> jax.Array:
  """The top `layers` on x [B, T, D], wanted at code_pos [B, L] only -> [B, L, D] (before the final norm).

  Every layer but the last runs at every position (the next one attends over them); the last runs its queries,
  output projection and MLP at the code positions only (`llama.layer_at`): the same values as `run_layers`
  gathered at code_pos, for a top of one layer at ~L/T of its cost (keys and values are still computed everywhere).
  """
  n = jax.tree.leaves(layers)[0].shape[0]
  if n > 1:
    x = run_layers(jax.tree.map(lambda a: a[:-1], layers), config, x, attention_mask)
  rope, mask = attention_inputs(config, attention_mask, x.dtype)
  last = jax.tree.map(lambda a: a[-1], layers)
  return llama.layer_at(config, rope, x, last, mask, jnp.maximum(code_pos, 0))


def run_layers_kv(layers, config: llama.LlamaConfig, x: jax.Array, attention_mask: jax.Array):
  """`run_layers` that also returns every layer's keys (after RoPE) and values:
  (x [B, T, D], k [n, B, T, Kv, Dh], v [n, B, T, Kv, Dh])."""
  rope, mask = attention_inputs(config, attention_mask, x.dtype)

  def body(x, lp):
    return llama._layer(config, rope, x, lp, mask, None, None)  # pylint: disable=protected-access

  x, (k, v) = jax.lax.scan(body, x, layers)
  return x, k, v


@functools.partial(jax.jit, static_argnames=("config", "frozen_layers", "at_codes", "with_kv"))
def frozen_states(params, config: llama.LlamaConfig, tokens: jax.Array, attention_mask: jax.Array,
                  code_pos: jax.Array, *, frozen_layers: int, at_codes: bool, with_kv: bool = False):
  """x_n: the embedding and layers [0, n) on tokens [B, T] -> [B, T, D], or [B, L, D] at code_pos if at_codes.
  with_kv (n = num_layers): (x, kv [B, T, n, 2, Kv * Dh]), every layer's keys and values, for `prefix_kv`."""
  x = llama.embed(params, config, tokens)
  if with_kv:
    x, k, v = run_layers_kv(params["layers"], config, x, attention_mask)
    n, B, T = k.shape[:3]
    kv = jnp.stack([k.reshape(n, B, T, -1), v.reshape(n, B, T, -1)], axis=1).transpose(2, 3, 0, 1, 4)
  elif frozen_layers:
    x = run_layers(jax.tree.map(lambda a: a[:frozen_layers], params["layers"]), config, x, attention_mask)
  if at_codes:
    x = jnp.take_along_axis(x, jnp.maximum(code_pos, 0)[..., None], axis=1)
  return (x, kv) if with_kv else x


def code_token_states(input_rows: jax.Array, params, config: llama.LlamaConfig, batch, new_token_start: int
                      ) -> jax.Array:
  """x_L [B, L - 1, D] (before the final norm) at code positions 1..L-1, recomputed from the cached prompt.

  The position predicting code l (l >= 1) is the code token l - 1 itself: its input row (input_rows [V - start, D],
  the trainable added rows) runs through every (frozen) layer, attending over the prompt's cached keys and values
  (batch 'prefix_kv' [B, S, n, 2, Kv * Dh], 'prefix_len' [B]) and over the code tokens before it
  ('code_tokens' [B, L - 1]). Equals `llama.hidden_states` on the whole sequence at those positions.
  """
  c = config
  dt = jnp.dtype(c.dtype)
  tok = jnp.asarray(batch["code_tokens"])
  B, M = tok.shape
  x = input_rows[tok - new_token_start].astype(dt)
  plen = jnp.asarray(batch["prefix_len"])
  kv = jnp.asarray(batch["prefix_kv"]).astype(dt)
  S, n = kv.shape[1], kv.shape[2]
  Kv, Dh = c.num_kv_heads, c.head_dim
  kv = kv.reshape(B, S, n, 2, Kv, Dh).transpose(2, 3, 0, 1, 4, 5)                 # [n, 2, B, S, Kv, Dh]
  positions = plen[:, None] + jnp.arange(M)[None]
  rope = llama.rope_tables(positions, llama.rope_inv_freq(c), dt)
  j, m = jnp.arange(S + M), jnp.arange(M)
  mask = (j[None, None, :] < plen[:, None, None]) | ((j[None, :] >= S) & (j[None, :] - S <= m[:, None]))[None]

  def body(x, xs):
    lp, k, v = xs
    return llama._layer(c, rope, x, lp, mask, (k, v), None)[0], None  # pylint: disable=protected-access

  return jax.lax.scan(body, x, (params["layers"], kv[:, 0], kv[:, 1]))[0]


# ---- ordinary text positions (the text term of the code engine) -----------------------------------------------


def sample_text_positions(code_pos: np.ndarray, tokens: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, ...]:
  """(positions [N, R], next-token targets [N, R], valid [N, R]): R prompt positions per example, seeded per row,
  each predicting a prompt token (p < code_pos[n, 0], so the target is never a code)."""
  n = len(code_pos)
  pos = np.zeros((n, count), np.int32)
  valid = np.zeros((n, count), bool)
  for i in range(n):
    last = int(code_pos[i, 0])  # positions 0 .. last-1 predict tokens 1 .. last (all prompt)
    if last <= 0:
      continue
    rng = np.random.default_rng([seed, i])
    pick = np.sort(rng.choice(last, size=min(count, last), replace=False))
    pos[i, :len(pick)] = pick
    valid[i, :len(pick)] = True
  tgt = np.take_along_axis(tokens, np.minimum(pos + 1, tokens.shape[1] - 1), axis=1)
  return pos, np.where(valid, tgt, 0).astype(np.int32), valid


@functools.partial(jax.jit, static_argnames=("config", "start"))
def text_stats(params, config: llama.LlamaConfig, x: jax.Array, targets: jax.Array, *, start: int):
  """At frozen final states x [B, R, D] (before the final norm): (h = RMSNorm(x), logsumexp over the pretrained
  rows [:start], the target token's logit) — constants while the layers, the final norm and those rows are frozen."""
  h = llama.rms_norm(x, params["final_norm"]["scale"], config.rms_norm_eps)
  if config.tie_embeddings:
    rows = params["embed"]["embedding"][:start]
  else:
    rows = params["lm_head"]["kernel"][:, :start].T
  logits = jnp.einsum("brd,vd->brv", h, rows.astype(h.dtype), preferred_element_type=jnp.float32)
  tgt = jnp.take_along_axis(logits, jnp.minimum(targets, start - 1)[..., None], axis=-1)[..., 0]
  return h.astype(jnp.float32), jax.nn.logsumexp(logits, axis=-1), tgt


# ---- the cache on disk -----------------------------------------------------------------------------------------

def cache_nbytes(num_examples: int, seq_len: int, hidden: int, num_levels: int, *, top_layers: bool,
                 dtype: str = "float32") -> int:
  """Bytes of the cached states (the mask, positions and codes add N * (T + 2L) * 4)."""
  per = (seq_len if top_layers else num_levels) * hidden * np.dtype(dtype).itemsize
  return int(num_examples) * per


def prefix_kv_nbytes(prompt_tokens: int, config: llama.LlamaConfig, dtype: str = "float16") -> int:
  """Bytes of the cached prompt keys and values (`build(prefix_kv=...)`) for `prompt_tokens` tokens in all."""
  per = config.num_layers * 2 * config.num_kv_heads * config.head_dim * np.dtype(dtype).itemsize
  return int(prompt_tokens) * per


@dataclasses.dataclass
class FeatureCache:
  """Cached x_n of a set of `CodeExamples` (arrays may be read-only memory maps).

  states: [N, T, D] ('layer_input') or [N, L, D] ('code_positions'); attention_mask [N, T]; code_pos, codes [N, L].
  """
  kind: str
  frozen_layers: int
  states: np.ndarray
  attention_mask: np.ndarray
  code_pos: np.ndarray
  codes: np.ndarray
  seconds: float = 0.0  # wall time of the pass that built it, compilation included (0 when loaded)
  compile_seconds: float = 0.0  # of which compiling the padded widths
  text: dict | None = None  # `text_positions` > 0: arrays [N, R(, D)] of R prompt positions (`build`)
  # `prefix_kv`: the prompt's keys and values, ragged: 'kv' [sum P, n, 2, Kv * Dh] (example i at rows
  # offset[i] .. offset[i] + P_i, P_i = code_pos[i, 0] + 1), 'offset' [N], 'code_tokens' [N, L - 1] (the code tokens'
  # ids at positions code_pos[:, 1:], the inputs `code_token_states` recomputes)
  prefix: dict | None = None

  def __len__(self) -> int:
    return len(self.states)

  def batch(self, idx: np.ndarray, prefix: bool = False) -> dict:
    """Host batch of examples idx [B] for the engine's step; prefix=True adds the prompt's keys and values
    ('prefix_kv' [B, S, n, 2, Kv * Dh], zero past each prompt, S the longest prompt of the cache), 'prefix_len' [B]
    and 'code_tokens' [B, L - 1] for `code_token_states`."""
    idx = np.sort(np.asarray(idx))  # sorted reads from the memory map
    out = {"states": np.asarray(self.states[idx], np.float32), "attention_mask": self.attention_mask[idx],
           "code_pos": self.code_pos[idx], "codes": self.codes[idx]}
    if self.text is not None:
      out.update({k: np.asarray(v[idx]) for k, v in self.text.items()})
    if prefix:
      if self.prefix is None:
        raise ValueError("this cache holds no prompt keys and values: build it with prefix_kv")
      plen = self.code_pos[:, 0] + 1
      S = int(plen.max())
      j = np.arange(S)
      rows = self.prefix["offset"][idx, None] + np.minimum(j[None], plen[idx, None] - 1)
      kv = np.asarray(self.prefix["kv"][rows.reshape(-1)], np.float32).reshape(rows.shape + self.prefix["kv"].shape[1:])
      kv[j[None] >= plen[idx, None]] = 0.0
      out.update({"prefix_kv": kv, "prefix_len": plen[idx].astype(np.int32),
                  "code_tokens": np.asarray(self.prefix["code_tokens"][idx])})
    return out


def fingerprint(params, config: llama.LlamaConfig, examples: CodeExamples, frozen_layers: int, dtype: str) -> str:
  """A key that changes when the inputs of the cached computation do: examples, the frozen weights (sampled),
  the model config, n and the storage dtype."""
  h = hashlib.sha256()
  for a in (examples.tokens, examples.attention_mask, examples.code_pos, examples.codes):
    h.update(np.ascontiguousarray(a).tobytes())
  h.update(repr((config, frozen_layers, dtype)).encode())
  frozen = [params["embed"]["embedding"]] + [a[:frozen_layers] for a in jax.tree.leaves(params["layers"])]
  for a in frozen:
    flat = np.asarray(a).reshape(-1)
    h.update(np.ascontiguousarray(flat[::max(1, flat.size // 4096)], np.float32).tobytes())
  return h.hexdigest()[:16]


def build(params, config: llama.LlamaConfig, examples: CodeExamples, *, frozen_layers: int,
          directory: str | pathlib.Path | None = None, batch_size: int = 32, dtype: str = "float32",
          text_positions: int = 0, new_token_start: int | None = None, prefix_kv: str | None = None,
          log=None) -> FeatureCache:
  """Runs the frozen bottom once over `examples` and stores x_n (see the module docstring).

  directory: the workdir folder to write (e.g. WORKDIR/feature_cache/memorization); None keeps it in memory. A
  complete cache with the same fingerprint there is loaded instead of recomputed (a resumed run pays nothing).
  text_positions = R > 0: also R ordinary prompt positions per example for the text term, stored as
  `FeatureCache.text`: with the whole backbone frozen their final states and `text_stats` over the pretrained rows
  [:new_token_start] (constants); with a trainable top only the positions and next tokens (recomputed per step).
  prefix_kv: a storage dtype (STORE_DTYPES) to also keep the prompt's keys and values at every layer
  (`FeatureCache.prefix`, whole backbone frozen only), from the same pass: what training the code tokens' input
  rows needs (`code_token_states`).
  """
  import time

  if dtype not in STORE_DTYPES:
    raise ValueError(f"feature cache dtype must be one of {STORE_DTYPES}, got {dtype!r}")
  if not 0 <= frozen_layers <= config.num_layers:
    raise ValueError(f"frozen_layers={frozen_layers} outside [0, {config.num_layers}]")
  kind = "code_positions" if frozen_layers == config.num_layers else "layer_input"
  at_codes = kind == "code_positions"
  n, T = examples.tokens.shape
  L = examples.codes.shape[1]
  R = int(text_positions)
  if R and at_codes and new_token_start is None:
    raise ValueError("text_positions needs new_token_start (the pretrained rows the text term is scored over)")
  shape = (n, L if at_codes else T, config.hidden_size)
  key = fingerprint(params, config, examples, frozen_layers, dtype)
  meta = {"kind": kind, "frozen_layers": frozen_layers, "shape": list(shape), "dtype": dtype, "fingerprint": key,
          "text_positions": R, "new_token_start": new_token_start if R else None}
  if prefix_kv is not None:  # absent otherwise, so caches written before the option still load
    if prefix_kv not in STORE_DTYPES or not at_codes or L < 2:
      raise ValueError(f"prefix_kv needs a dtype in {STORE_DTYPES}, the whole backbone frozen and >= 2 code levels "
                       f"(got {prefix_kv!r}, frozen_layers={frozen_layers}, L={L})")
    if (examples.codes < 0).any():
      raise ValueError("prefix_kv: every example needs all its code levels (fixed-length codes)")
    meta["prefix_kv"] = prefix_kv
    plen = examples.code_pos[:, 0].astype(np.int64) + 1
    offset = np.concatenate([[0], np.cumsum(plen)[:-1]])
    kv_shape = (int(plen.sum()), config.num_layers, 2, config.num_kv_heads * config.head_dim)
    code_tokens = np.take_along_axis(examples.tokens, examples.code_pos[:, 1:], axis=1)

  def prefix_of(kv):
    return None if prefix_kv is None else {"kv": kv, "offset": offset, "code_tokens": code_tokens}
  if R:
    tpos, ttgt, tvalid = sample_text_positions(examples.code_pos, examples.tokens, R)
    text_shapes = {"text_states": ((n, R, config.hidden_size), np.float32), "text_lse": ((n, R), np.float32),
                   "text_logit": ((n, R), np.float32), "text_valid": ((n, R), np.bool_)}
    if not at_codes:  # a trainable top recomputes the states at the positions each step: store where and what
      text_shapes = {"text_pos": ((n, R), np.int32), "text_target": ((n, R), np.int32),
                     "text_valid": ((n, R), np.bool_)}
  d = None if directory is None else pathlib.Path(directory)
  if d is not None and (d / "meta.json").exists():
    old = json.loads((d / "meta.json").read_text())
    if old.get("complete") and {k: old.get(k) for k in meta} == meta:
      text = {f: np.load(d / f"{f}.npy", mmap_mode="r") for f in text_shapes} if R else None
      kv = np.load(d / "prefix_kv.npy", mmap_mode="r") if prefix_kv is not None else None
      return FeatureCache(kind, frozen_layers, np.load(d / "states.npy", mmap_mode="r"),
                          examples.attention_mask, examples.code_pos, examples.codes, text=text, prefix=prefix_of(kv))
  text = None
  if d is not None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    states = np.lib.format.open_memmap(d / "states.npy", mode="w+", dtype=dtype, shape=shape)
    kv_store = None if prefix_kv is None else np.lib.format.open_memmap(
        d / "prefix_kv.npy", mode="w+", dtype=prefix_kv, shape=kv_shape)
    if R:
      text = {f: np.lib.format.open_memmap(d / f"{f}.npy", mode="w+", dtype=dt, shape=sh)
              for f, (sh, dt) in text_shapes.items()}
  else:
    states = np.zeros(shape, dtype)
    kv_store = None if prefix_kv is None else np.zeros(kv_shape, prefix_kv)
    if R:
      text = {f: np.zeros(sh, dt) for f, (sh, dt) in text_shapes.items()}
  if R:
    text["text_valid"][:] = tvalid
    if not at_codes:
      text["text_pos"][:], text["text_target"][:] = tpos, ttgt
  t0 = time.perf_counter()
  compiled, compile_seconds = {}, 0.0
  # Batches of similar length share a padded width (a multiple of T/8, at least 8), so short documents are not run
  # at T: the forward costs what the real tokens cost, +1/16 on average (the pass is compute-bound: ~0.1 s per
  # 64-token SmolLM2 example on 2 cores). The positions past a row's end stay zero (padding is never attended to).
  lengths = examples.attention_mask.sum(1)
  order = np.argsort(lengths, kind="stable")
  step = max(8, -(-T // 8))
  widths = sorted({T} | set(range(step, T, step)))  # at most 9 compiled shapes, only those the lengths need
  for s in range(0, n, batch_size):
    idx = order[s:s + batch_size]
    width = next(w for w in widths if w >= lengths[idx].max())  # right padding: later positions never matter
    pad = batch_size - len(idx)  # keep one compiled shape per width
    take = np.concatenate([idx, np.repeat(idx[:1], pad)])
    pos = examples.code_pos[take]
    if R and at_codes:  # the text positions ride along with the code positions through the same gather
      pos = np.concatenate([pos, tpos[take]], axis=1)
    args = (jnp.asarray(examples.tokens[take, :width]), jnp.asarray(examples.attention_mask[take, :width]),
            jnp.asarray(pos))
    if width not in compiled:  # compiled ahead, so the cost per example and the one-time cost are told apart
      tc = time.perf_counter()
      compiled[width] = frozen_states.lower(params, config, *args, frozen_layers=frozen_layers,
                                            at_codes=at_codes, with_kv=prefix_kv is not None).compile()
      compile_seconds += time.perf_counter() - tc
    x = compiled[width](params, *args)
    if prefix_kv is not None:
      x, kv = x
      kv = np.asarray(kv[:len(idx)]).astype(prefix_kv)  # [B, W, n, 2, Kv * Dh]
      for r, i in enumerate(idx):
        kv_store[offset[i]:offset[i] + plen[i]] = kv[r, :plen[i]]
    if R and at_codes:
      h, lse, tgt = text_stats(params, config, x[:, L:], jnp.asarray(ttgt[take]), start=int(new_token_start))
      for f, v in (("text_states", h), ("text_lse", lse), ("text_logit", tgt)):
        text[f][idx] = np.asarray(v[:len(idx)])
      x = x[:, :L]
    x = np.asarray(x[:len(idx)], np.float32).astype(dtype)
    if at_codes:
      states[idx] = x
    else:
      states[idx, :width] = x
    if log and (s // batch_size) % 20 == 0:
      log(f"feature cache: {s + len(idx)}/{n} examples")
  seconds = time.perf_counter() - t0
  if d is not None:
    states.flush()
    for a in list((text or {}).values()) + ([kv_store] if kv_store is not None else []):
      a.flush()
    (d / "meta.json").write_text(json.dumps({**meta, "complete": True, "seconds": round(seconds, 2)}))
  return FeatureCache(kind, frozen_layers, states, examples.attention_mask, examples.code_pos, examples.codes,
                      seconds=seconds, compile_seconds=compile_seconds, text=text, prefix=prefix_of(kv_store))
