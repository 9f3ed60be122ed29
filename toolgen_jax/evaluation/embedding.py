"""Embedding-similarity baseline: cosine similarity between sentence embeddings of the query and of each tool doc.

The encoder is injected as `encode_fn(texts) -> [N, H]` so that any encoder can be compared; the default is the
embedded all-MiniLM-L6-v2 Flax encoder of `toolgen_jax.codebook.embed` (the same model ToolGen's dense baseline and
ToolWeaver's tool embeddings start from).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation.retriever import Candidates, top_k_from_scores

EncodeFn = Callable[[Sequence[str]], np.ndarray]


def minilm_encode_fn(batch_size: int = 64, max_len: int = 128) -> EncodeFn:
  """The default encoder: `toolgen_jax.codebook.embed.encode_texts` with the embedded MiniLM."""
  from toolgen_jax.codebook.embed import encode_texts  # late: loads JAX and the weights only when used

  return lambda texts: encode_texts(texts, batch_size=batch_size, max_len=max_len)


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class EmbeddingRetriever:
  """Cosine similarity to pre-encoded documents [N, H]. Implements the `Retriever` protocol."""

  name = "embedding"

  def __init__(self, documents: Sequence[str] | None = None, encode_fn: EncodeFn | None = None, *,
               doc_embeddings: np.ndarray | None = None):
    self.encode_fn = encode_fn if encode_fn is not None else minilm_encode_fn()
    if doc_embeddings is None:
      if not documents:
        raise ValueError("EmbeddingRetriever needs documents or doc_embeddings")
      doc_embeddings = self.encode_fn(list(documents))
    doc_embeddings = np.asarray(doc_embeddings)
    if doc_embeddings.ndim != 2 or (documents is not None and len(documents) != doc_embeddings.shape[0]):
      raise ValueError(f"doc_embeddings must be [N={len(documents or [])}, H], got {doc_embeddings.shape}")
    self.doc_embeddings = _normalize(doc_embeddings)
    self._query_cache: dict[str, np.ndarray] = {}  # the harness asks for the same queries once per setting

  def scores(self, texts: Sequence[str]) -> np.ndarray:
    """[Q, N] cosine similarities. Query embeddings are cached by text; new texts are encoded in one call."""
    if not texts:
      return np.zeros((0, self.doc_embeddings.shape[0]), np.float32)
    new = list(dict.fromkeys(t for t in texts if t not in self._query_cache))
    if new:
      self._query_cache.update(zip(new, _normalize(self.encode_fn(new))))
    q = np.stack([self._query_cache[t] for t in texts])
    return q @ self.doc_embeddings.T

  def rank(self, queries: Sequence[Query], k: int, candidates: Candidates) -> list[list[int]]:
    return top_k_from_scores(self.scores([q.text for q in queries]), k, candidates)
