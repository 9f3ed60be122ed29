"""Toolscaler's post-guided refinement (pipeline.refine, training/refinement.py) on a tiny model: a round re-embeds
the tools in the space the codebook was built from, so a gist codebook keeps its V positions x L levels."""

import importlib.util
import pathlib

import numpy as np
import pytest

from toolgen_jax import pipeline
from toolgen_jax.artifact import Workdir
from toolgen_jax.code_vocab import token_members, token_string, token_strings
from toolgen_jax.codebook import codebook as cb_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_gist_config():
  spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.unlock()
  c.data.max_tools = 24
  c.encoder.kind = "gist"
  c.encoder.gist_tokens = 2
  c.encoder.gist_steps = 2
  c.encoder.max_len = 48
  c.codebook.method = "residual_kmeans"
  c.codebook.levels = 2
  c.codebook.size = 4
  c.codebook.pca_dim = 4
  c.vocab.init = "reframe"  # Toolscaler's: gist outputs are already in the model's space
  return c


@pytest.mark.slow  # trains a (2-step) gist encoder and builds a codebook: ~100 s on a loaded 2-core CPU
def test_refinement_keeps_the_code_length_of_a_gist_codebook(tmp_path):
  """2 gist positions x 2 levels = 4 code positions before and after a round; each of T0..T3 is used by some tool
  after it (the [N, D] re-embedding this replaces coded only T0/T1); the round's codebook says how it embedded; with
  no training in between, the round reproduces the codes (same embedding space as the first codebook)."""
  config = _tiny_gist_config()
  wd = Workdir(tmp_path)
  ds = pipeline.load_corpus(config, wd)
  emb = pipeline.load_embeddings(config, wd, ds)
  assert emb.ndim == 3 and emb.shape[1] == 2
  cb = pipeline.load_codebook(config, wd, ds, emb)
  assert cb.num_levels == 4
  model = pipeline.build_model(config, wd, ds, cb)
  table = np.asarray(model.params["embed"]["embedding"])
  c = int(cb.codes[0, 2])  # the first level of gist position 1 starts at its member tools' mean gist output
  want = emb[cb.codes[:len(emb), 2] == c, 1].mean(0)
  row = table[model.tokenizer.token_to_id(token_string("codes", 2, c))]
  np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5)
  seen = []

  def train(params, codebook, m, r):  # the round's training step is not what this test is about
    seen.append(codebook.codes.shape[1])
    return params

  _, new, model2 = pipeline.refine(config, wd, ds, model.params, cb, model, rounds=1, train=train)
  assert seen == [4] and new.num_levels == 4
  assert new.encoder["kind"] == "gist_tuned"
  # Untrained in between, the tuned LLM is the backbone: re-gisting reproduces the embeddings, hence the codes.
  np.testing.assert_array_equal(new.codes, cb.codes)
  base = 4 * config.codebook.size  # T0..T3 tokens, a collision suffix level may add more
  assert token_strings(new)[:base] == token_strings(cb)[:base]
  members = token_members(new)
  for level in range(4):
    assert any(members[level * config.codebook.size + c] for c in range(config.codebook.size)), level
  np.testing.assert_array_equal(cb_lib.load(tmp_path / "codebook").codes, new.codes)
  assert model2.tokenizer.token_to_id("<T3_0>") is not None
