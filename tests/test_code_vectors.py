"""Code-token inits `rqvae_codebook` (ToolWeaver) and `reframe` (Toolscaler section 4.2): each code's vector in model
space (`codebook.code_vectors`) against a NumPy hand computation on a tiny codebook, its token row in the extended
vocabulary (`pipeline.code_token_rows`, `models.vocab.extend_vocab(rows=...)`)."""

import dataclasses

import jax
import numpy as np
import pytest

from toolgen_jax import pipeline
from toolgen_jax.code_vocab import token_strings
from toolgen_jax.codebook import code_vectors, rqvae
from toolgen_jax.codebook import codebook as cb_lib
from toolgen_jax.codebook import residual_kmeans as rkm
from toolgen_jax.models import vocab as vocab_lib

N, D_MODEL = 16, 5


def _hand_affine(x, y):
  """[x 1] [W; b] = y by the pseudo-inverse (the minimum-norm least-squares solution), float64."""
  x1 = np.concatenate([np.asarray(x, np.float64), np.ones((len(x), 1))], 1)
  wb = np.linalg.pinv(x1) @ np.asarray(y, np.float64)
  return wb[:-1], wb[-1]


@pytest.fixture(scope="module")
def rqvae_cb():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, 8)).astype(np.float32)
  cfg = rqvae.RQVAEConfig(hidden=(16,), code_dim=3, num_levels=2, codebook_size=4, collab_lambda=0.0, seed=0)
  state = rqvae.init(cfg, x)  # untrained: the map does not care how the codebook was learned
  quant = cb_lib._flatten({"params": jax.tree.map(np.asarray, state.params), "duals": np.zeros((2, 4), np.float32),
                           "mids": np.zeros(2, np.float32), "amps": np.ones(2, np.float32)})
  codes = np.random.default_rng(7).integers(0, 4, size=(N, 2))
  return cb_lib.Codebook("rqvae", codes, [4, 4], quantizer=quant, quantizer_config=dataclasses.asdict(cfg)), cfg, x


def test_rqvae_codebook_rows_are_the_least_squares_map_of_the_codebook(rqvae_cb):
  cb, cfg, x = rqvae_cb
  v = np.random.default_rng(1).normal(size=(N, D_MODEL))
  got = code_vectors.rqvae_code_vectors(cb, x, v)
  params = cb_lib._unflatten(cb.quantizer)["params"]
  z = np.asarray(rqvae.encode_latent(cfg, params, x), np.float64)  # the latent entering level 0
  w, b = _hand_affine(z, v)
  e = [np.asarray(params["codebooks"][l], np.float64) for l in range(2)]
  assert len(got) == 2 and got[0].shape == (4, D_MODEL)
  np.testing.assert_allclose(got[0], e[0] @ w + b, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got[1], e[1] @ w, rtol=1e-4, atol=1e-4)  # residual level: no offset
  # The rows of a code sum to the map of its quantised latent.
  c = cb.codes[0]
  np.testing.assert_allclose(got[0][c[0]] + got[1][c[1]], (e[0][c[0]] + e[1][c[1]]) @ w + b, rtol=1e-4, atol=1e-4)


def test_rqvae_codebook_needs_an_rqvae_codebook():
  cb = cb_lib.from_baseline("numerical", 5)
  with pytest.raises(ValueError, match="rqvae"):
    code_vectors.rqvae_code_vectors(cb, np.zeros((5, 3)), np.zeros((5, 2)))


@pytest.fixture(scope="module")
def rkm_cb():
  emb = np.random.default_rng(2).normal(size=(N, 2, D_MODEL)).astype(np.float32)  # 2 gist positions
  cfg = rkm.ResidualKMeansConfig(pca_dim=3, num_levels=2, codebook_size=3, kmeans_iters=20, seed=0)
  return cb_lib.from_residual_kmeans(cfg, emb, resolve=False), emb


