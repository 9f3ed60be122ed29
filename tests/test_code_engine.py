"""The code engine on a tiny tied Llama: only the partition trains (pretrained rows bit-identical, Adam moments for the
trainable slices only, learning-rate groups), cached training equals uncached training, the cache resumes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.models import llama
from toolgen_jax.training import code_engine as ce
from toolgen_jax.training import code_loss
from toolgen_jax.training import feature_cache as fc
from toolgen_jax.training import optimizer as opt

K, L, START = 4, 2, 248
TABLE = trie_lib.level_token_table(START, L, K)  # ids 248..255 (the added rows)


def _model(num_layers=3):
  mc = llama.LlamaConfig.tiny(vocab_size=256, tie_embeddings=True, num_layers=num_layers)
  return mc, llama.init_params(mc, jax.random.PRNGKey(0), init_std=0.2)


def _examples(n=10, seed=0, seq_len=16):
  rng = np.random.default_rng(seed)
  encoded = []
  for i in range(n):
    prompt = rng.integers(3, START, rng.integers(4, 12)).tolist()
    code = [int(TABLE[0, i % K]), int(TABLE[1, (i * 3 + 1) % K])]
    encoded.append(np.asarray(prompt + code + [2, 10], np.int32))  # + end of turn, newline (no loss)
  return fc.code_examples(encoded, TABLE, seq_len)


def _slice(ex, idx):
  return {"tokens": ex.tokens[idx], "attention_mask": ex.attention_mask[idx], "code_pos": ex.code_pos[idx],
          "codes": ex.codes[idx]}



def _perturbed(trainable, scale: float):
  """The trainable tree moved off the pretrained values (seeded), so a comparison is not at a special point."""
  leaves, treedef = jax.tree.flatten(trainable)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  return jax.tree.unflatten(treedef, [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])

def test_code_examples_positions():
  ex = _examples(3)
  for i in range(3):
    for l in range(L):
      p = ex.code_pos[i, l]
      nxt = ex.tokens[i, p + 1] if p + 1 < ex.attention_mask[i].sum() else None
      if l == 0:
        assert nxt == TABLE[0, ex.codes[i, 0]]  # the position after the prompt holds the first code
    assert ex.attention_mask[i].sum() == ex.code_pos[i, 1] + 1  # the last code's input is not needed
  cut = fc.code_examples([np.arange(3, 30).tolist() + [int(TABLE[0, 1]), int(TABLE[1, 2])]], TABLE, 8)
  assert cut.truncated == 1 and cut.tokens[0, -1] == TABLE[0, 1] and cut.code_pos[0].tolist() == [6, 7]


# "full" (the whole vocabulary's loss) took 4x the time of "level" in one run: slow tier; the fast tier keeps "level".
@pytest.mark.parametrize("mode", [pytest.param("full", marks=pytest.mark.slow), "level"])
def test_tied_new_rows_train_and_pretrained_rows_stay_bit_identical(mode):
  mc, params = _model()
  ex = _examples()
  part = opt.Partition(new_token_start=START, frozen_layers=2, input_rows=True, code_head=False)
  batch = {k: jnp.asarray(v) for k, v in _slice(ex, np.arange(10)).items()}
  # The trap: through the tied head, the full-vocabulary loss reaches every pretrained row.
  targets = jnp.asarray(TABLE[np.arange(L), ex.codes[:10]])

  def naive(p):  # the causal-LM loss on the whole tied model
    logits = llama.forward(p, mc, batch["tokens"], attention_mask=batch["attention_mask"])[0]
    logits = jnp.take_along_axis(logits, batch["code_pos"][..., None], axis=1)
    return llama.softmax_cross_entropy(logits, targets).sum()

  g_all = jax.grad(naive)(params)
  assert np.abs(np.asarray(g_all["embed"]["embedding"][:START])).max() > 0
  trainable = opt.split(params, mc, part)
  tx, _ = opt.make_group_optimizer(trainable, {"rows": 1e-2, "layers": 1e-3}, 20, warmup_fraction=0.0)
  state = tx.init(trainable)
  n_trainable = sum(x.size for x in jax.tree.leaves(trainable))
  moments = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
  assert sum(x.size for m in moments for x in jax.tree.leaves((m.mu, m.nu))) == 2 * n_trainable
  assert n_trainable == (256 - START) * 64 + sum(x.size // 3 for x in jax.tree.leaves(params["layers"]))
  step = ce.make_step(mc, part, tx, mode=mode, cached=False)
  losses = []
  for _ in range(6):
    trainable, state, m = step(trainable, state, params, jnp.asarray(TABLE), batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0]
  new, _ = opt.export(params, trainable, mc, part)
  np.testing.assert_array_equal(np.asarray(new["embed"]["embedding"][:START]),
                                np.asarray(params["embed"]["embedding"][:START]))
  assert np.all(np.abs(np.asarray(new["embed"]["embedding"][START:] - params["embed"]["embedding"][START:]))
                .max(axis=1) > 0)
  for a, b in zip(jax.tree.leaves(new["layers"]), jax.tree.leaves(params["layers"])):
    np.testing.assert_array_equal(np.asarray(a[:2]), np.asarray(b[:2]))
  assert np.abs(np.asarray(new["layers"]["q_proj"]["kernel"][2] - params["layers"]["q_proj"]["kernel"][2])).max() > 0
  np.testing.assert_array_equal(np.asarray(new["final_norm"]["scale"]), np.asarray(params["final_norm"]["scale"]))


def test_learning_rate_groups():
  mc, params = _model()
  part = opt.Partition(new_token_start=START, frozen_layers=2, code_head=True, final_norm=True)
  trainable = opt.split(params, mc, part)
  labels = opt.group_labels(trainable)
  assert labels["code_head"] == "rows" and labels["final_norm"]["scale"] == "layers"
  tx, sched = opt.make_group_optimizer(trainable, {"rows": 2e-3, "layers": 1e-4}, 10, warmup_fraction=0.0,
                                       grad_clip=0.0)
  assert float(sched["rows"](0)) == pytest.approx(2e-3) and float(sched["layers"](0)) == pytest.approx(1e-4)
  grads = jax.tree.map(jnp.ones_like, trainable)
  upd, _ = tx.update(grads, tx.init(trainable), trainable)
  # The first Adam step moves every coordinate by lr (g / sqrt(g^2) = 1), each group by its own lr.
  np.testing.assert_allclose(np.asarray(upd["code_head"]), -2e-3, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(upd["layers"]["up_proj"]["kernel"]), -1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match="no learning rate"):
    opt.make_group_optimizer(trainable, {"rows": 1e-3}, 10)


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
@pytest.mark.parametrize("frozen,mode", [(1, "trie"), (3, "level"), (2, "full")])
def test_cached_training_equals_uncached(frozen, mode, tmp_path):
  mc, params = _model()
  ex = _examples(12)
  part = opt.Partition(new_token_start=START, frozen_layers=frozen, code_head=True, final_norm=True)
  cache = fc.build(params, mc, ex, frozen_layers=frozen, directory=tmp_path / "cache", batch_size=5)
  assert cache.kind == ("code_positions" if frozen == 3 else "layer_input")
  trainable = opt.split(params, mc, part)
  # Move the trainable parts away from the pretrained values, so the comparison is not at a special point.
  trainable = _perturbed(trainable, 0.05)
  idx = np.array([1, 4, 5, 9, 11])
  allowed = code_loss.trie_children_mask(ex.codes, ex.codes, K)
  table = jnp.asarray(TABLE)

  def value_and_grad(batch, cached):
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    if mode == "trie":
      batch["allowed"] = jnp.asarray(allowed[np.sort(idx)])
    fn = lambda t: ce.loss_fn(t, params, batch, config=mc, part=part, token_table=table, mode=mode,
                              cached=cached)[0]
    return jax.value_and_grad(fn)(trainable)

  lc, gc = value_and_grad(cache.batch(idx), True)
  lu, gu = value_and_grad(_slice(ex, np.sort(idx)), False)
  assert float(lc) == pytest.approx(float(lu), abs=1e-5)
  assert float(lc) > 0.1
  for a, b in zip(jax.tree.leaves(gc), jax.tree.leaves(gu)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(gc)) > 1e-3


def test_cache_resumes_and_notices_changed_weights(tmp_path):
  mc, params = _model()
  ex = _examples(6)
  a = fc.build(params, mc, ex, frozen_layers=2, directory=tmp_path, batch_size=4)
  first = np.array(a.states)  # the file is rewritten below
  assert 0 < a.compile_seconds < a.seconds and (tmp_path / "states.npy").exists()
  b = fc.build(params, mc, ex, frozen_layers=2, directory=tmp_path, batch_size=4)
  assert b.seconds == 0 and isinstance(b.states, np.memmap)
  np.testing.assert_array_equal(first, np.asarray(b.states))
  changed = jax.tree.map(lambda x: x, params)
  changed["layers"] = jax.tree.map(lambda x: x * 1.01, params["layers"])
  c = fc.build(changed, mc, ex, frozen_layers=2, directory=tmp_path, batch_size=4)
  assert c.seconds > 0 and np.abs(np.asarray(c.states) - first).max() > 0
  assert fc.cache_nbytes(2555, 64, 576, 2, top_layers=True) == 2555 * 64 * 576 * 4


def test_fit_from_cache_learns_and_exports_a_plain_llama():
  mc, params = _model()
  ex = _examples(16, seq_len=16)
  part = opt.Partition(new_token_start=START, frozen_layers=2, code_head=True)
  cache = fc.build(params, mc, ex, frozen_layers=2, batch_size=8)
  cfg = ce.EngineConfig(epochs=25, batch_size=8, lr_rows=3e-2, lr_layers=3e-3, warmup_fraction=0.0)
  trainable, hist = ce.fit(cache, params, mc, part, TABLE, cfg=cfg, log_every=10)
  assert hist[-1]["loss"] < 0.5 * hist[0]["loss"] and hist[-1]["accuracy"] > 0.9
  # The exported model (untied head) gives the engine's code logits through llama.forward.
  new, new_cfg = opt.export(params, trainable, mc, part)
  assert not new_cfg.tie_embeddings and new["lm_head"]["kernel"].shape == (64, 256)
  np.testing.assert_array_equal(np.asarray(new["embed"]["embedding"]), np.asarray(params["embed"]["embedding"]))
  logits, _ = llama.forward(new, new_cfg, jnp.asarray(ex.tokens), attention_mask=jnp.asarray(ex.attention_mask))
  at = np.take_along_axis(np.asarray(logits), ex.code_pos[..., None], axis=1)        # [N, L, V]
  engine = ce.code_logits(ce.code_hidden(trainable, params, mc, part, cache.batch(np.arange(16)), cached=True),
                          trainable, params, mc, part, jnp.asarray(TABLE), "level")
  np.testing.assert_allclose(np.stack([at[:, l, TABLE[l]] for l in range(L)], 1), np.asarray(engine), atol=1e-4)
  with pytest.raises(ValueError, match="stale"):
    ce.fit(cache, params, mc, opt.Partition(START, 2, input_rows=True), TABLE, cfg=cfg)


def test_prototype_rows_give_signal_before_training():
  mc, params = _model()
  rng = np.random.default_rng(3)
  encoded = []
  for i in range(16):  # a code's examples share their last prompt tokens: prototypes can tell codes apart
    c0, c1 = i % K, (i // K) % K
    prompt = rng.integers(3, START, 5).tolist() + [100 + c0, 100 + c0]
    encoded.append(np.asarray(prompt + [int(TABLE[0, c0]), int(TABLE[1, c1])], np.int32))
  ex = fc.code_examples(encoded, TABLE, 16)
  part = opt.Partition(new_token_start=START, frozen_layers=3, code_head=True)
  cache = fc.build(params, mc, ex, frozen_layers=3, batch_size=8)
  trainable = opt.split(params, mc, part)
  batch = cache.batch(np.arange(16))

  def level0_accuracy(t):
    logits = ce.code_logits(ce.code_hidden(t, params, mc, part, batch, cached=True), t, params, mc, part,
                            jnp.asarray(TABLE), "level")
    return code_loss.per_level_accuracy(np.asarray(logits), batch["codes"])[0]

  rows = ce.prototype_rows(cache, params, mc, part, TABLE)
  norms = np.linalg.norm(np.asarray(rows), axis=-1)
  ref = np.linalg.norm(np.asarray(params["embed"]["embedding"][:START]), axis=-1).mean()
  np.testing.assert_allclose(norms, ref, rtol=1e-4)
  proto, before = level0_accuracy({**trainable, "code_head": rows}), level0_accuracy(trainable)
  assert proto >= 0.75 and proto > before + 0.25, (proto, before)  # 0.94 measured (chance 0.25)


def test_run_top_equals_the_full_top_gathered_at_the_code_positions():
  """The last trainable layer runs at the code positions only (`llama.layer_at`): same values as every position."""
  mc, params = _model(num_layers=2)
  ex = _examples(6)
  x = llama.embed(params, mc, jnp.asarray(ex.tokens))
  mask, pos = jnp.asarray(ex.attention_mask), jnp.asarray(ex.code_pos)
  for top in (1, 2):
    layers = jax.tree.map(lambda a: a[-top:], params["layers"])
    full = jnp.take_along_axis(fc.run_layers(layers, mc, x, mask), pos[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(fc.run_top(layers, mc, x, mask, pos)), np.asarray(full), atol=1e-5)


@pytest.mark.parametrize("frozen", [pytest.param(3, marks=pytest.mark.slow), 2])  # fast tier: the top-layer case
def test_text_term_is_the_full_vocabulary_nll_at_prompt_positions_and_pushes_code_rows_down(frozen, tmp_path):
  """The text term at R prompt positions equals the exported model's next-token NLL there (llama.forward, full
  vocabulary including the code rows), from cached constants (whole backbone frozen) or through the trainable top;
  with the backbone frozen, training with it lowers that NLL toward the base model's."""
  mc, params = _model()
  ex = _examples(12, seq_len=16)
  part = opt.Partition(new_token_start=START, frozen_layers=frozen, code_head=True)
  cache = fc.build(params, mc, ex, frozen_layers=frozen, batch_size=8, text_positions=3, new_token_start=START,
                   directory=tmp_path / "c")
  cache = fc.build(params, mc, ex, frozen_layers=frozen, batch_size=8, text_positions=3, new_token_start=START,
                   directory=tmp_path / "c")  # loaded back from disk
  tpos, ttgt, tvalid = fc.sample_text_positions(ex.code_pos, ex.tokens, 3)
  assert (tpos[tvalid] < np.repeat(ex.code_pos[:, :1], 3, 1)[tvalid]).all()  # every target is a prompt token
  trainable = opt.split(params, mc, part)
  trainable["code_head"] = trainable["code_head"] + 0.5  # code rows that steal mass from words
  if frozen < 3:
    trainable["layers"] = jax.tree.map(lambda a: a * 1.1, trainable["layers"])  # a top away from the base

  def reference(t):
    new, new_cfg = opt.export(params, t, mc, part)
    logits, _ = llama.forward(new, new_cfg, jnp.asarray(ex.tokens), attention_mask=jnp.asarray(ex.attention_mask))
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
    at = np.take_along_axis(np.asarray(logp), tpos[..., None].repeat(logp.shape[-1], -1), axis=1)  # [N, R, V]
    nll = -np.take_along_axis(at, ttgt[..., None], axis=-1)[..., 0]
    return float(nll[tvalid].mean())

  batch = {k: jnp.asarray(v) for k, v in cache.batch(np.arange(12)).items()}
  _, m = ce.loss_fn(trainable, params, batch, config=mc, part=part, token_table=jnp.asarray(TABLE), mode="level",
                    cached=True, text_weight=1.0)
  engine = float(m["text_nll"])
  assert engine == pytest.approx(reference(trainable), abs=1e-4)
  cfg = ce.EngineConfig(epochs=10, batch_size=6, lr_rows=3e-2, lr_layers=1e-3, warmup_fraction=0.0, text_weight=1.0)
  trained, hist = ce.fit(cache, params, mc, part, TABLE, cfg=cfg, trainable=trainable, log_every=5)
  assert "text_nll" in hist[-1]
  if frozen == 3:
    base = float(jnp.mean(batch["text_lse"] - batch["text_logit"], where=batch["text_valid"]))
    after = reference(trained)
    assert after < engine - 0.05 and after >= base - 1e-4, (engine, after, base)
    with pytest.raises(ValueError, match="text_positions"):
      ce.fit(fc.build(params, mc, ex, frozen_layers=3, batch_size=8), params, mc, part, TABLE, cfg=cfg)


