"""RQ-VAE: reconstruction improves with levels, determinism, balanced codes, collaborative loss on the real graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.codebook import rqvae


@pytest.fixture(scope="module")
def clustered():
  # Hierarchical synthetic data (clusters of sub-clusters) so that every residual level has structure to explain.
  rng = np.random.default_rng(0)
  top = rng.normal(size=(8, 24)) * 3
  sub = rng.normal(size=(8, 8, 24))
  a, b = rng.integers(0, 8, 1500), rng.integers(0, 8, 1500)
  return (top[a] + sub[a, b] + 0.3 * rng.normal(size=(1500, 24))).astype(np.float32)


@pytest.fixture(scope="module")
def trained(clustered):
  cfg = rqvae.RQVAEConfig.tiny(num_levels=3, codebook_size=8, steps=200)
  state, hist = rqvae.train(cfg, clustered)
  return cfg, state, hist


@pytest.mark.slow
def test_reconstruction_error_falls_as_levels_are_added(trained, clustered):
  cfg, state, hist = trained
  errs = [rqvae.reconstruction_error(cfg, state.params, clustered, levels=l) for l in (1, 2, 3)]
  assert errs[0] > errs[1] > errs[2], errs
  assert hist[-1]["recon"] < hist[0]["recon"]
  assert np.isfinite([h["loss"] for h in hist]).all()


@pytest.mark.slow
def test_codes_are_balanced_and_deterministic(trained, clustered):
  cfg, state, _ = trained
  a = rqvae.assign_codes(cfg, state.params, clustered)
  codes = np.asarray(a.codes)
  assert codes.shape == (1500, 3) and codes.dtype == np.int32 and a.level_inputs.shape == (3, 1500, cfg.code_dim)
  # Replaying the corpus' Sinkhorn duals on the same points reproduces the balanced codes (add_tools relies on it).
  replay = rqvae.replay_codes(cfg, state.params, clustered, a.duals, a.mids, a.amps)
  assert (np.asarray(replay.codes) == codes).mean() > 0.99
  for level in range(3):
    counts = np.bincount(codes[:, level], minlength=8)
    assert counts.min() > 0.5 * 1500 / 8 and counts.max() < 1.5 * 1500 / 8, counts
  state2, _ = rqvae.train(cfg, clustered)
  codes2 = np.asarray(rqvae.assign_codes(cfg, state2.params, clustered).codes)
  np.testing.assert_array_equal(codes, codes2)
  cfg3 = rqvae.RQVAEConfig.tiny(num_levels=3, codebook_size=8, steps=200, seed=1)
  state3, _ = rqvae.train(cfg3, clustered)
  assert not np.array_equal(np.asarray(state3.params["codebooks"]), np.asarray(state.params["codebooks"]))


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
def test_dead_codes_are_restarted(clustered):
  cfg = rqvae.RQVAEConfig.tiny(num_levels=1, codebook_size=8, steps=50, sinkhorn_epsilon=0.0, kmeans_init=False)
  state = rqvae.init(cfg, clustered)
  # Push every code but 0 far away: they would never be chosen by nearest-code assignment.
  cbs = state.params["codebooks"].at[0, 1:].set(1e3)
  state = rqvae.RQVAEState(dict(state.params, codebooks=cbs), state.opt_state, state.step, state.usage)
  state, hist = rqvae.train(cfg, clustered, state=state)
  assert hist[0]["dead_codes"] == 7
  assert np.abs(np.asarray(state.params["codebooks"][0, 1:])).max() < 100  # moved onto data


def test_bad_edges_are_rejected(clustered):
  cfg = rqvae.RQVAEConfig.tiny(collab_lambda=1.0, steps=1)
  with pytest.raises(ValueError, match="tool ids"):
    rqvae.train(cfg, clustered, np.array([[0, 5000]]))


def test_collaborative_loss_makes_cooccurring_tools_share_prefixes(shared_data):
  """ToolWeaver's claim, measured on COLT ToolBench-G3's real co-usage graph (1,415 tools, 8,798 edges)."""
  from toolgen_jax.codebook import embed
  from toolgen_jax.data.readers import load_source
  ds = load_source("beir", shared_data / "COLT/datasets/ToolBenchG3", log=False)
  x = embed.encode_texts([f"{t.category}: {t.tool_name}: {t.api_name}" for t in ds.corpus], max_len=32)
  edges, w = ds.cooccurrence.edges()
  assert len(edges) > 5000

  def shared_first_code(lam):
    cfg = rqvae.RQVAEConfig.tiny(codebook_size=32, hidden=(128, 64), code_dim=32, collab_lambda=lam, steps=200)
    state, _ = rqvae.train(cfg, x, edges, w)
    codes = np.asarray(rqvae.assign_codes(cfg, state.params, x).codes)
    return np.average(codes[edges[:, 0], 0] == codes[edges[:, 1], 0], weights=w)

  base, collab = shared_first_code(0.0), shared_first_code(rqvae.PAPER_LAMBDA)
  assert collab > base + 0.1, (base, collab)


# --- ToolWeaver Eq. 6 on the quantised vectors ----------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["sym", "row", "none"])
def test_directed_adjacency_matches_cooccurrence(norm):
  from toolgen_jax.data import cooccurrence
  g = cooccurrence.from_groups([[0, 1, 2], [0, 1], [2, 3], [1, 3], [5]], 6)
  edges, counts = g.edges()
  pairs, a = rqvae.directed_adjacency(edges, counts, 6, norm)
  dense = np.zeros((6, 6))
  dense[pairs[:, 0], pairs[:, 1]] = a
  np.testing.assert_allclose(dense, g.adjacency(norm).toarray(), rtol=1e-6)


def test_eq6_on_quantised_vectors_matches_numpy_float64():
  rng = np.random.default_rng(0)
  n, L, K, e, B = 40, 3, 7, 5, 16
  codebooks = rng.normal(size=(L, K, e))
  ids = rng.permutation(n)[:B]
  codes = rng.integers(0, K, size=(B, L))
  groups = [rng.choice(n, size=int(rng.integers(2, 6)), replace=False).tolist() for _ in range(60)]
  from toolgen_jax.data import cooccurrence
  g = cooccurrence.from_groups(groups, n)
  A = g.adjacency("sym").toarray().astype(np.float64)
  ref = 0.0
  for l in range(L):
    q = codebooks[l][codes[:, l]]                                              # z^ of the batch at level l
    d = ((q[:, None, :] - q[None, :, :]) ** 2).sum(-1)                          # [B, B]
    ref += (A[np.ix_(ids, ids)] * d).sum() / B ** 2
  ref /= L
  pairs, a = rqvae.directed_adjacency(*g.edges(), n, "sym")
  got = rqvae.collab_loss_quantized(jnp.asarray(codebooks, jnp.float32), jnp.asarray(codes), jnp.asarray(ids),
                                    jnp.asarray(pairs), jnp.asarray(a), n)
  assert ref > 0
  np.testing.assert_allclose(float(got), ref, rtol=1e-5)
  # the gradient reaches the codebook rows the batch uses and nothing else (the encoder is not in the term)
  grad = jax.grad(lambda cb: rqvae.collab_loss_quantized(cb, jnp.asarray(codes), jnp.asarray(ids),
                                                         jnp.asarray(pairs), jnp.asarray(a), n))(
      jnp.asarray(codebooks, jnp.float32))
  used = np.zeros((L, K), bool)
  for l in range(L):
    used[l, codes[:, l]] = True
  assert not np.asarray(grad)[~used].any()


@pytest.mark.slow
def test_paper_form_trains_and_pulls_quantised_neighbours_together(clustered):
  from toolgen_jax.data import cooccurrence
  clustered = clustered[:300]
  n = clustered.shape[0]
  rng = np.random.default_rng(1)
  groups = [rng.choice(n, size=3, replace=False).tolist() for _ in range(200)]
  edges, counts = cooccurrence.from_groups(groups, n).edges()
  pairs, a = rqvae.directed_adjacency(edges, counts, n, "sym")

  def eq6_all(lam):
    cfg = rqvae.RQVAEConfig.tiny(collab_form="paper", collab_lambda=lam, steps=60, dead_code_every=60,
                                 batch_size=n, hidden=(32,), code_dim=8, codebook_size=8)
    state, hist = rqvae.train(cfg, clustered, edges, counts)
    assert all(np.isfinite(h["loss"]) for h in hist)
    codes = rqvae.assign_codes(cfg, state.params, clustered).codes
    return float(rqvae.collab_loss_quantized(state.params["codebooks"], codes, jnp.arange(n), jnp.asarray(pairs),
                                             jnp.asarray(a), n)), hist
  base, _ = eq6_all(0.0)
  pulled, hist = eq6_all(100.0)
  assert hist[-1]["collab"] > 0 and pulled < base, (base, pulled)
