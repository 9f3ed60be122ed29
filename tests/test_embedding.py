"""Embedding-similarity baseline against cosine similarity computed by hand (injected encoder)."""

import numpy as np
import pytest

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import embedding

DOCS = ["get weather forecast for a city", "weather alerts and weather warnings", "stock price quote",
        "city population statistics city data", "translate text between languages"]


def test_embedding_retriever_cosine():
  # A bag-of-letters "encoder": the reference is the cosine computed by hand.
  def encode(texts):
    return np.array([[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], np.float32) + 1e-3

  r = embedding.EmbeddingRetriever(DOCS, encode_fn=encode)
  s = r.scores(["weather city"])
  d, q = encode(DOCS), encode(["weather city"])
  want = (q @ d.T) / np.linalg.norm(q) / np.linalg.norm(d, axis=1)
  np.testing.assert_allclose(s, want, rtol=1e-5)
  assert r.rank([Query("a", "weather city", (0,))], 2, [None])[0] == list(np.argsort(-want[0])[:2])
  with pytest.raises(ValueError, match="doc_embeddings"):
    embedding.EmbeddingRetriever(DOCS[:2], encode_fn=encode, doc_embeddings=np.zeros((3, 4)))


def test_query_embeddings_are_cached():
  calls = []

  def encode(texts):
    calls.append(list(texts))
    return np.array([[len(t), t.count("e") + 1.0] for t in texts], np.float32)

  r = embedding.EmbeddingRetriever(DOCS, encode_fn=encode)
  first = r.scores(["weather", "stock", "weather"])
  second = r.scores(["stock", "city"])
  assert calls[1:] == [["weather", "stock"], ["city"]]  # calls[0] = the documents
  np.testing.assert_allclose(first[1], second[0])
