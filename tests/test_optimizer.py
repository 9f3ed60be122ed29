"""Schedule, clipping, weight-decay and trainable masks of the AdamW chain."""

import jax
import numpy as np
import optax
import pytest

from toolgen_jax import config as config_lib
from toolgen_jax.models import llama
from toolgen_jax.training import optimizer as opt


def test_schedule_warmup_then_cosine_matches_formula():
  peak, total = 4e-5, 200
  sched = opt.learning_rate_schedule(peak, total, 0.03, 0.0)
  warm = 6  # round(0.03 * 200)
  for s in range(warm + 1):
    assert float(sched(s)) == pytest.approx(peak * s / warm, rel=1e-6)
  for s in (50, 120, 199):
    ref = 0.5 * peak * (1 + np.cos(np.pi * (s - warm) / (total - warm)))
    assert float(sched(s)) == pytest.approx(ref, rel=1e-5, abs=1e-12)
  assert float(sched(total)) == pytest.approx(0.0, abs=1e-12)


def _tiny(**kw):
  mc = llama.LlamaConfig.tiny(**kw)
  return mc, llama.init_params(mc, jax.random.PRNGKey(0)), llama.param_logical_axes(mc)


def _random_grads(params, seed=1, scale=1.0):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _apply(tx, params, grads, n=2):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(n):
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_weight_decay_mask_skips_norms():
  _, params, _ = _tiny()
  m = opt.weight_decay_mask(params)
  assert m["layers"]["q_proj"]["kernel"] is True and m["embed"]["embedding"] is True
  assert m["layers"]["attn_norm"]["scale"] is False and m["final_norm"]["scale"] is False


def test_new_tokens_mode_changes_only_new_rows():
  mc, params, axes = _tiny()
  tc = config_lib.base_config().train
  tc.trainable, tc.learning_rate, tc.warmup_fraction, tc.weight_decay = "new_tokens", 1e-2, 0.0, 0.1
  tx, _ = opt.make_optimizer(tc, params, axes, 10, new_token_start=200)
  new = _apply(tx, params, _random_grads(params))
  for name in ("embed/embedding", "lm_head/kernel"):
    a, b = name.split("/")
    old_p, new_p = np.asarray(params[a][b]), np.asarray(new[a][b])
    rows = old_p if a == "embed" else old_p.T
    new_rows = new_p if a == "embed" else new_p.T
    np.testing.assert_array_equal(new_rows[:200], rows[:200])      # pretrained vocabulary bit-identical
    assert np.all(np.abs(new_rows[200:] - rows[200:]).max(axis=1) > 0)  # every tool-token row moved
  np.testing.assert_array_equal(new["layers"]["q_proj"]["kernel"], params["layers"]["q_proj"]["kernel"])
  # No Adam moments are kept for frozen leaves.
  n_state = sum(x.size for x in jax.tree.leaves(tx.init(params)))
  assert n_state < 3 * (params["embed"]["embedding"].size + params["lm_head"]["kernel"].size) + 100


def test_lora_mode_trains_lora_and_new_rows_only():
  mc, params, axes = _tiny(lora_rank=4, lora_alpha=8.0, lora_targets=("q_proj", "v_proj"))
  params["layers"]["q_proj"]["lora_b"] = params["layers"]["q_proj"]["lora_b"] + 0.01
  tc = config_lib.base_config().train
  tc.trainable, tc.learning_rate, tc.warmup_fraction = "lora_and_new_tokens", 1e-2, 0.0
  tx, _ = opt.make_optimizer(tc, params, axes, 10, new_token_start=250)
  new = _apply(tx, params, _random_grads(params))
  assert not np.allclose(new["layers"]["q_proj"]["lora_a"], params["layers"]["q_proj"]["lora_a"])
  assert not np.allclose(new["layers"]["v_proj"]["lora_b"], params["layers"]["v_proj"]["lora_b"])
  np.testing.assert_array_equal(new["layers"]["q_proj"]["kernel"], params["layers"]["q_proj"]["kernel"])
  np.testing.assert_array_equal(new["layers"]["mlp_norm"]["scale"], params["layers"]["mlp_norm"]["scale"])
  np.testing.assert_array_equal(new["embed"]["embedding"][:250], params["embed"]["embedding"][:250])


def test_clipping_bounds_the_gradient_seen_by_adam():
  mc, params, axes = _tiny()
  tc = config_lib.base_config().train
  tc.grad_clip, tc.learning_rate, tc.warmup_fraction, tc.weight_decay = 0.5, 1e-3, 0.0, 0.0
  grads = _random_grads(params, scale=10.0)
  assert float(optax.tree.norm(grads)) > 100
  tx, sched = opt.make_optimizer(tc, params, axes, 10)
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  adam = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert len(adam) == 1
  # mu_1 = (1 - b1) * clipped g, and the clipped gradient has global norm exactly grad_clip.
  assert float(optax.tree.norm(adam[0].mu)) / (1 - tc.adam_b1) == pytest.approx(0.5, rel=1e-5)
  # With clipping off, the same norm is the raw gradient's.
  tc.grad_clip = 0.0
  tx, _ = opt.make_optimizer(tc, params, axes, 10)
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  adam = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert float(optax.tree.norm(adam[0].mu)) / (1 - tc.adam_b1) == pytest.approx(
      float(optax.tree.norm(grads)), rel=1e-5)


def test_bad_mode_and_missing_start_raise():
  _, params, axes = _tiny()
  with pytest.raises(ValueError, match="trainable must be one of"):
    opt.trainable_mask(params, axes, "everything")
  with pytest.raises(ValueError, match="needs LoRA factors"):
    opt.trainable_mask(params, axes, "lora")
  with pytest.raises(ValueError, match="new_token_start"):
    opt.trainable_mask(params, axes, "new_tokens")
