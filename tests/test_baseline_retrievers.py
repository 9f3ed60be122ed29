"""The baselines built from config for the pipeline and the evaluate CLI alike."""

import ml_collections
import numpy as np
import pytest

from toolgen_jax import config as config_lib
from toolgen_jax.codebook import embed
from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import baseline_retrievers as br

DOCS = ["weather forecast rain", "stock quote price", "recipe search cooking"]


def test_sentence_encoder_follows_the_encoder_config():
  c = config_lib.base_config()
  assert br.sentence_encoder(c) == "minilm"
  for kind, want in (("mpnet", "mpnet"), ("gist", "minilm")):  # gist vectors come from the LLM: MiniLM then
    c.encoder.kind = kind
    assert br.sentence_encoder(c) == want
  c.encoder.path = "/some/bert"
  assert br.sentence_encoder(c) == "/some/bert"


def test_from_config_builds_the_named_baselines_only(tmp_path, monkeypatch):
  c = config_lib.base_config()
  with pytest.raises(ValueError, match="unknown baselines \\['bm26'\\]"):
    br.from_config(["bm25", "bm26"], DOCS, c, tmp_path)
  assert set(br.from_config(["bm25"], DOCS, c, tmp_path)) == {"bm25"}
  assert not (tmp_path / "dense").exists()

  def fake(texts, *a, **k):  # bag of letters
    return np.array([[t.count(ch) for ch in "abcdefghijklmnopqrstuvwxyz"] for t in texts], np.float32) + 1e-3

  def no_encoding(*a, **k):
    raise AssertionError("the documents were encoded although their embeddings were given")

  monkeypatch.setattr(embed, "load_encoder", lambda *a, **k: None)
  monkeypatch.setattr(embed, "cached_encode", no_encoding)
  monkeypatch.setattr(embed, "encode_texts", fake)
  r = br.from_config(["embedding"], DOCS, c, tmp_path, doc_embeddings=fake(DOCS))["embedding"]
  q = [Query("q", "recipe cooking", (2,))]
  assert r.rank(q, 1, [None]) == [[2]]


def test_dense_from_config_reads_the_eval_settings(tmp_path, monkeypatch):
  from toolgen_jax.evaluation import dense_retriever as dr
  c = config_lib.base_config()
  c.eval.dense_steps, c.eval.dense_batch_size, c.eval.dense_max_len = 7, 4, 32
  c.eval.dense_learning_rate, c.eval.dense_temperature, c.seed = 1e-4, 0.1, 3
  got = {}
  monkeypatch.setattr(dr, "load_or_train", lambda docs, queries, wd, **k: got.update(k, queries=queries) or "r")
  qs = [Query("a", "rain", (0,), split="train")]
  assert br.from_config(["dense"], DOCS, c, tmp_path, queries=qs, held_out_texts=["x"])["dense"] == "r"
  assert got["cfg"] == dr.DenseConfig(steps=7, batch_size=4, learning_rate=1e-4, temperature=0.1, max_len=32, seed=3)
  assert got["queries"] == qs and got["held_out_texts"] == ["x"] and got["encoder"] == "minilm"


def test_bad_dense_settings_are_one_line_errors():
  c = config_lib.base_config()
  c.eval.baselines = ("bm25", "dens")
  c.eval.dense_steps, c.eval.dense_batch_size, c.eval.dense_temperature = 0, 1, 0.0
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  msg = str(e.value)
  assert "eval.baselines member 'dens'" in msg and "(did you mean 'dense'?)" in msg
  assert "eval.dense_steps=0 must be a number >= 1" in msg and "eval.dense_batch_size=1 must be a number >= 2" in msg
  assert "eval.dense_temperature=0.0 must be a number > 0" in msg and "\n" not in msg
  c = config_lib.base_config()
  c.eval.baselines = ("bm25", "embedding", "dense")
  assert config_lib.validate(c) is c
