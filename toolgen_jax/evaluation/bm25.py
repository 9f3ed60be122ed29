"""BM25 baseline (Robertson & Zaragoza 2009) over tool documents, scored with the maintained `bm25s` library.

score(q, d) = sum_{t in q} IDF(t) * tf(t, d) (k1 + 1) / (tf(t, d) + k1 (1 - b + b |d| / avgdl))

`bm25s` defaults to the Lucene IDF, log(1 + (N - n_t + 0.5) / (n_t + 0.5)), which is never negative; the
`robertson` method is the Okapi IDF without the +1 (terms in more than half the documents score 0 in bm25s, where
`rank_bm25.BM25Okapi`, which ToolGen uses, floors them at 0.25 x the mean IDF). The tokenizer is ours, not
bm25s's, so that queries and documents go through the same function and the analyser is one named choice:

  "words":   lower-case, `\\w\\w+` tokens, English stop words removed (bm25s's default analyser)
  "nltk":    lower-case, words and punctuation runs kept, no stop words: close to ToolGen's `word_tokenize`

and `stemmer="english"` adds Snowball stemming (PyStemmer, the stemmer bm25s documents; optional dependency).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import bm25s
import bm25s.stopwords
import numpy as np

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation.retriever import Candidates, top_k_from_scores

_WORDS = re.compile(r"(?u)\b\w\w+\b")
_NLTK_LIKE = re.compile(r"(?u)\w+|[^\w\s]+")
_STOP = frozenset(bm25s.stopwords.STOPWORDS_EN)


def words_analyzer(text: str) -> list[str]:
  return [t for t in _WORDS.findall(text.lower()) if t not in _STOP]


def nltk_like_analyzer(text: str) -> list[str]:
  return _NLTK_LIKE.findall(text.lower())


ANALYZERS: dict[str, Callable[[str], list[str]]] = {"words": words_analyzer, "nltk": nltk_like_analyzer}


def make_analyzer(analyzer: str | Callable[[str], list[str]] = "words",
                  stemmer: str | None = None) -> Callable[[str], list[str]]:
  """The named (or given) analyzer, followed by a Snowball stemmer for `stemmer` (a language name) if set."""
  base = ANALYZERS[analyzer] if isinstance(analyzer, str) else analyzer
  if not stemmer:
    return base
  try:
    import Stemmer  # PyStemmer
  except ImportError:
    raise ImportError("stemmer= needs PyStemmer: pip install PyStemmer (or toolgen_jax[stem])") from None
  stem = Stemmer.Stemmer(stemmer).stemWords
  return lambda text: stem(base(text))


class BM25Retriever:
  """BM25 over `documents[i]` = the text of tool id i. Implements the `Retriever` protocol."""

  name = "bm25"

  def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75, method: str = "lucene",
               analyzer: str | Callable[[str], list[str]] = "words", stemmer: str | None = None):
    if not documents:
      raise ValueError("BM25Retriever needs at least one document")
    self.analyze = make_analyzer(analyzer, stemmer)
    self.n_docs = len(documents)
    self._bm25 = bm25s.BM25(k1=k1, b=b, method=method)
    self._bm25.index([self.analyze(d) for d in documents], show_progress=False)  # an empty doc keeps its row

  def scores(self, texts: Sequence[str]) -> np.ndarray:
    """[Q, N] float32 BM25 scores of each text against every document; unknown query terms score 0."""
    out = np.zeros((len(texts), self.n_docs), np.float32)
    vocab = self._bm25.vocab_dict
    for i, text in enumerate(texts):
      toks = [t for t in self.analyze(text) if t and t in vocab]
      if toks:
        out[i] = self._bm25.get_scores(toks)
    return out

  def rank(self, queries: Sequence[Query], k: int, candidates: Candidates) -> list[list[int]]:
    return top_k_from_scores(self.scores([q.text for q in queries]), k, candidates)


def from_config(documents: list[str], eval_config, ids: Sequence[int] | None = None):
  """BM25 over `documents` with `config.eval`'s k1, b, IDF method and analyser (or over documents[ids] only,
  answering in corpus ids)."""
  from toolgen_jax.evaluation.retriever import SubsetRetriever
  kw = dict(k1=eval_config.bm25_k1, b=eval_config.bm25_b, method=eval_config.bm25_method,
            analyzer=eval_config.bm25_analyzer)
  if ids is None:
    return BM25Retriever(documents, **kw)
  return SubsetRetriever(BM25Retriever([documents[i] for i in ids], **kw), ids)
