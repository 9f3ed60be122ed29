"""Vocabulary extension: bit-identical old rows, each init rule against a hand computation, tied/untied, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.models import llama, vocab

import _model_refs

V = 49152


def _model(tied, seed=0):
  config = llama.LlamaConfig.tiny(vocab_size=V, tie_embeddings=tied)
  return config, llama.init_params(config, jax.random.key(seed))


def code_tokens(levels, size):
  from _training_helpers import code_tokens as helper
  return helper(levels, size)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", ["random", "subword_mean", "codebook"])
def test_old_rows_bit_identical_and_padding(tied, init):
  config, params = _model(tied)
  tok = _model_refs.smollm2_tokenizer()
  new = code_tokens(2, 5) + ["<tool_call>"]
  kw = {}
  if init == "codebook":
    kw = dict(token_members=[[i % 4] for i in range(len(new))], tool_vectors=np.ones((4, config.hidden_size)))
  p2, c2, tok2 = vocab.extend_vocab(params, config, tok, new, init=init, pad_to_multiple=128, **kw)
  assert len(tok2) == V + len(new)
  assert c2.vocab_size == V + 128 and c2.vocab_size % 128 == 0
  e_old, e_new = np.asarray(params["embed"]["embedding"]), np.asarray(p2["embed"]["embedding"])
  assert e_new.shape == (V + 128, config.hidden_size)
  assert np.array_equal(e_new[:V], e_old)  # bit-identical
  assert not np.any(e_new[V + len(new):])   # padding rows are zero
  assert np.all(np.abs(e_new[V:V + len(new)]).sum(1) > 0)
  if not tied:
    h_old, h_new = np.asarray(params["lm_head"]["kernel"]), np.asarray(p2["lm_head"]["kernel"])
    assert h_new.shape == (config.hidden_size, V + 128) and np.array_equal(h_new[:, :V], h_old)
  # other params are the same objects; old-vocabulary logits unchanged for a prompt of old tokens
  assert p2["layers"] is params["layers"]
  tokens = jnp.asarray([[5, 17, 300, 4000]])
  l1, _ = llama.forward(params, config, tokens)
  l2, _ = llama.forward(p2, c2, tokens)
  np.testing.assert_array_equal(np.asarray(l2)[..., :V], np.asarray(l1))
  assert vocab.valid_token_mask(c2, tok2).sum() == V + len(new)


def test_subword_mean_is_mean_of_subword_rows():
  config, params = _model(tied=False)
  tok = _model_refs.smollm2_tokenizer()
  texts = ["get weather forecast", "send email"]
  sub = [tok.encode(t) for t in texts]
  p2, _, tok2 = vocab.extend_vocab(params, config, tok, ["<tool_a>", "<tool_b>"], init="subword_mean",
                                   token_texts=texts)
  e = np.asarray(params["embed"]["embedding"])
  h = np.asarray(params["lm_head"]["kernel"]).T
  for j, ids in enumerate(sub):
    row = tok2.token_to_id(["<tool_a>", "<tool_b>"][j])
    np.testing.assert_allclose(np.asarray(p2["embed"]["embedding"])[row], e[ids].mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(p2["lm_head"]["kernel"])[:, row], h[ids].mean(0), rtol=1e-6)


def test_codebook_init_is_mean_of_member_tool_vectors():
  config, params = _model(tied=True)
  tok = _model_refs.smollm2_tokenizer()
  docs = ["weather | get_forecast: daily forecast", "mail | send: send an email", "maps | route: driving route"]
  tv = vocab.tool_model_vectors(params, config, tok, docs)
  e = np.asarray(params["embed"]["embedding"])
  np.testing.assert_allclose(tv[1], e[tok.encode(docs[1])].mean(0), rtol=1e-6)
  members = [[0, 2], [1], []]  # the empty code falls back to random
  p2, _, tok2 = vocab.extend_vocab(params, config, tok, ["<T1_0>", "<T1_1>", "<T1_2>"], init="codebook",
                                   token_members=members, tool_vectors=tv)
  rows = np.asarray(p2["embed"]["embedding"])[[tok2.token_to_id(f"<T1_{i}>") for i in range(3)]]
  np.testing.assert_allclose(rows[0], tv[[0, 2]].mean(0), rtol=1e-6)
  np.testing.assert_allclose(rows[1], tv[1], rtol=1e-6)
  assert np.abs(rows[2]).sum() > 0


def test_bad_arguments():
  config, params = _model(tied=True)
  tok = _model_refs.smollm2_tokenizer()
  with pytest.raises(ValueError, match="unknown vocabulary init"):
    vocab.extend_vocab(params, config, tok, ["<x>"], init="zeros")
  with pytest.raises(ValueError, match="token_members"):
    vocab.extend_vocab(params, config, tok, ["<x>"], init="codebook")
  with pytest.raises(ValueError, match="tool_vectors has shape"):
    vocab.extend_vocab(params, config, tok, ["<x>"], init="codebook", token_members=[[0]],
                       tool_vectors=np.zeros((2, 3)))
  with pytest.raises(ValueError, match="outside"):
    vocab.extend_vocab(params, config, tok, ["<x>"], init="codebook", token_members=[[5]],
                       tool_vectors=np.zeros((2, config.hidden_size)))
