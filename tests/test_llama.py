"""Parity of the JAX Llama/Qwen2 port with transformers (PyTorch), KV cache, padding, presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.models import llama

import _model_refs

torch = pytest.importorskip("torch")

VARIANTS = {
    "llama_gqa_untied": llama.LlamaConfig.tiny(),
    "llama3_rope_tied": llama.LlamaConfig.tiny(
        tie_embeddings=True, num_kv_heads=1, rope_theta=500000.0, max_position_embeddings=128,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}),
    "qwen2_bias": llama.LlamaConfig.tiny(architecture="qwen2", qkv_bias=True, rms_norm_eps=1e-6,
                                         rope_theta=1e6, tie_embeddings=True),
}


def _random_params(config, seed=0):
  """init_params, with norms and biases randomised too so that a swapped or dropped tensor shows."""
  p = llama.init_params(config, jax.random.key(seed), init_std=0.1)
  leaves, tree = jax.tree.flatten_with_path(p)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  out = []
  for (path, x), k in zip(leaves, keys):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      x = 1.0 + 0.2 * jax.random.normal(k, x.shape)
    elif "bias" in name:
      x = 0.3 * jax.random.normal(k, x.shape)
    out.append(x)
  return jax.tree.unflatten(tree, out)


def _torch_logits(model, tokens, mask, positions):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(np.asarray(tokens)).long(),
                 attention_mask=torch.from_numpy(np.asarray(mask)).long(),
                 position_ids=torch.from_numpy(np.asarray(positions)).long()).logits.numpy()


def _batch(config, B=3, T=24, seed=0):
  """Random tokens; row 1 left-padded by 5, row 2 by 11."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, :5] = 0
  mask[2, :11] = 0
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
  return tokens, mask, positions


