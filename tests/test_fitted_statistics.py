"""Leakage audit of everything fitted on data before training (issue #16): the tool documents, their embeddings,
the codebook (RQ-VAE with its input standardisation and collaborative graph; PCA + residual k-means) come out
bit-identical when every test query's text and labels are replaced, so no test label reaches a fitted statistic.
There are no pseudo-queries in this code base (nothing generates queries from documents)."""

import dataclasses

import numpy as np
import pytest

from toolgen_jax import pipeline
from toolgen_jax.artifact import Workdir
from toolgen_jax.config import base_config
from toolgen_jax.data import fit_cooccurrence, from_config


def _config(method):
  c = base_config()
  c.data.source, c.data.max_tools, c.data.max_queries, c.data.test_fraction = "bfcl", 40, 120, 0.3
  c.codebook.method, c.codebook.levels, c.codebook.size = method, 2, 8
  c.codebook.rqvae_hidden, c.codebook.code_dim, c.codebook.steps, c.codebook.batch_size = (32,), 8, 30, 64
  c.codebook.pca_dim = 4
  c.train.stages = ("memorization", "retrieval")
  return c


def _poisoned(ds):
  """Every test query rewritten: new text, and all of them relevant to the same four tools (a clique that would
  add edges to the co-occurrence graph, and so move the collaborative codes, if test labels were read)."""
  qs = [dataclasses.replace(q, text="leak " * 8, relevant=(0, 1, 2, 3)) if q.split == "test" else q
        for q in ds.queries]
  return fit_cooccurrence(dataclasses.replace(ds, queries=qs))


# RQ-VAE training dominates the fast tier's time (the heaviest test): slow tier; the fast tier keeps the PCA +
# residual k-means audit of the same pipeline steps.
@pytest.mark.parametrize("method", [pytest.param("rqvae", marks=pytest.mark.slow), "residual_kmeans"])
def test_fitted_statistics_read_no_test_query_labels(method, tmp_path):
  cfg = _config(method)
  ds = from_config(cfg.data, seed=0)
  assert sum(q.split == "test" for q in ds.queries) > 0
  bad = _poisoned(ds)
  assert [q.relevant for q in bad.queries] != [q.relevant for q in ds.queries]
  out = []
  for name, d in (("clean", ds), ("poisoned", bad)):
    wd = Workdir(tmp_path / name)
    docs = pipeline.tool_documents(cfg, d)
    emb = pipeline.sentence_embeddings(cfg, wd, d)
    cb = pipeline.load_codebook(cfg, wd, d, emb)
    out.append((docs, emb, cb))
  (docs_a, emb_a, cb_a), (docs_b, emb_b, cb_b) = out
  assert docs_a == docs_b
  np.testing.assert_array_equal(emb_a, emb_b)
  np.testing.assert_array_equal(cb_a.codes, cb_b.codes)
  assert cb_a.quantizer.keys() == cb_b.quantizer.keys() and cb_a.quantizer
  for k in cb_a.quantizer:  # RQ-VAE: weights, codebooks, duals, input standardisation ('norm/...'); PCA + centroids
    np.testing.assert_array_equal(cb_a.quantizer[k], cb_b.quantizer[k], err_msg=k)
  if method == "rqvae":
    assert any(k.startswith("norm") or "/norm" in k for k in cb_a.quantizer)  # the standardisation is covered
    # the graph the collaborative loss read is the training one: the poisoned clique is not in it
    np.testing.assert_array_equal(ds.cooccurrence.edges()[0], bad.cooccurrence.edges()[0])
