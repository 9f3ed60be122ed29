"""Toolscaler gist compression (section 4.1) on a tiny Llama: the cascaded [Content; Token; Placeholder; Task]
mask, the Token outputs as the only way from the document to the task loss, field reconstruction trains, only LoRA +
gist rows change."""

import jax
import numpy as np
import pytest

from toolgen_jax.codebook import gist
from toolgen_jax.models import llama

DOCS = [{"name": "get_weather", "description": "current weather for a city", "parameters": "city"},
        {"name": "get_news", "description": "latest headlines by topic", "parameters": "topic"},
        {"name": "convert_currency", "description": "exchange rate between two currencies", "parameters": "from, to"},
        {"name": "translate", "description": "translate text into another language", "parameters": "text, target"}]


def tokenize(s):
  return [min(ord(ch), 250) + 1 for ch in s]


@pytest.fixture(scope="module")
def trained():
  mcfg = llama.LlamaConfig.tiny(vocab_size=256)
  params = llama.init_params(mcfg, jax.random.key(0))
  cfg = gist.GistConfig(num_gist=2, steps=60, batch_size=8, learning_rate=1e-2, max_content=96, max_task=96)
  out = gist.train(params, mcfg, DOCS, tokenize, cfg)
  return params, mcfg, cfg, out


@pytest.mark.slow
def test_reconstruction_loss_falls_and_backbone_is_frozen(trained):
  params0, mcfg0, cfg, (params, mcfg, gist_ids, losses) = trained
  # A random 2-layer model with a frozen random head learns slowly (measured 5.40 -> 5.10 nats); the check is that
  # LoRA + gist rows receive gradients that lower the reconstruction loss, not reconstruction quality.
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, (losses[:5], losses[-5:])
  assert mcfg.vocab_size == 258 and list(gist_ids) == [256, 257] and mcfg.lora_rank == cfg.lora_rank
  np.testing.assert_array_equal(np.asarray(params["embed"]["embedding"][:256]),
                                np.asarray(params0["embed"]["embedding"]))
  np.testing.assert_array_equal(np.asarray(params["layers"]["q_proj"]["kernel"]),
                                np.asarray(params0["layers"]["q_proj"]["kernel"]))
  assert not np.allclose(np.asarray(params["embed"]["embedding"][256:]), np.asarray(params0["embed"]["embedding"]).mean(0))


@pytest.mark.slow
def test_gist_embeddings_shape_and_determinism(trained):
  _, _, cfg, (params, mcfg, gist_ids, _) = trained
  emb = gist.embed_tools(params, mcfg, DOCS + DOCS[:1], tokenize, gist_ids, cfg, batch_size=5)
  assert emb.shape == (5, 2, mcfg.hidden_size) and np.isfinite(emb).all()
  np.testing.assert_allclose(emb[4], emb[0], atol=1e-5)
  assert not np.allclose(emb[0], emb[1])
  # The V gist positions are residual k-means' P positions (Toolscaler section 4.2).
  from toolgen_jax.codebook import residual_kmeans as rkm
  _, codes = rkm.fit(rkm.ResidualKMeansConfig(pca_dim=2, num_levels=1, codebook_size=2), emb)
  assert codes.shape == (5, 2)


@pytest.mark.slow
def test_task_tokens_see_only_the_gist(trained):
  """Structural: the cache the task tokens run on holds only the V gist slots (+ room for the task), so content
  tokens are unreachable from the task; different documents give different gists and so different logits."""
  _, _, cfg, (params, mcfg, gist_ids, _) = trained
  content, cmask, task, tmask, w = gist.make_tasks(DOCS[:2], tokenize, cfg)
  gid = jax.numpy.asarray(gist_ids)
  _, cache_a = gist.compress(params, mcfg, content[:1], cmask[:1], gid, extra_slots=task.shape[1])
  assert cache_a.k.shape[2] == 2 + task.shape[1] and int(cache_a.index) == 2
  la, _ = llama.forward(params, mcfg, task[:1], attention_mask=tmask[:1], cache=cache_a)
  _, cache_b = gist.compress(params, mcfg, content[3:4], cmask[3:4], gid, extra_slots=task.shape[1])
  lb, _ = llama.forward(params, mcfg, task[:1], attention_mask=tmask[:1], cache=cache_b)
  assert not np.allclose(np.asarray(la), np.asarray(lb))  # different documents -> different gists


def test_untrained_gist_cache_holds_only_the_gist_slots():
  """Fast tier: the structural part of `test_task_tokens_see_only_the_gist` on freshly added gist rows (no training)."""
  mcfg = llama.LlamaConfig.tiny(vocab_size=256)
  params, mcfg, gist_ids = gist.add_gist_tokens(llama.init_params(mcfg, jax.random.key(0)), mcfg, 2)
  assert mcfg.vocab_size == 258 and list(gist_ids) == [256, 257]
  cfg = gist.GistConfig(num_gist=2, max_content=96, max_task=96, form="kv_cache")
  content, cmask, task, tmask, w = gist.make_tasks(DOCS[:2], tokenize, cfg)
  assert content.shape == (6, 96) and task.shape == (6, 96) and w.sum() == sum(len(v) for d in DOCS[:2]
                                                                                for v in d.values())
  hidden, cache = gist.compress(params, mcfg, content[::3], cmask[::3], jax.numpy.asarray(gist_ids),
                                extra_slots=task.shape[1])
  assert hidden.shape == (2, 2, mcfg.hidden_size) and cache.k.shape[2] == 2 + task.shape[1]
  assert int(cache.index) == 2 and cache.mask[:, :2].all() and not cache.mask[:, 2:].any()
  assert not np.allclose(np.asarray(hidden[0]), np.asarray(hidden[1]))  # different documents -> different gists


