"""Examples -> token batches with loss masks; deterministic order by (seed, step); per-host shards.

An `Example` is a sequence of text segments, each marked target or not (stages.py renders chat turns into them:
the assistant's reply is a target, the prompt and the role headers are not). Each segment is tokenised on its own
and the ids concatenated: the prompt is then tokenised exactly as at inference time, where generation starts right
after it.

Order: the batch of optimizer step s holds positions [s*B, (s+1)*B) of an endless stream made of one seeded
permutation of the examples per epoch (`np.random.default_rng([seed, epoch])`). It is a pure function of
(seed, step), so the resumable position *is* the train step stored in the checkpoint; nothing else to save.

Shapes: 'pad' right-pads every row to seq_len (one compiled step). 'bucket' sorts windows of 16 batches by length,
shuffles the batch order inside the window, and pads each batch to the smallest of (seq_len/4, seq_len/2, seq_len)
that holds it (at most three compiled steps; less padding for short queries and tool documents).

Multi-host: host h of H materialises only rows [h*B/H, (h+1)*B/H) of each global batch (tokenising only those, plus
the lengths `bucket` needs); `sharding.host_local_batch_to_global` assembles the global array.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import numpy as np

from toolgen_jax.models.tokenizer import encode_text
from toolgen_jax.prompts import Example

PAD_MODES = ("pad", "bucket")
BUCKET_WINDOW = 16  # batches per sorting window in 'bucket' mode


def encode_example(tokenizer: Any, example: Example) -> tuple[np.ndarray, np.ndarray]:
  """(ids [L] int32, target mask [L] bool) of the whole example, untruncated."""
  ids, mask = [], []
  for text, is_target in example.segments:
    t = encode_text(tokenizer, text)
    ids.extend(t)
    mask.extend([bool(is_target)] * len(t))
  return np.asarray(ids, np.int32), np.asarray(mask, bool)


def bucket_lengths(seq_len: int, multiple: int = 8) -> tuple[int, ...]:
  out = sorted({seq_len} | {b for b in (seq_len // 4, seq_len // 2) if b >= multiple and b % multiple == 0})
  return tuple(out)


class InputPipeline:
  """Batches for train step `s` as NumPy: tokens/targets [B_host, T] int32, weights [B_host, T] float32 (1 on
  target tokens), attention_mask [B_host, T] int32. B_host = batch_size / process_count.

  Over-long examples keep their last seq_len + 1 tokens (the prompt's start goes first, targets sit at the end);
  both truncations and examples whose targets were cut away entirely are counted (`summary()`).
  """

  def __init__(self, examples: Sequence[Example], tokenizer: Any, *, batch_size: int, seq_len: int, seed: int = 0,
               pad_id: int = 0, mode: str = "pad", length_multiple: int = 8,
               process_index: int | None = None, process_count: int | None = None):
    if not examples:
      raise ValueError("InputPipeline: no examples (the stage produced an empty training set)")
    if mode not in PAD_MODES:
      raise ValueError(f"config.train.packing must be one of {PAD_MODES}, got {mode!r}")
    self.examples = list(examples)
    self.tokenizer = tokenizer
    self.batch_size, self.seq_len, self.seed, self.pad_id, self.mode = batch_size, seq_len, seed, pad_id, mode
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if batch_size % self.process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by the {self.process_count} hosts")
    self.buckets = bucket_lengths(seq_len, length_multiple) if mode == "bucket" else (seq_len,)
    self._encoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self.stats = {"truncated": 0, "no_target": 0, "rows": 0, "real_tokens": 0, "padded_tokens": 0}

  def __len__(self) -> int:
    return len(self.examples)

  @property
  def steps_per_epoch(self) -> float:
    return len(self.examples) / self.batch_size

  def _encode(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    hit = self._encoded.get(i)
    if hit is None:
      hit = self._encoded[i] = encode_example(self.tokenizer, self.examples[i])
    return hit

  @functools.lru_cache(maxsize=4)
  def _epoch_order(self, epoch: int) -> np.ndarray:
    n, B = len(self.examples), self.batch_size
    perm = np.random.default_rng([self.seed, epoch]).permutation(n)
    if self.mode == "pad":
      return perm
    # bucket: sort windows of BUCKET_WINDOW batches by length (characters: the same on every host, no tokenising),
    # then shuffle whole batches inside each window so lengths vary from step to step.
    rng = np.random.default_rng([self.seed, epoch, 1])
    lengths = np.asarray([len(self.examples[i].text) for i in perm])
    out = []
    w = B * BUCKET_WINDOW
    for start in range(0, n, w):
      idx = perm[start:start + w]
      idx = idx[np.argsort(lengths[start:start + w], kind="stable")]
      batches = [idx[j:j + B] for j in range(0, len(idx), B)]
      for k in rng.permutation(len(batches)):
        out.append(batches[k])
    return np.concatenate(out)

  def global_indices(self, step: int) -> np.ndarray:
    """Example indices of the global batch of `step` [B] (wrapping over epochs)."""
    n, B = len(self.examples), self.batch_size
    pos = np.arange(step * B, (step + 1) * B)
    epochs, offsets = pos // n, pos % n
    return np.asarray([self._epoch_order(int(e))[o] for e, o in zip(epochs, offsets)], np.int64)

  def batch(self, step: int, drop_wrapped: bool = False) -> dict[str, np.ndarray]:
    """Host-local rows of the global batch of `step`. drop_wrapped (evaluation passes): rows past the end of
    the first epoch are left empty (all-zero weights and mask) so each example counts exactly once."""
    idx = self.global_indices(step)
    T = self.seq_len
    if self.mode == "bucket":
      longest = max(min(len(self._encode(int(i))[0]), T + 1) for i in idx) - 1
      T = next(b for b in self.buckets if b >= longest)
    per_host = self.batch_size // self.process_count
    local = idx[self.process_index * per_host:(self.process_index + 1) * per_host]
    out = {"tokens": np.full((per_host, T), self.pad_id, np.int32), "targets": np.full((per_host, T), self.pad_id,
                                                                                          np.int32),
           "weights": np.zeros((per_host, T), np.float32), "attention_mask": np.zeros((per_host, T), np.int32)}
    first = self.process_index * per_host + step * self.batch_size
    for r, i in enumerate(local):
      if drop_wrapped and first + r >= len(self.examples):
        continue
      ids, mask = self._encode(int(i))
      if len(ids) > T + 1:
        self.stats["truncated"] += 1
        ids, mask = ids[-(T + 1):], mask[-(T + 1):]
      if not mask[1:].any():
        self.stats["no_target"] += 1
      L = len(ids) - 1
      if L < 1:
        continue
      out["tokens"][r, :L] = ids[:-1]
      out["targets"][r, :L] = ids[1:]
      out["weights"][r, :L] = mask[1:]
      out["attention_mask"][r, :L] = 1
      self.stats["real_tokens"] += L
    self.stats["rows"] += per_host
    self.stats["padded_tokens"] += per_host * T
    return out

  def summary(self) -> str:
    s = self.stats
    fill = s["real_tokens"] / max(s["padded_tokens"], 1)
    return (f"{len(self.examples)} examples, {s['rows']} rows served, {fill:.1%} of positions real; "
            f"{s['truncated']} rows truncated to seq_len={self.seq_len}, {s['no_target']} with no target token left")