def test_reframe_rows_are_member_means_then_inverse_pca_of_residual_centroids(rkm_cb):
  cb, emb = rkm_cb
  got = code_vectors.reframe_code_vectors(cb, emb)
  assert len(got) == 4 and cb.num_levels == 4  # 2 positions x 2 levels
  cents = cb.quantizer["centroids"]  # [P, L, K, d]
  for p in range(2):
    comps = cb.quantizer[f"pca/{p}/components"]
    for c in range(3):
      members = cb.codes[:, 2 * p] == c
      want = (emb[members, p].astype(np.float64).mean(0) if members.any()
              else cents[p, 0, c] @ comps + cb.quantizer[f"pca/{p}/mean"])
      np.testing.assert_allclose(got[2 * p][c], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2 * p + 1], cents[p, 1] @ comps, rtol=1e-5, atol=1e-5)


def test_reframe_maps_a_sentence_encoders_vectors_into_the_model_space():
  x = np.random.default_rng(3).normal(size=(N, 7)).astype(np.float32)  # one position, another width
  v = np.random.default_rng(4).normal(size=(N, D_MODEL))
  cb = cb_lib.from_residual_kmeans(rkm.ResidualKMeansConfig(pca_dim=3, num_levels=2, codebook_size=3, seed=0), x,
                                   resolve=False)
  got = code_vectors.reframe_code_vectors(cb, x, v)
  w, b = _hand_affine(x, v)
  for c in range(3):
    members = cb.codes[:, 0] == c
    np.testing.assert_allclose(got[0][c], x[members].astype(np.float64).mean(0) @ w + b, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got[1], (cb.quantizer["centroids"][0, 1] @ cb.quantizer["pca/0/components"]) @ w,
                             rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="residual_kmeans"):
    code_vectors.reframe_code_vectors(cb_lib.from_baseline("numerical", 5), x, v)


@pytest.mark.parametrize("tied", [True, False])
def test_extend_vocab_copies_given_rows_and_falls_back_to_random_on_nan(tied):
  from toolgen_jax.models import llama
  import _model_refs
  config = llama.LlamaConfig.tiny(vocab_size=49152, tie_embeddings=tied)
  table = np.random.default_rng(6).normal(size=(49152, config.hidden_size)).astype(np.float32)
  params = {"embed": {"embedding": table}} | ({} if tied else {"lm_head": {"kernel": table.T.copy()}})
  tok = _model_refs.smollm2_tokenizer()
  rows = np.random.default_rng(5).normal(size=(3, config.hidden_size)).astype(np.float32)
  rows[1] = np.nan
  p2, _, tok2 = vocab_lib.extend_vocab(params, config, tok, ["<T0_0>", "<T0_1>", "<T1_0>"], init="reframe",
                                       rows=rows)
  ids = [tok2.token_to_id(t) for t in ("<T0_0>", "<T0_1>", "<T1_0>")]
  tables = [np.asarray(p2["embed"]["embedding"])] + ([] if tied else [np.asarray(p2["lm_head"]["kernel"]).T])
  for table in tables:
    np.testing.assert_array_equal(table[[ids[0], ids[2]]], rows[[0, 2]])
    assert np.isfinite(table[ids[1]]).all() and np.abs(table[ids[1]]).sum() > 0  # the random fallback
  with pytest.raises(ValueError, match="needs rows"):
    vocab_lib.extend_vocab(params, config, _model_refs.smollm2_tokenizer(), ["<T0_0>"], init="rqvae_codebook")


def test_code_token_rows_put_each_codes_vector_under_its_token(rkm_cb, monkeypatch):
  cb, emb = rkm_cb
  monkeypatch.setattr(pipeline, "load_embeddings", lambda config, wd, ds: emb)
  config = type("C", (), {})()
  config.vocab = type("V", (), {"init": "reframe"})()
  new_tokens = token_strings(cb) + ["<T4_0>"]  # a suffix-level token: no vector
  rows = pipeline.code_token_rows(config, None, None, cb, new_tokens, np.zeros((N, D_MODEL), np.float32))
  levels = code_vectors.reframe_code_vectors(cb, emb)
  assert rows.shape == (len(new_tokens), D_MODEL)
  np.testing.assert_array_equal(rows[new_tokens.index("<T3_2>")], levels[3][2])
  np.testing.assert_array_equal(rows[new_tokens.index("<T0_1>")], levels[0][1])
  assert np.isnan(rows[-1]).all() and np.isfinite(rows[:-1]).all()