# ---- the paper's form: cascaded mask, Placeholder fed from the Token outputs ------------------------------------

def test_cascaded_mask_matches_a_hand_written_reference():
  """Content 3 (last one padding), Token 2, Placeholder 2, Task 3 (last one padding); 1 = may attend."""
  got = np.asarray(gist.cascaded_mask(np.array([[1, 1, 0]]), 2, np.array([[1, 1, 0]])))[0].astype(int)
  #               c0 c1 c2 k0 k1 p0 p1 q0 q1 q2
  want = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # c0: causal over Content
                   [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],   # c1
                   [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],   # c2 (padding: attends no padding, itself included)
                   [1, 1, 0, 1, 0, 0, 0, 0, 0, 0],   # k0: Content + Token (causal)
                   [1, 1, 0, 1, 1, 0, 0, 0, 0, 0],   # k1
                   [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],   # p0: its own block only (its inputs are the Token outputs)
                   [0, 0, 0, 0, 0, 1, 1, 0, 0, 0],   # p1
                   [0, 0, 0, 0, 0, 1, 1, 1, 0, 0],   # q0: Placeholder + Task (causal), never Content or Token
                   [0, 0, 0, 0, 0, 1, 1, 1, 1, 0],   # q1
                   [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]])  # q2 (padding)
  np.testing.assert_array_equal(got, want)


def _tiny_gist_model(seed=0):
  mcfg = llama.LlamaConfig.tiny(vocab_size=256)
  params, mcfg, gist_ids = gist.add_gist_tokens(llama.init_params(mcfg, jax.random.key(seed)), mcfg, 2)
  # Non-zero LoRA B so the adapter is on the path (apply_lora starts B at 0).
  from toolgen_jax.models import lora
  params, mcfg = lora.apply_lora(params, mcfg, jax.random.key(seed + 1), rank=4, alpha=8.0)
  params["layers"]["q_proj"]["lora_b"] = 0.05 * jax.random.normal(jax.random.key(seed + 2),
                                                                  params["layers"]["q_proj"]["lora_b"].shape)
  return params, mcfg, jax.numpy.asarray(gist_ids)


def _disjoint_batch():
  """Content ids in [128, 200), task ids in [1, 100): an embedding row reaches the loss as Content or as Task."""
  rng = np.random.default_rng(0)
  content = rng.integers(128, 200, (3, 12)).astype(np.int32)
  cmask = np.ones((3, 12), np.int32)
  cmask[1, 9:] = 0
  task = rng.integers(1, 100, (3, 8)).astype(np.int32)
  tmask = np.ones((3, 8), np.int32)
  tmask[2, 6:] = 0
  w = tmask.copy()
  w[:, :2] = 0  # instruction tokens carry no loss
  return content, cmask, task, tmask, w


