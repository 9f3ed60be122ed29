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


# ---- the paper's loop (Toolscaler section 4.2, App. D iv) on a tiny model ----------------------------------------

N_TOOLS, K = 12, 3


@pytest.fixture(scope="module")
def tiny_paper():
  return _tiny_paper_setup()


def _tiny_paper_setup():
  """A tiny Llama with the T0..T3 code tokens of a 2-position x 2-level residual k-means codebook, fitted on the
  model's own hidden states of 12 tool documents (the last two positions: a stand-in for the V = 2 gist outputs)."""
  import jax

  from _training_helpers import ByteChatTokenizer, code_tokens
  from toolgen_jax.codebook import residual_kmeans as rkm
  from toolgen_jax.models import llama
  from toolgen_jax.models.vocab import Model
  tok = ByteChatTokenizer(code_tokens(4, K))
  mcfg = llama.LlamaConfig.tiny(vocab_size=tok.vocab_size)
  params = llama.init_params(mcfg, jax.random.key(0))
  docs = np.stack([np.frombuffer(f"tool number {i:02d} does thing {i * 7 % 13:02d}".encode(), np.uint8)
                   for i in range(N_TOOLS)]).astype(np.int32)

  def compress(p, cfg=mcfg):  # [N, 2, D]: a real pass of the model whose parameters it is given
    h, _ = llama.hidden_states(p, cfg, jax.numpy.asarray(docs))
    return np.asarray(h[:, -2:], np.float32)

  qcfg = rkm.ResidualKMeansConfig(pca_dim=3, num_levels=2, codebook_size=K, kmeans_iters=20)
  quant = lambda emb: cb_lib.from_residual_kmeans(qcfg, emb, tool_names=[str(i) for i in range(N_TOOLS)],
                                                  resolve=False)
  model = Model(config=mcfg, params=params, tokenizer=tok, new_token_start=256)
  return model, compress, quant


def test_paper_loop_order_of_steps_with_plain_hooks():
  """Fast tier: the order of the paper's steps per round, on plain Python hooks (the tiny-model test below is slow):
  Token update and a codebook per epoch, all on the round's frozen parameters, then tokens, reframed rows, training."""
  from toolgen_jax.training import refinement

  class CB:
    def __init__(self, codes):
      self.codes = np.asarray(codes)

  log = []
  frozen = {0: {"theta": 0}}

  def train(p, cb, m, t):
    log.append(("train", t, p["theta"]))
    out = {"theta": t + 1}
    frozen[t + 1] = out
    return out

  params, cb, model, hist = refinement.paper_refinement(
      frozen[0], CB(np.zeros((3, 4), int)), "model", iterations=2, token_epochs=2, token_state=0,
      update_tokens=lambda s, p, m, cb, t, e: (log.append(("update", t, e, p is frozen[t])), s + 1)[1],
      compress=lambda s, p, m, t: (log.append(("compress", t, s, p is frozen[t])), np.full((3, 2, 5), s))[1],
      quantize=lambda emb, old, t, e: (log.append(("quantize", t, e)), CB(old.codes + 1))[1],
      add_tokens=lambda p, m, cb: (log.append(("tokens", t_of(p))), (p, m))[1],
      reframe=lambda p, m, cb, emb: (log.append(("reframe", int(emb[0, 0, 0]))), p)[1], train=train)
  assert log == [("update", 0, 0, True), ("compress", 0, 1, True), ("quantize", 0, 0),
                 ("update", 0, 1, True), ("compress", 0, 2, True), ("quantize", 0, 1),
                 ("tokens", 0), ("reframe", 2), ("train", 0, 0),
                 ("update", 1, 0, True), ("compress", 1, 3, True), ("quantize", 1, 0),
                 ("update", 1, 1, True), ("compress", 1, 4, True), ("quantize", 1, 1),
                 ("tokens", 1), ("reframe", 4), ("train", 1, 1)]
  assert params == {"theta": 2} and cb.codes.shape == (3, 4) and int(cb.codes[0, 0]) == 4
  assert [(h.round, h.codebooks, h.changed_tools) for h in hist] == [(0, 2, 3), (1, 2, 3)]


