"""A supervised dense baseline: the MiniLM encoder fine-tuned on training (query, tool document) pairs.

What the papers call ToolRetriever (ToolBench's Sentence-BERT trained with in-batch negatives): a generative
retriever should be compared with a retriever trained on the same queries, not only with zero-shot BM25 / MiniLM.
Loss (InfoNCE with in-batch negatives, Karpukhin et al. 2020 Eq. 2; van den Oord et al. 2018):

  L = - 1/B sum_i log exp(<q_i, d_i> / tau) / sum_j exp(<q_i, d_j> / tau)

over L2-normalised mean-pooled embeddings (`bert.mean_pool_normalize`, as sentence-transformers). In-batch
documents of the query's own tool (the same tool drawn twice, or another relevant tool of a multi-tool query) are
not negatives: they are masked out of the denominator. The trained encoder scores like the zero-shot one
(`EmbeddingRetriever`, cosine to pre-encoded documents), so the harness treats both alike.

Leakage: pairs come from the training split only, and a training query whose text (case and spacing folded) is also
the text of a held-out query is dropped (`training_pairs`). The fine-tuned weights are cached in
`WORKDIR/dense/<key>/` keyed by the encoder, the pairs (query text, tool document) and the settings
(`load_or_train`), so a re-run or `python -m toolgen_jax.evaluate` on the same workdir loads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolgen_jax.codebook import bert
from toolgen_jax.codebook.embed import Encoder, load_encoder
from toolgen_jax.data.dataset import TRAIN_SPLITS
from toolgen_jax.data.records import Query
from toolgen_jax.evaluation.embedding import EmbeddingRetriever


@dataclasses.dataclass(frozen=True)
class DenseConfig:
  """steps of batch_size pairs; AdamW peak learning_rate with warmup; tau = temperature; texts cut to max_len
  tokens in training and when encoding."""
  steps: int = 300
  batch_size: int = 32
  learning_rate: float = 3e-5
  warmup_fraction: float = 0.1
  weight_decay: float = 0.01
  temperature: float = 0.05
  max_len: int = 64
  seed: int = 0

  @classmethod
  def from_config(cls, eval_config, seed: int = 0) -> "DenseConfig":
    """`config.eval`'s dense_* fields."""
    return cls(steps=int(eval_config.dense_steps), batch_size=int(eval_config.dense_batch_size),
               learning_rate=float(eval_config.dense_learning_rate), temperature=float(eval_config.dense_temperature),
               max_len=int(eval_config.dense_max_len), seed=int(seed))


def _fold(text: str) -> str:
  return " ".join(text.lower().split())


def training_pairs(queries: Sequence[Query], held_out_texts: Sequence[str] = ()) -> tuple[list[str], list[int], int]:
  """(query texts, tool ids, dropped): one pair per (training-split query, relevant tool).

  Only queries whose split is in `data.TRAIN_SPLITS` give pairs; one whose text (case and spacing folded) equals the
  text of any other query in `queries`, or of `held_out_texts`, is dropped and counted (`dropped` queries): a test
  query must not reach the baseline's training even as a duplicate training record."""
  held = {_fold(q.text) for q in queries if q.split not in TRAIN_SPLITS} | {_fold(t) for t in held_out_texts}
  texts, tools, dropped = [], [], 0
  for q in queries:
    if q.split not in TRAIN_SPLITS or not q.relevant:
      continue
    if _fold(q.text) in held:
      dropped += 1
      continue
    for t in q.relevant:
      texts.append(q.text)
      tools.append(int(t))
  return texts, tools, dropped


def _pad(ids: Sequence[Sequence[int]], max_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """[N, max_len] tokens and mask, and [N] lengths."""
  tokens = np.full((len(ids), max_len), pad_id, np.int32)
  mask = np.zeros((len(ids), max_len), np.int32)
  for r, x in enumerate(ids):
    x = list(x)[:max_len]
    tokens[r, :len(x)] = x
    mask[r, :len(x)] = 1
  mask[:, 0] = 1  # an empty text still pools over one position
  return tokens, mask, mask.sum(1)


def _bucket(length: int, max_len: int) -> int:
  """A batch is cut to the next power of two >= its longest text (at least 8, at most max_len): a few compiled
  shapes, and short queries do not pay for max_len positions."""
  return min(max_len, 1 << max(3, (int(length) - 1).bit_length()))


def contrastive_loss(q: jax.Array, d: jax.Array, same_tool: jax.Array, temperature: float) -> jax.Array:
  """InfoNCE with in-batch negatives: q, d [B, H] L2-normalised, same_tool [B, B] bool (j is i's tool too)."""
  logits = (q @ d.T) / temperature
  eye = jnp.eye(q.shape[0], dtype=bool)
  logits = jnp.where(same_tool & ~eye, -jnp.inf, logits)  # other copies of the positive are not negatives
  return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))