def test_token_outputs_are_the_models_causal_pass_over_content_and_gist():
  """The Token block under its mask block is `llama.hidden_states` on content + gist ids (so the masked stack is the
  model's own and encoders stored by either form embed tools alike)."""
  params, mcfg, gid = _tiny_gist_model()
  content, cmask, *_ = _disjoint_batch()
  h = jax.jit(lambda p: gist.token_outputs(p, mcfg, content, cmask, gid))(params)
  ref, _ = gist.compress(params, mcfg, content, cmask, gid)
  assert h.shape == (3, 2, mcfg.hidden_size)
  np.testing.assert_allclose(np.asarray(h), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_task_loss_reads_the_document_only_through_the_placeholder_vector():
  """(a) the loss is `task_loss` of the Token outputs h_k (the vectors `embed_tools` returns for clustering);
  (b) perturbing the Content's embedding rows moves the loss, but not when h_k is held: the perturbation acts
  through h_k only. The gradient form is the slow test below."""
  params, mcfg, gid = _tiny_gist_model()
  content, cmask, task, tmask, w = _disjoint_batch()
  rows = np.arange(128, 200)
  h_of = jax.jit(lambda p: gist.token_outputs(p, mcfg, content, cmask, gid))
  task_of = jax.jit(lambda p, h: gist.task_loss(p, mcfg, h, task, tmask, w))
  loss = lambda p: task_of(p, h_of(p))  # = cascade_loss, compiled once
  h = h_of(params)
  np.testing.assert_allclose(float(gist.cascade_loss(params, mcfg, content, cmask, task, tmask, w, gid)),
                             float(task_of(params, h)), rtol=1e-6)

  emb = params["embed"]["embedding"]
  bumped = {**params, "embed": {"embedding": emb.at[rows].add(
      0.5 * jax.random.normal(jax.random.key(3), (len(rows), emb.shape[1])))}}
  assert abs(float(loss(bumped)) - float(loss(params))) > 1e-4
  np.testing.assert_allclose(float(task_of(bumped, h)), float(task_of(params, h)), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # five backward compilations: ~100 s on the loaded 2-core VM
def test_task_loss_gradient_reaches_the_content_only_through_the_placeholder_vector():
  """(c) the loss's gradient on the Content rows is exactly the chain rule through h_k (VJP of `token_outputs` with
  dL/dh_k) and exactly zero when h_k is stop-gradient'ed: no direct Content -> Task path. The earlier kv_cache form
  fails it (control)."""
  params, mcfg, gid = _tiny_gist_model()
  content, cmask, task, tmask, w = _disjoint_batch()
  rows = np.arange(128, 200)
  loss = lambda p: gist.cascade_loss(p, mcfg, content, cmask, task, tmask, w, gid)
  h = gist.token_outputs(params, mcfg, content, cmask, gid)

  g_full = np.asarray(jax.jit(jax.grad(loss))(params)["embed"]["embedding"])[rows]
  d_h = jax.grad(lambda x: gist.task_loss(params, mcfg, x, task, tmask, w))(h)
  _, vjp = jax.vjp(lambda p: gist.token_outputs(p, mcfg, content, cmask, gid), params)
  g_chain = np.asarray(vjp(d_h)[0]["embed"]["embedding"])[rows]
  assert np.abs(g_full).max() > 1e-6
  np.testing.assert_allclose(g_full, g_chain, rtol=1e-4, atol=1e-8)
  held = lambda p: gist.task_loss(p, mcfg, jax.lax.stop_gradient(gist.token_outputs(p, mcfg, content, cmask, gid)),
                                  task, tmask, w)
  assert np.abs(np.asarray(jax.jit(jax.grad(held))(params)["embed"]["embedding"])[rows]).max() == 0.0

  # Control: the kv_cache form reads the gist block's keys/values of every layer, not h_k: its Content gradient is not
  # the chain rule through h_k (this test would catch a return to it).
  kv = lambda p: gist.kv_cache_loss(p, mcfg, content, cmask, task, tmask, w, gid)
  g_kv = np.asarray(jax.jit(jax.grad(kv))(params)["embed"]["embedding"])[rows]
  assert np.abs(g_kv).max() > 1e-6 and not np.allclose(g_kv, g_chain, rtol=1e-3, atol=1e-8)


def test_make_tasks_are_the_papers_m_reconstruction_tasks():
  cfg = gist.GistConfig(max_content=96, max_task=96)
  content, cmask, task, tmask, w = gist.make_tasks(DOCS[:1], tokenize, cfg)
  assert len(task) == 3 == len(gist.PAPER_TASKS)
  for row, (field, instruction) in enumerate(gist.PAPER_TASKS):
    n = len(tokenize(instruction))
    assert list(task[row, :n]) == tokenize(instruction) and w[row, :n].sum() == 0
    assert list(task[row][w[row] == 1]) == tokenize(DOCS[0][field])
    assert list(content[row][cmask[row] == 1]) == tokenize(gist.document_text(DOCS[0]))
  with pytest.raises(ValueError, match="category"):
    gist.make_tasks(DOCS[:1], tokenize, gist.GistConfig(tasks=("category",)))


@pytest.mark.slow  # ~23 s on the loaded 2-core VM (compiles the training step)
def test_cascade_training_with_early_stopping_keeps_the_backbone_frozen():
  """A few AdamW steps (weight decay, LoRA dropout) with early stopping on held-out rows: LoRA + gist rows move,
  every backbone weight is bit-identical (AdamW's decay must not touch frozen weights)."""
  mcfg = llama.LlamaConfig.tiny(vocab_size=256)
  params0 = llama.init_params(mcfg, jax.random.key(0))
  cfg = gist.GistConfig(num_gist=2, steps=6, batch_size=4, learning_rate=1e-2, max_content=64, max_task=80,
                        lora_rank=4, lora_alpha=16.0, lora_dropout=0.1, weight_decay=1e-2, patience=1,
                        eval_every=2, eval_fraction=0.25)
  logs = []
  params, mcfg2, ids, losses = gist.train(params0, mcfg, DOCS, tokenize, cfg, log=logs.append)
  assert mcfg2.lora_rank == 4 and mcfg2.lora_dropout == 0.1 and 1 <= len(losses) <= 6
  assert any("held-out loss" in m for m in logs)
  np.testing.assert_array_equal(np.asarray(params["embed"]["embedding"][:256]),
                                np.asarray(params0["embed"]["embedding"]))
  for name in ("q_proj", "gate_proj", "down_proj"):
    np.testing.assert_array_equal(np.asarray(params["layers"][name]["kernel"]),
                                  np.asarray(params0["layers"][name]["kernel"]))
  assert np.abs(np.asarray(params["layers"]["q_proj"]["lora_b"])).max() > 0