def t_of(p):
  return p["theta"]


@pytest.mark.slow  # compiles the tiny model's pass and residual k-means: ~270 s on the loaded 2-core VM
@pytest.mark.parametrize("token_epochs", [0, 2])
def test_paper_loop_follows_the_round_structure_on_a_tiny_model(token_epochs, tiny_paper):
  """Two iterations: each re-derives the tools with the parameters the previous one left (the very object, frozen:
  no hook before `train` gets other parameters, and they come out bit-identical), refits the codebook (once per
  Token-update epoch), re-initialises every code token's row by the reframed embedding of the new codebook, then
  trains; the code length (2 positions x 2 levels) and every T_l token stay."""
  import jax

  from toolgen_jax.codebook import code_vectors
  from toolgen_jax.training import refinement
  model, compress, quant = tiny_paper
  cb0 = quant(compress(model.params))
  assert cb0.codes.shape[1] == 4
  seen = {"compress": [], "update": [], "quantize": [], "train": []}
  snapshot = {}

  def c_hook(state, p, m, t):
    seen["compress"].append((t, p, state))
    snapshot.setdefault(t, jax.tree.map(np.array, p))
    return compress(p)

  def update(state, p, m, cb, t, e):
    seen["update"].append((t, e, p))
    return (state or 0) + 1   # the Token state each epoch's compression reads

  def q_hook(emb, old, t, e):
    seen["quantize"].append((t, e))
    assert emb.shape == (N_TOOLS, 2, model.config.hidden_size)
    return quant(emb)

  def train(p, cb, m, t):
    # The rows it starts from are the reframed embedding of the round's codebook, on the round's embeddings.
    emb = compress(seen["compress"][-1][1])
    levels = code_vectors.reframe_code_vectors(cb, emb, None)
    for level in range(4):
      for c in range(K):
        row = np.asarray(p["embed"]["embedding"])[m.tokenizer.token_to_id(f"<T{level}_{c}>")]
        np.testing.assert_allclose(row, levels[level][c], rtol=1e-5, atol=1e-6)
    seen["train"].append((t, cb.codes.shape[1]))
    return jax.tree.map(lambda x: x + 0.01 * jax.numpy.ones_like(x), p)  # theta_t != theta_{t-1}

  params, cb, m, hist = refinement.paper_refinement(
      model.params, cb0, model, iterations=2, compress=c_hook, quantize=q_hook, train=train,
      update_tokens=update if token_epochs else None, token_epochs=token_epochs)
  assert [h.round for h in hist] == [0, 1] and all(h.codebooks == max(token_epochs, 1) for h in hist)
  assert seen["quantize"] == [(t, e) for t in range(2) for e in range(max(token_epochs, 1))]
  assert seen["train"] == [(0, 4), (1, 4)] and cb.codes.shape[1] == 4
  assert seen["update"] == [] if not token_epochs else [(t, e) for t, e, _ in seen["update"]] == [
      (t, e) for t in range(2) for e in range(token_epochs)]
  # Round 0 reads the first alignment's parameters, round 1 what round 0 trained: the same objects, unchanged.
  firsts = {t: p for t, p, _ in reversed(seen["compress"])}
  assert firsts[0] is model.params and firsts[1] is not model.params
  assert all(p is firsts[t] for t, p, _ in seen["compress"]) and all(p is firsts[t] for t, _, p in seen["update"])
  for t in (0, 1):
    jax.tree.map(np.testing.assert_array_equal, snapshot[t], jax.tree.map(np.array, firsts[t]))
  np.testing.assert_allclose(np.asarray(firsts[1]["layers"]["q_proj"]["kernel"]),
                             np.asarray(model.params["layers"]["q_proj"]["kernel"]) + 0.01, rtol=1e-6)
  if token_epochs:  # each epoch's compression read the Token state that epoch's update left
    assert [s for _, _, s in seen["compress"]] == [1, 2, 3, 4]
  members = token_members(cb)
  assert all(any(members[level * K + c] for c in range(K)) for level in range(4))