def test_param_axes_match_params():
  for config in VARIANTS.values():
    p = jax.eval_shape(llama.init_params, config, jax.random.key(0))  # structure and shapes, no compile
    axes = llama.param_logical_axes(config)
    is_axes = lambda x: isinstance(x, tuple)
    assert jax.tree.structure(p) == jax.tree.structure(axes, is_leaf=is_axes)
    for x, a in zip(jax.tree.leaves(p), jax.tree.leaves(axes, is_leaf=is_axes)):
      assert x.ndim == len(a)
      assert set(a) <= {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers", None}
    shapes = llama.param_shapes(config)
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(lambda x: x.shape, p)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_logit_parity_with_transformers(name):
  config = VARIANTS[name]
  params = _random_params(config)
  model = _model_refs.torch_model_from_ours(params, config)
  tokens, mask, positions = _batch(config)
  ours, _ = jax.jit(llama.forward, static_argnums=1)(params, config, jnp.asarray(tokens),
                                                       attention_mask=jnp.asarray(mask))
  ref = _torch_logits(model, tokens, mask, positions)
  real = mask.astype(bool)
  scale = np.abs(ref[real]).max()
  err = np.abs(np.asarray(ours)[real] - ref[real]).max()
  assert err <= 1e-4 * scale, (name, err, scale)


def test_llama3_rope_scaling_is_active():
  config = VARIANTS["llama3_rope_tied"]
  plain = config.replace(rope_scaling=None)
  inv_s, inv_p = llama.rope_inv_freq(config), llama.rope_inv_freq(plain)
  assert not np.allclose(inv_s, inv_p)  # the rule changes frequencies inside the tested 24 positions
  assert inv_s[-1] == pytest.approx(inv_p[-1] / 8.0)  # low frequencies divided by the factor
  from transformers import modeling_rope_utils, AutoConfig
  hf = AutoConfig.for_model(**config.to_hf_config())
  ref, _ = modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
  np.testing.assert_allclose(inv_s, ref.numpy(), rtol=1e-6)  # float32, within an ulp


@pytest.mark.parametrize("name", [pytest.param("llama_gqa_untied", marks=pytest.mark.slow), "qwen2_bias"])
def test_kv_cache_matches_full_forward(name):
  """Prefill 10 tokens (with left padding) then 14 single steps == one full pass."""
  config = VARIANTS[name]
  params = _random_params(config)
  tokens, mask, _ = _batch(config)
  mask[:, 10:] = 1  # padding only inside the prompt
  full, _ = llama.forward(params, config, jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
  cache = llama.init_cache(config, tokens.shape[0], 32)
  step = jax.jit(lambda p, t, m, c: llama.forward(p, config, t, attention_mask=m, cache=c))
  pieces = []
  logits, cache = step(params, tokens[:, :10], mask[:, :10], cache)
  pieces.append(logits)
  for t in range(10, tokens.shape[1]):
    logits, cache = step(params, tokens[:, t:t + 1], mask[:, t:t + 1], cache)
    pieces.append(logits)
  inc = np.concatenate(pieces, 1)
  real = mask.astype(bool)
  np.testing.assert_allclose(inc[real], np.asarray(full)[real], atol=2e-5, rtol=0)
  assert int(cache.index) == tokens.shape[1]
  np.testing.assert_array_equal(np.asarray(cache.next_pos), mask.sum(1))


def test_reorder_cache_gathers_rows():
  config = VARIANTS["llama_gqa_untied"]
  params = _random_params(config)
  tokens, mask, _ = _batch(config, T=8)
  cache = llama.init_cache(config, 3, 12)
  _, cache = llama.forward(params, config, jnp.asarray(tokens), attention_mask=jnp.asarray(mask), cache=cache)
  index = jnp.array([2, 2, 0, 1])
  re = llama.reorder_cache(cache, index)
  nxt = jnp.asarray(tokens[np.array(index), :1])
  got, _ = llama.forward(params, config, nxt, cache=re)
  for i, j in enumerate(np.array(index)):
    single = jax.tree.map(lambda x: x, cache)
    ref, _ = llama.forward(params, config, nxt[i:i + 1], cache=llama.reorder_cache(single, jnp.array([j])))
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(ref[0]), atol=1e-5)


@pytest.mark.slow
def test_scan_loop_remat_and_bf16_agree():
  config = VARIANTS["qwen2_bias"]
  params = _random_params(config)
  tokens, mask, _ = _batch(config)
  kw = dict(attention_mask=jnp.asarray(mask))
  base, _ = llama.forward(params, config, jnp.asarray(tokens), **kw)
  for variant in (config.replace(scan_layers=False), config.replace(remat=True)):
    out, _ = llama.forward(params, variant, jnp.asarray(tokens), **kw)
    np.testing.assert_allclose(np.asarray(out), np.asarray(base), atol=1e-5)
  bf = config.replace(dtype="bfloat16")
  pbf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  out, _ = llama.forward(pbf, bf, jnp.asarray(tokens), **kw)
  assert out.dtype == jnp.float32
  real = mask.astype(bool)
  # bf16 compute keeps the ranking of the top logit in most positions and stays near float32.
  assert np.abs(np.asarray(out)[real] - np.asarray(base)[real]).max() < 0.1 * np.abs(np.asarray(base)).max()
  # gradient through remat equals gradient without it
  loss = lambda p, c: llama.forward(p, c, jnp.asarray(tokens))[0].mean()
  g1 = jax.grad(loss)(params, config)
  g2 = jax.grad(loss)(params, config.replace(remat="dots_with_no_batch_dims_saveable"))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.slow
def test_matmul_and_cross_entropy_gradients_match_autodiff():
  """The hand-written backward passes (matmul, softmax_cross_entropy) equal autodiff of the plain formulas."""
  ks = jax.random.split(jax.random.key(3), 8)
  cases = [  # (x, w, n_in, transpose_w, reference)
      (jax.random.normal(ks[0], (2, 5, 6)), jax.random.normal(ks[1], (6, 3, 4)), 1, False,
       lambda x, w: jnp.tensordot(x, w, 1)),
      (jax.random.normal(ks[2], (2, 5, 3, 4)), jax.random.normal(ks[3], (3, 4, 6)), 2, False,
       lambda x, w: jnp.tensordot(x, w, 2)),
      (jax.random.normal(ks[4], (2, 5, 6)), jax.random.normal(ks[5], (7, 6)), 1, True,
       lambda x, w: jnp.einsum("...d,vd->...v", x, w)),
  ]
  for x, w, n_in, tw, ref in cases:
    got = llama.matmul(x, w, n_in, tw)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref(x, w)), rtol=1e-5, atol=1e-5)
    ct = jax.random.normal(ks[6], got.shape)
    g1 = jax.grad(lambda x, w: jnp.sum(llama.matmul(x, w, n_in, tw) * ct), argnums=(0, 1))(x, w)
    g2 = jax.grad(lambda x, w: jnp.sum(ref(x, w) * ct), argnums=(0, 1))(x, w)
    for a, b in zip(g1, g2):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  logits = 3.0 * jax.random.normal(ks[7], (2, 5, 11))
  targets = jax.random.randint(ks[0], (2, 5), 0, 11)
  wts = jax.random.uniform(ks[1], (2, 5))
  ref = lambda l: -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(l), targets[..., None], -1)[..., 0] * wts)
  ours = lambda l: jnp.sum(llama.softmax_cross_entropy(l, targets) * wts)
  np.testing.assert_allclose(float(ours(logits)), float(ref(logits)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.grad(ours)(logits)), np.asarray(jax.grad(ref)(logits)), atol=1e-6)
  # inside a jitted model: the parameter gradients of a next-token loss agree with the log_softmax formula's.
  config = VARIANTS["llama3_rope_tied"]
  params = _random_params(config)
  tokens = jnp.asarray(_batch(config)[0])

  def loss(p, ce):
    logits, _ = llama.forward(p, config, tokens)
    return jnp.mean(ce(logits[:, :-1], tokens[:, 1:]))

  plain = lambda l, t: -jnp.take_along_axis(jax.nn.log_softmax(l), t[..., None], -1)[..., 0]
  g1 = jax.jit(jax.grad(lambda p: loss(p, llama.softmax_cross_entropy)))(params)
  g2 = jax.jit(jax.grad(lambda p: loss(p, plain)))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6 * float(np.abs(np.asarray(b)).max()) + 1e-8)


