"""BM25 baseline against the BM25 formula written out term by term."""

import numpy as np
import pytest

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import bm25, retriever

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


def test_stemmer_option():
  pytest.importorskip("Stemmer")
  docs = ["daily weather forecasts", "stock quotes"]
  assert bm25.BM25Retriever(docs).scores(["forecast"])[0, 0] == 0.0  # no stemming: no match
  assert bm25.BM25Retriever(docs, stemmer="english").scores(["forecast"])[0, 0] > 0.0