def test_paper_form_retrains_every_stage_and_is_the_paper_configs_default():
  """The round's training is every stage (the paper's L_tool + L_traj: 5 retrieval + 2 trajectory epochs), not only
  the last one; `configs/toolscaler.py:paper` runs it with the paper's gist settings (section 4.1)."""
  spec = importlib.util.spec_from_file_location("toolscaler", ROOT / "configs" / "toolscaler.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("paper")
  assert c.train.refine_form == "paper" and c.train.refine_rounds == 2
  e = c.encoder
  assert (e.kind, e.gist_form, e.gist_lora_rank, e.gist_lora_alpha, e.gist_lora_dropout, e.gist_learning_rate,
          e.gist_weight_decay, e.gist_batch_size) == ("gist", "cascade", 32, 128.0, 0.1, 1e-3, 1e-4, 12)
  assert e.gist_patience > 0
  from toolgen_jax.codebook import gist
  g = gist.config_from(e)
  assert (g.form, g.lora_rank, g.lora_alpha, g.lora_dropout, g.weight_decay, g.batch_size, g.tasks) == (
      "cascade", 32, 128.0, 0.1, 1e-4, 12, ("name", "description", "parameters"))
  assert mod.get_config("real").train.refine_form == "last_stage"  # its BENCHMARKS figures were measured so


# ---- step (0): the Token update against the frozen model --------------------------------------------------------

def test_token_gradient_is_the_gradient_of_the_composition():
  """The two-pass gradient (rows from a tape-free forward, then chunked VJPs of the tools whose code the loss reads)
  equals jax.grad of loss(first_level_rows(gist(token_rows))) in one piece."""
  import jax
  import jax.numpy as jnp

  from toolgen_jax.training import refinement
  rng = np.random.default_rng(0)
  n, p, d, levels, size = 10, 2, 4, 2, 3
  x = jnp.asarray(rng.normal(size=(n, p, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, d)), jnp.float32)
  gist_fn = lambda r, lo, hi: jnp.tanh(x[lo:hi] @ w + r[None])
  codes = rng.integers(0, size, (n, p * levels)).astype(np.int32)
  codes[:3, 0] = 2                      # code 2 of position 0 has members...
  codes[3:, 0] = rng.integers(0, 2, n - 3)
  active = np.ones(n, bool)
  active[-1] = False                    # an inactive row is no member
  target = jnp.asarray(rng.normal(size=(p, size, d)), jnp.float32)
  loss_of_rows = lambda rows, counts: jnp.sum((rows[0, 2] - target[0, 2]) ** 2) + jnp.sum(rows[1] * target[1])
  r0 = jnp.asarray(rng.normal(size=(p, d)), jnp.float32)
  loss, g = refinement.token_gradient(r0, gist_fn, n, loss_of_rows, codes, active, levels, size, chunk=3)
  full = lambda r: loss_of_rows(*refinement.first_level_rows(gist_fn(r, 0, n), codes, active, levels, size))
  np.testing.assert_allclose(float(loss), float(full(r0)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(full)(r0)), rtol=1e-5, atol=1e-6)
  rows, counts = refinement.first_level_rows(gist_fn(r0, 0, n), codes, active, levels, size)
  m = (codes[:, 0] == 2) & active
  np.testing.assert_allclose(np.asarray(rows[0, 2]), np.asarray(gist_fn(r0, 0, n))[m, 0].mean(0), rtol=1e-6)
  assert float(counts[0, 2]) == m.sum()


@pytest.mark.slow  # compiles the gist pass, its VJP and the model's loss: ~280 s on the loaded 2-core VM
def test_token_update_lowers_the_frozen_models_tool_loss_and_leaves_it_untouched(tiny_paper):
  """On a tiny model: the tool tokens' first-level rows are member means of the gist outputs; Adam steps on the V
  Token rows alone (the model frozen) lower the model's loss on code targets; the model's parameters are
  bit-identical afterwards."""
  import jax
  import jax.numpy as jnp
  import optax

  from toolgen_jax.codebook import gist
  from toolgen_jax.training import refinement
  model, compress, quant = tiny_paper
  frozen = model.params
  before = jax.tree.map(np.array, frozen)
  cb = quant(compress(frozen))
  gp, gcfg, gid = gist.add_gist_tokens(frozen, model.config, 2)
  docs = np.asarray([[1 + (7 * i + j) % 200 for j in range(10)] for i in range(N_TOOLS)], np.int32)
  jitted = jax.jit(lambda r, c: gist.token_outputs(
      {**gp, "embed": {"embedding": gp["embed"]["embedding"].at[gid].set(r)}}, gcfg, c, jnp.ones(c.shape, jnp.int32),
      jnp.asarray(gid)))
  gfn = lambda r, lo, hi: jitted(r, jnp.asarray(docs[lo:hi]))
  tok = model.tokenizer
  ids = np.asarray([[tok.token_to_id(f"<T{2 * q}_{k}>") for k in range(K)] for q in range(2)])
  # A batch: a prompt, then the first-level code tokens of tools 0..3 as targets.
  seqs = [[5, 6, 7] + [int(ids[0, cb.codes[i, 0]]), int(ids[1, cb.codes[i, 2]])] for i in range(4)]
  tokens = np.asarray(seqs, np.int32)
  batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "attention_mask": np.ones((4, 4), np.int32),
           "weights": np.asarray([[0, 0, 1, 1]] * 4, np.float32)}
  loss_fn = jax.jit(lambda r, k: refinement.tool_loss_with_rows(frozen, model.config, ids, r, k, batch))
  rows = gp["embed"]["embedding"][gid]
  opt = optax.adam(5e-2)
  state = opt.init(rows)
  losses = []
  for _ in range(6):
    loss, g = refinement.token_gradient(rows, gfn, N_TOOLS, loss_fn, cb.codes, cb.active, 2, K, chunk=6)
    losses.append(float(loss))
    upd, state = opt.update(g, state, rows)
    rows = optax.apply_updates(rows, upd)
  assert losses[-1] < losses[0] - 1e-3, losses
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, frozen))


