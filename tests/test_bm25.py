"""BM25 and embedding baselines against brute-force formulas; top-k selection against sorting."""

import numpy as np
import pytest

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import bm25, embedding, retriever

DOCS = ["get weather forecast for a city", "weather alerts and weather warnings", "stock price quote",
        "city population statistics city data", "translate text between languages", ""]


def _reference_bm25(docs, query, k1=1.5, b=0.75):
  """Okapi BM25 with the Lucene IDF, written out term by term."""
  toks = [bm25.words_analyzer(d) for d in docs]
  n, avgdl = len(docs), np.mean([len(t) for t in toks])
  out = np.zeros(n)
  for i, t in enumerate(toks):
    for w in set(bm25.words_analyzer(query)):
      df = sum(w in x for x in toks)
      if df:
        tf = t.count(w)
        out[i] += np.log(1 + (n - df + 0.5) / (df + 0.5)) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avgdl))
  return out


@pytest.mark.parametrize("query", ["weather in my city", "stock quote", "translate", "nothing matches here"])
def test_bm25_matches_formula(query):
  # bm25s's Lucene scorer drops the constant (k1 + 1) factor; rankings are unaffected.
  got = bm25.BM25Retriever(DOCS, k1=1.2, b=0.6).scores([query])[0]
  np.testing.assert_allclose(got * (1.2 + 1), _reference_bm25(DOCS, query, k1=1.2, b=0.6), rtol=1e-5, atol=1e-6)


def test_bm25_rank_and_candidates():
  r = bm25.BM25Retriever(DOCS)
  assert isinstance(r, retriever.Retriever)
  qs = [Query("a", "weather city", (0,)), Query("b", "city", (3,))]
  ranked = r.rank(qs, k=3, candidates=[None, (1, 2, 3)])
  assert ranked[0][:2] == [0, 1] or ranked[0][:2] == [0, 3]
  assert ranked[0][0] == 0
  assert ranked[1][0] == 3 and set(ranked[1]) <= {1, 2, 3}


def test_analyzers():
  assert bm25.words_analyzer("The Weather-API, v2!") == ["weather", "api", "v2"]
  assert bm25.nltk_like_analyzer("The Weather-API, v2!") == ["the", "weather", "-", "api", ",", "v2", "!"]


def test_top_k_from_scores_against_sort():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(6, 10)).astype(float)  # many ties
  cands = [None, (9, 1, 4), (), None, (0,), tuple(range(10))]
  got = retriever.top_k_from_scores(scores, 4, cands)
  for i, pool in enumerate(cands):
    ids = range(10) if pool is None else sorted(set(pool))
    want = sorted(ids, key=lambda t: (-scores[i, t], t))[:4]
    assert got[i] == want
  with pytest.raises(IndexError, match="outside"):
    retriever.top_k_from_scores(scores, 2, [(10,)] + [None] * 5)


def test_check_rankings():
  retriever.check_rankings([[1, 2], [3]], 2, 2, [None, (3, 4)])
  with pytest.raises(ValueError, match="repeats"):
    retriever.check_rankings([[1, 1]], 1, 2, [None])
  with pytest.raises(ValueError, match="outside its candidates"):
    retriever.check_rankings([[5]], 1, 2, [(3, 4)])


def test_embedding_retriever_cosine():
  # A bag-of-letters "encoder": the reference is the cosine computed by hand.
  def encode(texts):
    return np.array([[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], np.float32) + 1e-3

  r = embedding.EmbeddingRetriever(DOCS[:5], encode_fn=encode)
  s = r.scores(["weather city"])
  d, q = encode(DOCS[:5]), encode(["weather city"])
  want = (q @ d.T) / np.linalg.norm(q) / np.linalg.norm(d, axis=1)
  np.testing.assert_allclose(s, want, rtol=1e-5)
  assert r.rank([Query("a", "weather city", (0,))], 2, [None])[0] == list(np.argsort(-want[0])[:2])
  with pytest.raises(ValueError, match="doc_embeddings"):
    embedding.EmbeddingRetriever(DOCS[:2], encode_fn=encode, doc_embeddings=np.zeros((3, 4)))
