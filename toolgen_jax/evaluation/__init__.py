"""Evaluation: retrieval metrics, the BM25 / embedding baselines, the harness, perplexity and reports.

    from toolgen_jax.evaluation import harness, BM25Retriever
    result = harness.evaluate(BM25Retriever(docs), queries)   # result[setting][split][group]["ndcg@1"]

The embedding baseline and perplexity load their models (MiniLM, the LLM) only when used.
"""

from toolgen_jax.evaluation.bm25 import BM25Retriever
from toolgen_jax.evaluation.embedding import EmbeddingRetriever
from toolgen_jax.evaluation.harness import SETTINGS, evaluate, evaluate_methods
from toolgen_jax.evaluation.metrics import ndcg_at_k, recall_at_k, toolgen_ndcg_at_k
from toolgen_jax.evaluation.report import write_report
from toolgen_jax.evaluation.retriever import Retriever, top_k_from_scores

__all__ = ["BM25Retriever", "EmbeddingRetriever", "Retriever", "SETTINGS", "evaluate", "evaluate_methods",
           "ndcg_at_k", "recall_at_k", "toolgen_ndcg_at_k", "top_k_from_scores", "write_report"]
