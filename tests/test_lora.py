"""LoRA: starts at the base model, equals the explicit W + (alpha/r) A B, merges exactly, masks what trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.models import llama, lora

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _setup(targets=ALL, qkv_bias=True):
  config = llama.LlamaConfig.tiny(qkv_bias=qkv_bias)
  params = llama.init_params(config, jax.random.key(0))
  lp, lc = lora.apply_lora(params, config, jax.random.key(1), rank=4, alpha=8.0, dropout=0.1, targets=targets)
  # give B non-zero values so the low-rank path matters
  layers = {k: dict(v) for k, v in lp["layers"].items()}
  for i, t in enumerate(targets):
    b = layers[t]["lora_b"]
    layers[t]["lora_b"] = 0.05 * jax.random.normal(jax.random.key(10 + i), b.shape)
  return config, params, lc, {**lp, "layers": layers}


def test_starts_equal_to_base_and_axes_match():
  config = llama.LlamaConfig.tiny()
  params = llama.init_params(config, jax.random.key(0))
  lp, lc = lora.apply_lora(params, config, jax.random.key(1), rank=4, alpha=8.0)
  tok = jnp.arange(12).reshape(2, 6)
  np.testing.assert_array_equal(np.asarray(llama.forward(lp, lc, tok)[0]), np.asarray(llama.forward(params, config, tok)[0]))
  axes = llama.param_logical_axes(lc)
  assert jax.tree.structure(lp) == jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple))
  assert axes["layers"]["o_proj"]["lora_a"] == ("layers", "heads", "head_dim", None)
  assert lp["layers"]["o_proj"]["lora_a"].shape == (2, 4, 16, 4)
  assert lp["layers"]["q_proj"]["lora_b"].shape == (2, 4, 4, 16)


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
def test_forward_equals_explicit_delta_and_merge():
  config, params, lc, lp = _setup()
  tok = jax.random.randint(jax.random.key(3), (2, 9), 0, config.vocab_size)
  out, _ = llama.forward(lp, lc, tok)
  # reference: add the delta to the kernels by hand (numpy float64)
  explicit = {**params, "layers": {k: dict(v) for k, v in params["layers"].items()}}
  for t in ALL:
    a = np.asarray(lp["layers"][t]["lora_a"], np.float64)
    b = np.asarray(lp["layers"][t]["lora_b"], np.float64)
    L, r = a.shape[0], a.shape[-1]
    delta = 2.0 * np.einsum("lir,lro->lio", a.reshape(L, -1, r), b.reshape(L, r, -1))
    explicit["layers"][t]["kernel"] = jnp.asarray(np.asarray(params["layers"][t]["kernel"], np.float64) +
                                                  delta.reshape(params["layers"][t]["kernel"].shape), jnp.float32)
  ref, _ = llama.forward(explicit, config, tok)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)
  merged, mc = lora.merge_lora(lp, lc)
  assert mc.lora_rank == 0 and "lora_a" not in merged["layers"]["q_proj"]
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  np.testing.assert_allclose(np.asarray(llama.forward(merged, mc, tok)[0]), np.asarray(out), atol=2e-5)
  assert np.abs(np.asarray(out) - np.asarray(llama.forward(params, config, tok)[0])).max() > 1e-3


@pytest.mark.slow  # 4 s; the other LoRA tests stay fast
def test_dropout_only_with_rng():
  _, _, lc, lp = _setup()
  tok = jnp.arange(10).reshape(2, 5)
  det1, _ = llama.forward(lp, lc, tok)
  det2, _ = llama.forward(lp, lc, tok)
  np.testing.assert_array_equal(np.asarray(det1), np.asarray(det2))
  d1, _ = llama.forward(lp, lc, tok, dropout_rng=jax.random.key(0))
  d2, _ = llama.forward(lp, lc, tok, dropout_rng=jax.random.key(1))
  assert np.abs(np.asarray(d1) - np.asarray(d2)).max() > 0
  assert np.abs(np.asarray(d1) - np.asarray(det1)).max() > 0


def test_trainable_mask_and_gradients():
  _, _, lc, lp = _setup(targets=("q_proj", "v_proj"), qkv_bias=False)
  new_ids = [250, 253]
  mask = lora.trainable_mask(lp, lc, "lora_and_new_tokens", new_token_ids=new_ids)
  assert mask["layers"]["q_proj"]["lora_a"] is True and mask["layers"]["q_proj"]["kernel"] is False
  emb, head = mask["embed"]["embedding"], mask["lm_head"]["kernel"]
  assert (emb.axis, emb.dim, emb.keep.shape, int(emb.keep.sum())) == ("vocab", 0, (lc.vocab_size,), 2)
  assert (head.dim, np.flatnonzero(head.keep).tolist()) == (1, new_ids)
  labels = lora.optimizer_labels(mask)
  assert labels["embed"]["embedding"] == "trainable" and labels["layers"]["up_proj"]["kernel"] == "frozen"
  tok = jnp.array([[1, 250, 7, 253]])
  grads = jax.grad(lambda p: llama.forward(p, lc, tok)[0].sum())(lp)
  g = lora.mask_gradients(grads, mask)
  emb = np.asarray(g["embed"]["embedding"])
  assert np.all(emb[[1, 7]] == 0) and np.any(emb[250] != 0)
  assert not np.any(np.asarray(g["layers"]["up_proj"]["kernel"]))
  assert np.any(np.asarray(g["layers"]["q_proj"]["lora_a"]))
  n = lora.count_trainable(lp, mask)
  # q: A 2*64*4 + B 2*4*4*16; v: A 2*64*4 + B 2*4*2*16; two embedding rows and two head columns of 64
  assert n == (512 + 512) + (512 + 256) + 128 + 128
  only_new = lora.trainable_mask(lp, lc, "new_tokens", new_token_ids=new_ids)
  assert not only_new["layers"]["q_proj"]["lora_a"]
  assert lora.count_trainable(lp, only_new) == 128 + 128
  with pytest.raises(ValueError, match="needs new_token_start"):
    lora.trainable_mask(lp, lc, "new_tokens")
  with pytest.raises(ValueError, match="unknown LoRA targets"):
    lora.apply_lora(lp, lc, jax.random.key(0), targets=("qkv",))