def _input_rows_setup(tmp_path, n=12):
  """A tiny model, its examples and a cache with the prompts' keys and values (float32, so equality is exact)."""
  mc, params = _model()
  rng = np.random.default_rng(5)
  encoded = []
  for i in range(n):  # several children per prefix, so level 2 is a decision under the trie loss
    prompt = rng.integers(3, START, rng.integers(4, 12)).tolist()
    encoded.append(np.asarray(prompt + [int(TABLE[0, i % K]), int(TABLE[1, (i // K) % K]), 2, 10], np.int32))
  ex = fc.code_examples(encoded, TABLE, 16)
  cache = fc.build(params, mc, ex, frozen_layers=3, batch_size=5, prefix_kv="float32", directory=tmp_path / "c")
  part = opt.Partition(new_token_start=START, frozen_layers=3, input_rows=True, code_head=True)
  return mc, params, ex, cache, part


def test_input_rows_from_the_cached_prompt_equal_uncached_training(tmp_path):
  """Training the code tokens' input rows (`train.code_inputs_epochs`): the cache keeps the prompt's keys and values,
  the step recomputes the code token through every frozen layer; loss and gradients (input and output rows) equal
  the full model's within 1e-5, and the level-2 state really follows the input row."""
  mc, params, ex, cache, part = _input_rows_setup(tmp_path)
  again = fc.build(params, mc, ex, frozen_layers=3, batch_size=5, prefix_kv="float32", directory=tmp_path / "c")
  assert again.seconds == 0 and isinstance(again.prefix["kv"], np.memmap)  # loaded back from disk
  assert fc.prefix_kv_nbytes(int((ex.code_pos[:, 0] + 1).sum()), mc, "float32") == again.prefix["kv"].nbytes
  trainable = opt.split(params, mc, part)
  assert set(opt.group_labels(trainable).values()) >= {"inputs", "rows"}
  trainable = _perturbed(trainable, 0.3)
  idx = np.array([1, 4, 5, 9, 11])
  allowed = code_loss.trie_children_mask(ex.codes, ex.codes, K)
  table = jnp.asarray(TABLE)

  def value_and_grad(batch, cached):
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    batch["allowed"] = jnp.asarray(allowed[np.sort(idx)])
    fn = lambda t: ce.loss_fn(t, params, batch, config=mc, part=part, token_table=table, mode="trie",
                              cached=cached)[0]
    return jax.value_and_grad(fn)(trainable)

  lc, gc = value_and_grad(again.batch(idx, prefix=True), True)
  lu, gu = value_and_grad(_slice(ex, np.sort(idx)), False)
  assert float(lc) == pytest.approx(float(lu), abs=1e-5) and float(lc) > 0.1
  for a, b in zip(jax.tree.leaves(gc), jax.tree.leaves(gu)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  level1_rows = TABLE[0, ex.codes[np.sort(idx), 0]] - START
  assert np.abs(np.asarray(gc["new_rows"])[level1_rows]).max() > 1e-3  # the input rows get a gradient
  # Without the keys and values the cached states are the ones of the untrained input rows (stale).
  stale = ce.loss_fn(trainable, params, {k: jnp.asarray(v) for k, v in again.batch(idx).items()}
                     | {"allowed": jnp.asarray(allowed[np.sort(idx)])}, config=mc, part=part, token_table=table,
                     mode="trie", cached=True)[0]
  assert abs(float(stale) - float(lc)) > 1e-3
  with pytest.raises(ValueError, match="prefix_kv"):
    ce.fit(fc.build(params, mc, ex, frozen_layers=3, batch_size=5), params, mc, part, TABLE)


@pytest.mark.slow  # a fit, an export and beam searches: the fast tier keeps the cached == uncached test
def test_trained_input_rows_export_a_plain_llama_that_decodes_what_was_scored(tmp_path):
  """fit with input rows, export: `llama.forward` on the exported model gives the engine's code logits, and the
  trie beam search (normalised like the trie loss) returns the tool the objective scores highest, with its score."""
  from toolgen_jax.decoding import beam_search as bs
  from toolgen_jax.decoding import constrained
  from toolgen_jax.decoding import trie as trie_lib2
  mc, params, ex, cache, part = _input_rows_setup(tmp_path, n=16)
  allowed = code_loss.trie_children_mask(ex.codes, ex.codes, K)
  cfg = ce.EngineConfig(loss="trie", epochs=20, batch_size=8, lr_rows=3e-2, lr_inputs=3e-2, warmup_fraction=0.0)
  trainable, hist = ce.fit(cache, params, mc, part, TABLE, cfg=cfg, allowed=allowed, log_every=10)
  assert hist[-1]["loss"] < hist[0]["loss"]
  new, new_cfg = opt.export(params, trainable, mc, part)
  np.testing.assert_array_equal(np.asarray(new["embed"]["embedding"][:START]),
                                np.asarray(params["embed"]["embedding"][:START]))
  assert np.abs(np.asarray(new["embed"]["embedding"][START:] - params["embed"]["embedding"][START:])).max() > 0
  logits, _ = llama.forward(new, new_cfg, jnp.asarray(ex.tokens), attention_mask=jnp.asarray(ex.attention_mask))
  at = np.take_along_axis(np.asarray(logits), ex.code_pos[..., None], axis=1)
  batch = cache.batch(np.arange(16), prefix=True)
  engine = np.asarray(ce.code_logits(ce.code_hidden(trainable, params, mc, part, batch, cached=True), trainable,
                                     params, mc, part, jnp.asarray(TABLE), "trie"))
  np.testing.assert_allclose(np.stack([at[:, l, TABLE[l]] for l in range(L)], 1), engine, atol=1e-4)
  tools = np.unique(ex.codes, axis=0)
  trie = trie_lib2.Trie.build(tools, code_tokens=TABLE).device()
  kids = code_loss.trie_children_mask(tools, tools, K)
  for i in (0, 5):
    n = int(ex.code_pos[i, 0]) + 1
    tokens, mask = constrained.left_pad([ex.tokens[i, :n].tolist()], 0, multiple=8)
    first, kv = constrained.prefill(new, new_cfg, jnp.asarray(tokens), jnp.asarray(mask), trie.depth)
    res = bs.trie_beam_search(constrained.LlamaStep(new_cfg), llama.reorder_cache, new, first, kv, trie,
                              beam_size=len(tools), normalize="trie")
    # The objective's score of every tool for this prompt: level 1 from the cached state, level 2 recomputed with
    # the tool's own first code as input.
    scores = []
    for t, code in enumerate(tools):
      b = cache.batch(np.array([i]), prefix=True)
      b["code_tokens"] = np.asarray([[TABLE[0, code[0]]]], np.int32)
      b["codes"] = code[None].astype(np.int32)
      b["allowed"] = kids[t:t + 1]
      scores.append(-float(ce.loss_fn(trainable, params, {k: jnp.asarray(v) for k, v in b.items()}, config=mc,
                                      part=part, token_table=jnp.asarray(TABLE), mode="trie", cached=True)[0]) * L)
    best = int(np.argmax(scores))
    assert int(res.tool_ids[0][0]) == best
    assert float(res.scores[0][0]) == pytest.approx(scores[best], abs=1e-4)
