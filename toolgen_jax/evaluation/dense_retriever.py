"""A supervised dense baseline: the MiniLM encoder fine-tuned on training (query, tool document) pairs.

What the papers call ToolRetriever (ToolBench's Sentence-BERT trained with in-batch negatives): a generative
retriever should be compared with a retriever trained on the same queries, not only with zero-shot BM25 / MiniLM.
Loss (InfoNCE with in-batch negatives, Karpukhin et al. 2020 Eq. 2; van den Oord et al. 2018):

  L = - 1/B sum_i log exp(<q_i, d_i> / tau) / sum_j exp(<q_i, d_j> / tau)

over L2-normalised mean-pooled embeddings (`bert.mean_pool_normalize`, as sentence-transformers). In-batch
documents of the query's own tool (the same tool drawn twice, or another relevant tool of a multi-tool query) are
not negatives: they are masked out of the denominator. The trained encoder scores like the zero-shot one
(`EmbeddingRetriever`, cosine to pre-encoded documents), so the harness treats both alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolgen_jax.codebook import bert
from toolgen_jax.codebook.embed import Encoder, load_encoder
from toolgen_jax.data.records import Query
from toolgen_jax.evaluation.embedding import EmbeddingRetriever


@dataclasses.dataclass(frozen=True)
class DenseConfig:
  """steps of batch_size pairs; AdamW peak learning_rate with warmup; tau = temperature; texts cut to max_len."""
  steps: int = 300
  batch_size: int = 32
  learning_rate: float = 3e-5
  warmup_fraction: float = 0.1
  weight_decay: float = 0.01
  temperature: float = 0.05
  max_len: int = 64
  seed: int = 0


def training_pairs(queries: Sequence[Query]) -> tuple[list[str], list[int]]:
  """(query texts, tool ids): one pair per (query, relevant tool)."""
  texts, tools = [], []
  for q in queries:
    for t in q.relevant:
      texts.append(q.text)
      tools.append(int(t))
  return texts, tools


def _pad(ids: Sequence[Sequence[int]], max_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full((len(ids), max_len), pad_id, np.int32)
  mask = np.zeros((len(ids), max_len), np.int32)
  for r, x in enumerate(ids):
    x = list(x)[:max_len]
    tokens[r, :len(x)] = x
    mask[r, :len(x)] = 1
  mask[:, 0] = 1  # an empty text still pools over one position
  return tokens, mask


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
  q_tok, q_mask = _pad(encoder.tokenize(query_texts, max_len), max_len, pad)
  d_tok, d_mask = _pad(encoder.tokenize(list(documents), max_len), max_len, pad)
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
  for i in range(cfg.steps):
    idx = rng.choice(len(query_texts), b, replace=False)
    tools = tool_ids[idx]
    same = jnp.asarray(tools[:, None] == tools[None, :])
    params, opt_state, loss = step(params, opt_state, q_tok[idx], q_mask[idx], d_tok[tools], d_mask[tools], same)
    losses.append(float(loss))
    if log and (i + 1) % max(1, cfg.steps // 10) == 0:
      log(f"dense retriever step {i + 1}/{cfg.steps}: loss {np.mean(losses[-10:]):.4f}")
  digest = hashlib.sha256(repr((cfg, len(query_texts), int(tool_ids.sum()))).encode()).hexdigest()[:8]
  tuned = dataclasses.replace(encoder, params=params, encoder_id=f"{encoder.encoder_id}-dense-{digest}")
  return tuned, losses


class DenseRetriever(EmbeddingRetriever):
  """The fine-tuned encoder as a `Retriever` (cosine to its own document embeddings)."""

  name = "dense"

  def __init__(self, documents: Sequence[str], encoder: Encoder, *, max_len: int = 128, batch_size: int = 64):
    self.encoder = encoder
    super().__init__(list(documents), lambda texts: encoder.encode(texts, batch_size=batch_size, max_len=max_len))


def train_dense_retriever(documents: Sequence[str], queries: Sequence[Query], *, encoder: Encoder | str | None = None,
                          cfg: DenseConfig = DenseConfig(), log=None) -> DenseRetriever:
  """Fine-tunes `encoder` (default: the embedded MiniLM) on the training queries' relevant tools' documents and
  returns the retriever over `documents` (tool id = row)."""
  enc = encoder if isinstance(encoder, Encoder) else load_encoder(encoder or "minilm")
  texts, tools = training_pairs(queries)
  tuned, _ = fine_tune(enc, texts, tools, documents, cfg=cfg, log=log)
  return DenseRetriever(documents, tuned, max_len=cfg.max_len)