def fine_tune(encoder: Encoder, query_texts: Sequence[str], tool_ids: Sequence[int], documents: Sequence[str], *,
              cfg: DenseConfig = DenseConfig(), log=None) -> tuple[Encoder, list[float]]:
  """Trains the whole encoder on (query, documents[tool]) pairs; returns (the fine-tuned `Encoder`, losses)."""
  if not query_texts:
    raise ValueError("the dense baseline needs training queries with relevant tools")
  tool_ids = np.asarray(tool_ids)
  pad = encoder.config.pad_token_id
  max_len = min(cfg.max_len, encoder.config.max_position_embeddings)
  q_tok, q_mask, q_len = _pad(encoder.tokenize(query_texts, max_len), max_len, pad)
  d_tok, d_mask, d_len = _pad(encoder.tokenize(list(documents), max_len), max_len, pad)
  module = bert.BertEncoder(encoder.config)
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, max(1, int(cfg.warmup_fraction * cfg.steps)),
                                                max(cfg.steps, 2))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=cfg.weight_decay))
  params = encoder.params
  opt_state = tx.init(params)

  def embed(p, tokens, mask):
    return bert.mean_pool_normalize(module.apply(p, tokens, mask), mask)

  @jax.jit
  def step(p, s, qt, qm, dt, dm, same):
    def loss_fn(p):
      return contrastive_loss(embed(p, qt, qm), embed(p, dt, dm), same, cfg.temperature)
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(cfg.seed)
  b = min(cfg.batch_size, len(query_texts))
  losses = []
  t0 = time.perf_counter()
  for i in range(cfg.steps):
    idx = rng.choice(len(query_texts), b, replace=False)
    tools = tool_ids[idx]
    same = jnp.asarray(tools[:, None] == tools[None, :])
    tq, td = _bucket(q_len[idx].max(), max_len), _bucket(d_len[tools].max(), max_len)
    params, opt_state, loss = step(params, opt_state, q_tok[idx, :tq], q_mask[idx, :tq], d_tok[tools, :td],
                                   d_mask[tools, :td], same)
    losses.append(float(loss))
    if log and ((i + 1) % max(1, cfg.steps // 10) == 0 or i == 0):
      el = time.perf_counter() - t0
      log(f"[dense] step {i + 1}/{cfg.steps}: loss {np.mean(losses[-10:]):.4f}, {el:.0f}s "
          f"(~{el / (i + 1) * (cfg.steps - i - 1):.0f}s left)")
  key = cache_key(encoder.encoder_id, cfg, query_texts, tool_ids, documents)
  return _tuned(encoder, params, key), losses


def cache_key(encoder_id: str, cfg: DenseConfig, query_texts: Sequence[str], tool_ids: Sequence[int],
              documents: Sequence[str]) -> str:
  """What the fine-tuned weights depend on: the base encoder, the settings and each pair's (query, document) text
  (not the tool ids: a corpus grown by new tools keeps its pairs, and its key)."""
  h = hashlib.sha256(repr((encoder_id, dataclasses.astuple(cfg))).encode())
  for text, t in zip(query_texts, tool_ids):
    h.update(text.encode("utf-8") + b"\x00" + documents[int(t)].encode("utf-8") + b"\x01")
  return h.hexdigest()[:16]


def _tuned(encoder: Encoder, params, key: str) -> Encoder:
  return dataclasses.replace(encoder, params=params, encoder_id=f"{encoder.encoder_id}-dense-{key}")


class DenseRetriever(EmbeddingRetriever):
  """The fine-tuned encoder as a `Retriever` (cosine to its own document embeddings)."""

  name = "dense"

  def __init__(self, documents: Sequence[str], encoder: Encoder, *, max_len: int = 128, batch_size: int = 64,
               doc_embeddings: np.ndarray | None = None):
    self.encoder = encoder
    super().__init__(list(documents), lambda texts: encoder.encode(texts, batch_size=batch_size, max_len=max_len),
                     doc_embeddings=doc_embeddings)


def train_dense_retriever(documents: Sequence[str], queries: Sequence[Query], *, encoder: Encoder | str | None = None,
                          cfg: DenseConfig = DenseConfig(), log=None) -> DenseRetriever:
  """Fine-tunes `encoder` (default: the embedded MiniLM) on the training queries' relevant tools' documents and
  returns the retriever over `documents` (tool id = row). No cache: `load_or_train` is the cached form."""
  enc = encoder if isinstance(encoder, Encoder) else load_encoder(encoder or "minilm")
  texts, tools, _ = training_pairs(queries)
  tuned, _ = fine_tune(enc, texts, tools, documents, cfg=cfg, log=log)
  return DenseRetriever(documents, tuned, max_len=cfg.max_len)


CACHE_DIR = "dense"  # WORKDIR/dense/<cache_key>/: params.msgpack, meta.json, embeddings/ (the documents, encoded)


def load_or_train(documents: Sequence[str], queries: Sequence[Query], workdir: str | os.PathLike, *,
                  encoder: Encoder | str | None = None, cfg: DenseConfig = DenseConfig(),
                  held_out_texts: Sequence[str] = (), batch_size: int = 64,
                  log: Callable[[str], None] | None = print) -> DenseRetriever:
  """The dense baseline over `documents`, trained on `training_pairs(queries, held_out_texts)`, its weights and
  document embeddings cached in `workdir/dense/<key>/` (loaded, not retrained, when the key matches)."""
  from flax import serialization
  from toolgen_jax.codebook import embed

  say = log or (lambda _: None)
  enc = encoder if isinstance(encoder, Encoder) else embed.load_encoder(encoder or "minilm")
  texts, tools, dropped = training_pairs(queries, held_out_texts)
  if not texts:
    raise ValueError(f"the dense baseline needs training-split queries with relevant tools; none left "
                     f"({dropped} dropped as held-out texts)")
  key = cache_key(enc.encoder_id, cfg, texts, tools, documents)
  d = pathlib.Path(workdir) / CACHE_DIR / key
  if (d / "params.msgpack").exists() and (d / "meta.json").exists():
    tuned = _tuned(enc, serialization.from_bytes(enc.params, (d / "params.msgpack").read_bytes()), key)
    say(f"[dense] loaded the fine-tuned encoder from {d} ({json.loads((d / 'meta.json').read_text())['pairs']} "
        f"training pairs)")
  else:
    say(f"[dense] fine-tuning {enc.encoder_id} on {len(texts)} (training query, tool) pairs of "
        f"{len(set(texts))} queries ({dropped} training queries dropped: their text is a held-out query's), "
        f"{cfg.steps} steps x {cfg.batch_size}, max_len {cfg.max_len} -> {d}")
    t0 = time.perf_counter()
    tuned, losses = fine_tune(enc, texts, tools, documents, cfg=cfg, log=say)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "params.msgpack.tmp"
    tmp.write_bytes(serialization.to_bytes(tuned.params))
    os.replace(tmp, d / "params.msgpack")
    (d / "meta.json").write_text(json.dumps({
        "encoder_id": enc.encoder_id, "config": dataclasses.asdict(cfg), "pairs": len(texts),
        "queries": len(set(texts)), "dropped_held_out": dropped, "seconds": round(time.perf_counter() - t0, 1),
        "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:]))}, indent=2))
    say(f"[dense] trained in {time.perf_counter() - t0:.0f}s: loss {np.mean(losses[:10]):.3f} -> "
        f"{np.mean(losses[-10:]):.3f}")
  docs = embed.cached_encode(list(documents), d, tuned, batch_size=batch_size, max_len=cfg.max_len,
                             progress=log is not None)
  return DenseRetriever(documents, tuned, max_len=cfg.max_len, batch_size=batch_size, doc_embeddings=docs)
