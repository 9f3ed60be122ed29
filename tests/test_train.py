"""Train step numerics (accumulation, chunked loss), NaN guard, kill-and-resume equivalence, MFU count, writers."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from _training_helpers import toy_run
from toolgen_jax import config as config_lib
from toolgen_jax.models import llama
from toolgen_jax.training import metrics as metrics_lib
from toolgen_jax.training import sharding as shd
from toolgen_jax.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(REPO, "tests", "_training_helpers.py")


def _batch(mc, B=8, T=32, seed=0):
  rng = np.random.default_rng(seed)
  tok = rng.integers(0, mc.vocab_size, (B, T + 1)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, 20:] = 0
  w = (rng.random((B, T)) > 0.5).astype(np.float32) * mask
  return {"tokens": tok[:, :-1], "targets": tok[:, 1:], "weights": w, "attention_mask": mask}


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
def test_loss_matches_a_direct_reference_and_chunking_changes_nothing():
  mc = llama.LlamaConfig.tiny()
  params = llama.init_params(mc, jax.random.PRNGKey(0))
  b = _batch(mc)
  logits, _ = llama.forward(params, mc, b["tokens"], attention_mask=b["attention_mask"])
  z = np.asarray(logits, np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  ref = -np.sum(np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0] * b["weights"])
  for chunk in (0, 8):
    fn = jax.jit(jax.value_and_grad(lambda p: train.loss_sums(p, mc, b, loss_chunk=chunk), has_aux=True))
    (ce, (n, _)), g = fn(params)
    assert float(ce) == pytest.approx(ref, rel=1e-5)
    assert float(n) == b["weights"].sum()
    if chunk == 0:
      g0 = g
  for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g)):  # gradients of a sum over ~130 tokens
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
@pytest.mark.parametrize("scan", [True, False])
def test_frozen_layers_and_target_positions_keep_loss_and_top_gradients(scan):
  """The CPU recipe's two cuts change cost, not numbers: same loss, same gradient above the frozen layers, exactly
  zero below (and on the untied input embedding); the head on target positions only gives the full-head loss."""
  mc = llama.LlamaConfig.tiny(num_layers=4, tie_embeddings=False, scan_layers=scan)
  params = llama.init_params(mc, jax.random.PRNGKey(1))
  b = _batch(mc, T=24)
  b["weights"] = np.zeros_like(b["weights"])
  b["weights"][:, 15:18] = 1.0  # three target tokens per row, as a 2-code answer + end of turn
  b["weights"][3, 5] = 1.0       # one row with a fourth, earlier target
  b["weights"] *= b["attention_mask"]
  full = jax.jit(jax.value_and_grad(lambda p: train.loss_sums(p, mc, b), has_aux=True))
  cut = jax.jit(jax.value_and_grad(lambda p: train.loss_sums(p, mc, b, frozen_layers=3, target_positions=4),
                                   has_aux=True))
  (ce0, (n0, c0)), g0 = full(params)
  (ce1, (n1, c1)), g1 = cut(params)
  assert float(ce1) == pytest.approx(float(ce0), rel=1e-6)
  assert float(n1) == float(n0) == b["weights"].sum() and float(c1) == float(c0)
  for name in g0["layers"]:
    for leaf0, leaf1 in zip(jax.tree.leaves(g0["layers"][name]), jax.tree.leaves(g1["layers"][name])):
      np.testing.assert_allclose(leaf1[3:], leaf0[3:], rtol=1e-4, atol=1e-6)
      assert not np.any(leaf1[:3]) and np.any(leaf0[:3])
  assert not np.any(g1["embed"]["embedding"]) and np.any(g0["embed"]["embedding"])
  np.testing.assert_allclose(g1["lm_head"]["kernel"], g0["lm_head"]["kernel"], rtol=1e-4, atol=1e-6)
  # Too few target positions would drop a target: the loop refuses such a batch instead.
  with pytest.raises(ValueError, match="row 3 has 4 target tokens"):
    train.check_target_positions(b, 3, "retrieval", 7)


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
def test_frozen_layers_leave_the_bottom_bit_identical_through_the_optimizer():
  mc = llama.LlamaConfig.tiny(num_layers=4)
  params = llama.init_params(mc, jax.random.PRNGKey(0))
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  cfg = config_lib.base_config()
  cfg.train.learning_rate, cfg.train.warmup_fraction, cfg.train.weight_decay = 1e-2, 0.0, 0.1
  cfg.train.frozen_layers, cfg.train.target_positions = 2, 0
  steps = train.build_steps(mc, cfg.train, mesh, cfg.mesh.logical_axis_rules, total_steps=2, donate=False)
  state = steps.init(params)
  for s in range(2):  # step 0 runs at lr 0 (warm-up from 0)
    state, m = steps.train(state, _batch(mc, seed=s), jax.random.PRNGKey(0))
    assert bool(m["finite"])
  for name, leaf in params["layers"].items():
    for a, c in zip(jax.tree.leaves(leaf), jax.tree.leaves(state.params["layers"][name])):
      np.testing.assert_array_equal(np.asarray(c)[:2], np.asarray(a)[:2])  # weight decay too stayed off
      assert np.any(np.asarray(c)[2:] != np.asarray(a)[2:])


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
def test_gradient_accumulation_equals_one_big_batch():
  mc = llama.LlamaConfig.tiny()
  params = llama.init_params(mc, jax.random.PRNGKey(0))
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  cfg = config_lib.base_config()
  cfg.train.learning_rate, cfg.train.warmup_fraction = 1e-3, 0.0
  out = {}
  for k in (1, 4):
    cfg.train.grad_accum = k
    steps = train.build_steps(mc, cfg.train, mesh, cfg.mesh.logical_axis_rules, total_steps=10)
    st = steps.init(params)
    st, m = steps.train(st, _batch(mc), jax.random.PRNGKey(0))
    out[k] = (float(m["loss"]), float(m["grad_norm"]), jax.device_get(st.params))
  assert out[4][0] == pytest.approx(out[1][0], abs=1e-6)
  assert out[4][1] == pytest.approx(out[1][1], rel=1e-5)
  for a, c in zip(jax.tree.leaves(out[1][2]), jax.tree.leaves(out[4][2])):
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_flops_per_token_counts_every_matmul_parameter():
  for mc in (llama.LlamaConfig.tiny(), llama.LlamaConfig.llama3_8b(), llama.LlamaConfig.smollm2_135m()):
    shapes = llama.param_shapes(mc)
    n_all = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    norms = (2 * mc.num_layers + 1) * mc.hidden_size
    n_matmul = n_all - norms - (0 if mc.tie_embeddings else mc.vocab_size * mc.hidden_size)  # lookup is no matmul
    T = 2048
    attn = 12 * mc.num_layers * mc.num_heads * mc.head_dim * T
    assert metrics_lib.train_flops_per_token(mc, T) == pytest.approx(6 * n_matmul + attn, rel=1e-9)
  assert metrics_lib.peak_flops_per_device() is None or jax.default_backend() != "cpu"


def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  with pytest.raises(train.NonFiniteError, match=r"step 6 \(input batch 5\).*Last good checkpoint: step 4"):
    toy_run(str(tmp_path), steps=12, checkpoint_every=2, nan_at=5, async_checkpoint=False)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints/toy/latest").iterdir() if p.name.isdigit())
  assert steps == [2, 4]
  rows = [json.loads(l) for l in (tmp_path / "metrics_toy.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all(np.isfinite(r["loss"]) for r in rows)


def _curve(path):
  last = {}
  for line in path.read_text().splitlines():
    r = json.loads(line)
    last[r["step"]] = r["loss"]
  return [last[s] for s in sorted(last)]


@pytest.mark.slow
def test_sigkill_and_resume_reaches_the_uninterrupted_params_and_curve(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
  ref = subprocess.run([sys.executable, HELPER, str(ref_dir)], env=env, capture_output=True, text=True, timeout=600)
  assert ref.returncode == 0, ref.stderr[-3000:]
  run_dir.mkdir()
  proc = subprocess.Popen([sys.executable, HELPER, str(run_dir), "0.4"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  metrics = run_dir / "metrics_toy.jsonl"
  deadline = time.time() + 400
  while time.time() < deadline:
    if metrics.exists() and any(json.loads(l)["step"] >= 6 for l in metrics.read_text().splitlines()):
      break
    if proc.poll() is not None:
      pytest.fail("the run finished before it could be killed")
    time.sleep(0.1)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  ckpts = [int(p.name) for p in (run_dir / "checkpoints/toy/latest").iterdir() if p.name.isdigit()]
  assert ckpts and max(ckpts) < 12, ckpts  # killed mid-training
  resumed = subprocess.run([sys.executable, HELPER, str(run_dir)], env=env, capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step" in resumed.stdout
  np.testing.assert_allclose(_curve(run_dir / "metrics_toy.jsonl"), _curve(ref_dir / "metrics_toy.jsonl"),
                             rtol=0, atol=1e-6)
  a, b = np.load(ref_dir / "final_params.npz"), np.load(run_dir / "final_params.npz")
  for k in a.files:
    np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)


def test_writers_and_eval_with_best_checkpoint(tmp_path):
  scores = iter([0.5, 0.2])  # the first evaluation is the best one
  res = toy_run(str(tmp_path), steps=6, checkpoint_every=0, eval_every=3, best_metric="ndcg@5", best_mode="max",
                async_checkpoint=False, with_dev=True, eval_fn=lambda state: {"ndcg@5": next(scores)})
  assert [e["step"] for e in res.eval_history] == [3, 6]
  assert res.eval_history[1]["dev_loss"] < res.eval_history[0]["dev_loss"]
  from toolgen_jax.training import checkpoint as ckpt_lib
  ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints/toy", best_metric="ndcg@5")
  assert ck.best_step() == 3 and ck.latest_step() == 6
  assert list((tmp_path / "tensorboard" / "toy").glob("events.out.tfevents.*"))
  assert (tmp_path / "checkpoints/toy/best").is_dir()


def test_build_steps_rejects_bad_accumulation():
  mc = llama.LlamaConfig.tiny()
  cfg = config_lib.base_config()
  cfg.train.grad_accum = 0
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  with pytest.raises(ValueError, match="grad_accum"):
    train.build_steps(mc, cfg.train, mesh, cfg.mesh.logical_axis_rules, total_steps=3)


