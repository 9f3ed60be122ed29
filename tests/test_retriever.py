"""Top-k selection against sorting; validation of retriever answers."""

import numpy as np
import pytest

from toolgen_jax.evaluation import retriever


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