@pytest.mark.slow  # trains a (2-step) gist encoder, builds codebooks and runs the Token update: minutes on a loaded CPU
def test_paper_refinement_through_the_pipeline_keeps_the_code_length(tmp_path):
  """`train.refine_form='paper'` with one Token-update epoch per round, through `pipeline.refine`: two rounds, each
  re-deriving the tools on the parameters it was given, the round's codebook stored with its embeddings; 4 code
  positions throughout, and the model handed to training carries the reframed rows of the round's codebook."""
  import jax

  from toolgen_jax.codebook import code_vectors
  config = _tiny_gist_config()
  config.train.refine_form = "paper"
  config.train.refine_token_epochs = 1
  wd = Workdir(tmp_path)
  ds = pipeline.load_corpus(config, wd)
  emb = pipeline.load_embeddings(config, wd, ds)
  cb = pipeline.load_codebook(config, wd, ds, emb)
  model = pipeline.build_model(config, wd, ds, cb)
  before = jax.tree.map(np.array, model.params)
  seen = []

  def train(params, codebook, m, r):
    round_emb = np.load(tmp_path / f"codebook_refine{r}" / "emb.npy")
    levels = code_vectors.reframe_code_vectors(codebook, round_emb, None)
    c = int(codebook.codes[0, 0])
    row = np.asarray(params["embed"]["embedding"])[m.tokenizer.token_to_id(token_string("codes", 0, c))]
    np.testing.assert_allclose(row, levels[0][c], rtol=1e-5, atol=1e-5)
    seen.append((r, codebook.codes.shape[1]))
    return params

  _, new, _ = pipeline.refine(config, wd, ds, model.params, cb, model, rounds=2, train=train)
  assert seen == [(0, 4), (1, 4)] and new.num_levels == 4
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, model.params))
  assert (tmp_path / "codebook_refine1" / "emb.npy").exists()
