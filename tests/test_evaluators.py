"""Evaluators from config: the dev-split NDCG function `fit` calls, scoring the params it is handed."""

import types

import jax
import numpy as np
import pytest

from _training_helpers import ByteChatTokenizer, code_tokens, toy_codebook
from toolgen_jax import config as config_lib
from toolgen_jax.data.records import Query
from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.evaluation import evaluators
from toolgen_jax.models import llama


def _setup():
  tok = ByteChatTokenizer(code_tokens(2, 8))
  cb = toy_codebook(6, 2, 8)
  codes = np.array([[int(t.split("_")[1][:-1]) for t in cb[i]] for i in range(6)])
  table = np.array([[tok.added[f"<T{l}_{c}>"] for c in range(8)] for l in range(2)])
  trie = trie_lib.Trie.build(codes, code_tokens=table, num_codes=8)
  mc = llama.LlamaConfig.tiny(vocab_size=tok.vocab_size)
  return tok, trie, mc, llama.init_params(mc, jax.random.PRNGKey(0))


def test_ndcg_eval_fn_scores_the_current_params_through_the_trie():
  tok, trie, mc, params = _setup()
  qs = [Query(id=str(i), text=f"query {i}", relevant=(i,)) for i in range(4)]
  fn = evaluators.ndcg_eval_fn(mc, tok, trie, qs, ks=(1, 5), batch_size=4)
  out = fn(types.SimpleNamespace(params=params))
  assert set(out) == {"ndcg@1", "ndcg@5", "recall@1", "recall@5"}
  assert all(0.0 <= v <= 1.0 for v in out.values())
  # One relevant tool per query: NDCG@1 is the hit rate at 1, which cannot exceed Recall@5.
  assert out["recall@5"] >= out["ndcg@1"] and out["recall@1"] == pytest.approx(out["ndcg@1"])


def test_from_config_needs_dev_queries_and_builds_per_stage():
  tok, trie, mc, params = _setup()
  c = config_lib.base_config()
  ds = types.SimpleNamespace(queries=[Query(id="a", text="x", relevant=(0,), split="train")])
  assert evaluators.from_config(c, ds, lambda cb, t: trie) is None  # eval_every = 0: nothing to build
  c.train.eval_every = 5
  with pytest.raises(ValueError, match="dev_fraction"):
    evaluators.from_config(c, ds, lambda cb, t: trie)
  ds.queries.append(Query(id="b", text="query 1", relevant=(1,), split="dev"))
  seen = []
  make = evaluators.from_config(c, ds, lambda cb, t: seen.append(cb) or trie)
  fn = make("codebook-of-this-stage", types.SimpleNamespace(config=mc, tokenizer=tok))
  assert seen == ["codebook-of-this-stage"]
  assert set(fn(types.SimpleNamespace(params=params))) >= {"ndcg@1", "recall@5"}
