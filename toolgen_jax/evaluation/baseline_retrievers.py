"""The retrievers a generative model is scored next to, built from config (`eval.baselines`):

  bm25       BM25 over the tool documents (`bm25.from_config`)
  embedding  zero-shot sentence-encoder similarity (MiniLM unless `encoder.kind`/`path` say otherwise): cosine of the
             query's and each document's embedding (`embedding.EmbeddingRetriever`)
  dense      the same encoder fine-tuned on the training split's (query, tool document) pairs with in-batch
             negatives, ToolBench's ToolRetriever (`dense_retriever.load_or_train`, cached in WORKDIR/dense)

The pipeline and `python -m toolgen_jax.evaluate` both build them here, so a baseline scores the same in both.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import numpy as np

from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import bm25

BASELINES = ("bm25", "embedding", "dense")


def sentence_encoder(config) -> str:
  """The encoder the similarity baselines use: `encoder.path`, else `encoder.kind` when it is a sentence encoder
  (the quantiser's gist embeddings come from the LLM: MiniLM then)."""
  kind = str(config.encoder.kind)
  return str(config.encoder.path or (kind if kind in ("minilm", "mpnet") else "minilm"))


def from_config(names: Sequence[str], documents: Sequence[str], config, workdir: str | pathlib.Path, *,
                queries: Sequence[Query] = (), held_out_texts: Sequence[str] = (),
                doc_embeddings: np.ndarray | None = None, log: Callable[[str], None] | None = print) -> dict:
  """{name: Retriever} for each of `names` (a subset of BASELINES) over `documents` (tool id = row).

  queries: every query record the run knows (the dense baseline trains on their training split only and drops any
  whose text is another query's or in `held_out_texts`). doc_embeddings: the documents' embeddings by
  `sentence_encoder(config)` when the caller has them (else encoded once, cached in `workdir/embeddings`)."""
  unknown = sorted(set(names) - set(BASELINES))
  if unknown:
    raise ValueError(f"unknown baselines {unknown}; available: {', '.join(BASELINES)}")
  documents = list(documents)
  out = {}
  if "bm25" in names:
    out["bm25"] = bm25.from_config(documents, config.eval)
  kw = dict(batch_size=int(config.encoder.batch_size), max_len=int(config.encoder.max_len))
  if "embedding" in names:
    from toolgen_jax.codebook import embed
    from toolgen_jax.evaluation.embedding import EmbeddingRetriever
    enc = embed.load_encoder(sentence_encoder(config))
    if doc_embeddings is None:
      doc_embeddings = embed.cached_encode(documents, workdir, enc, **kw)
    out["embedding"] = EmbeddingRetriever(documents, lambda texts: embed.encode_texts(texts, enc, **kw),
                                          doc_embeddings=doc_embeddings)
  if "dense" in names:
    from toolgen_jax.evaluation import dense_retriever
    out["dense"] = dense_retriever.load_or_train(
        documents, queries, workdir, encoder=sentence_encoder(config), held_out_texts=held_out_texts,
        cfg=dense_retriever.DenseConfig.from_config(config.eval, seed=int(config.seed)),
        batch_size=kw["batch_size"], log=log)
  return out