def test_presets_and_hf_config_roundtrip():
  for make in (llama.LlamaConfig.smollm2_135m, llama.LlamaConfig.llama3_8b, llama.LlamaConfig.llama32_1b,
               llama.LlamaConfig.llama32_3b, llama.LlamaConfig.qwen25_0_5b, llama.LlamaConfig.qwen25_1_5b,
               llama.LlamaConfig.qwen25_7b):
    c = make()
    assert llama.LlamaConfig.from_hf_config(c.to_hf_config()) == c
    hash(c)  # static-argument friendly
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(llama.param_shapes(llama.LlamaConfig.smollm2_135m())))
  assert n == 134_515_008  # SmolLM2-135M's published parameter count
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(llama.param_shapes(llama.LlamaConfig.qwen25_0_5b())))
  assert n == 494_032_768  # Qwen2.5-0.5B
  with pytest.raises(ValueError, match="unknown architecture"):
    llama.LlamaConfig.from_hf_config({"model_type": "mistral", "architectures": ["MistralForCausalLM"]})


@pytest.mark.slow
def test_smollm2_gguf_parity_and_greedy():
  """The real embedded checkpoint: our GGUF loader + forward vs transformers' GGUF loader + PyTorch."""
  config, params = _model_refs.smollm2_ours()
  model = _model_refs.smollm2_torch()
  prompt = np.array([[504, 3575, 282, 4649, 314, 30, 378, 1470, 314]], np.int32)  # "The capital of France is..."
  ours, _ = jax.jit(llama.forward, static_argnums=1)(params, config, jnp.asarray(prompt))
  with torch.no_grad():
    ref = model(torch.from_numpy(prompt).long()).logits.numpy()
  err, scale = np.abs(np.asarray(ours) - ref).max(), np.abs(ref).max()
  assert err <= 1e-4 * scale, (err, scale)
  ref_ids = _model_refs.smollm2_torch_greedy(prompt, 32)
  assert len(ref_ids) == 32
  np.testing.assert_array_equal(_model_refs.greedy_ours(params, config, prompt, 32), ref_ids)
