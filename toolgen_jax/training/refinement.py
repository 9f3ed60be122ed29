"""Toolscaler's post-guided refinement as loops over explicit state (params, codebook, model) -> next round.

Two loops, `train.refine_form` picks one:

  paper       Toolscaler section 4.2 and App. D (iv), `paper_refinement`, the default of `configs/toolscaler.py:paper`.
              Iteration t = 1..T (T = 2 in the paper) starts from the model theta_{t-1} that the previous
              iteration (or the first alignment) left, and holds it frozen while the tools are re-derived:
                (0) the Token (gist) embeddings are updated against the frozen theta_{t-1} with L_tool + L_traj
                    (`update_tokens`; for a gist codebook `gist_token_hooks`: the tool tokens' first-level rows are
                    the member means of the gist outputs, so the loss reaches the V Token rows through them), and a
                    new codebook is generated at the end of each such epoch (`train.refine_token_epochs`; 0 = none);
                (i) compression: every tool re-embedded by the gist encoder mounted on theta_{t-1} (`compress`);
               (ii) PCA + residual k-means re-fitted on those embeddings: the round's codebook (`quantize`);
              (iii) reframed embedding: every code token's row re-initialised from the new codebook (`reframe`,
                    `reframed_rows`: member means of the gist outputs, inverse PCA of residual centroids);
               then the model is trained again on every stage, L_tool (query -> tool codes) + L_traj
              (trajectories) (`train`: 5 retrieval + 2 trajectory epochs in the paper).
  last_stage  the loop this project ran before (a named option; the `:real` figures in BENCHMARKS were measured with
              it), `post_guided_refinement`: re-embed with the trained model, re-quantise, keep the trained rows of
              the existing code tokens (only the tool -> code assignment moves), retrain the last stage only.

The hooks are the pipeline's (they know the workdir); the loops own no I/O. The numerics of steps (0) and (iii) sit
below the loops, each in one function (`token_gradient`, `tool_loss_with_rows`, `reframed_rows`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolgen_jax.code_vocab import CodeVocabulary, token_string
from toolgen_jax.codebook import code_vectors, gist
from toolgen_jax.codebook import codebook as cb_lib
from toolgen_jax.models import llama
from toolgen_jax.models import lora as lora_lib
from toolgen_jax.models import vocab as vocab_lib
from toolgen_jax.training import input_pipeline as ip
from toolgen_jax.training import stages

FORMS = ("paper", "last_stage")


@dataclasses.dataclass
class RefinementRound:
  round: int
  changed_tools: int      # tools whose code changed in this round (-1: the codebooks have different rows)
  metrics: dict
  codebooks: int = 1      # codebooks fitted in the round (paper: one per Token-update epoch, at least one)


def changed_tools(old_codes: np.ndarray, new_codes: np.ndarray) -> int:
  """Rows whose code differs (a collision suffix level may come or go: codes are compared -1 padded)."""
  old_codes, new_codes = np.asarray(old_codes), np.asarray(new_codes)
  if old_codes.ndim != 2 or new_codes.ndim != 2 or len(old_codes) != len(new_codes):
    return -1
  w = max(old_codes.shape[1], new_codes.shape[1])
  pad = lambda c: np.pad(c, ((0, 0), (0, w - c.shape[1])), constant_values=-1)
  return int(np.any(pad(old_codes) != pad(new_codes), axis=-1).sum())


def add_code_tokens(params: Any, model: vocab_lib.Model, codebook: Any, *, seed: int = 0,
                    pad_to_multiple: int = 1, log: Callable[[str], None] = print) -> tuple[Any, vocab_lib.Model]:
  """Adds the code tokens `codebook` needs and `model.tokenizer` lacks (random init) to the trained `params`, and
  grows `model.params` (the pre-training weights, kept for the perplexity comparison) to the same vocabulary.
  Returns (params, model)."""
  missing = CodeVocabulary.missing_tokens(codebook, model.tokenizer)
  if not missing:
    return params, model
  log(f"[refine] adding {len(missing)} code tokens the new codes need ({missing[0]}...)")
  kw = dict(rng=int(seed), pad_to_multiple=int(pad_to_multiple))
  params, mcfg, tok = vocab_lib.extend_vocab(params, model.config, model.tokenizer, missing, "random", **kw)
  # The tokenizer now holds the tokens: this call only grows the base weights to the new vocabulary size.
  base, _, _ = vocab_lib.extend_vocab(model.params, model.config, tok, missing, "random", **kw)
  return params, dataclasses.replace(model, params=base, config=mcfg, tokenizer=tok)


def post_guided_refinement(params: Any, codebook: Any, model: vocab_lib.Model, *, rounds: int,
                           embed_tools: Callable[[Any, vocab_lib.Model, int], np.ndarray],
                           quantize: Callable[[np.ndarray, Any, int], Any],
                           train: Callable[[Any, Any, vocab_lib.Model, int], Any],
                           add_tokens: Callable[[Any, vocab_lib.Model, Any], tuple[Any, vocab_lib.Model]] | None = None,
                           ) -> tuple[Any, Any, vocab_lib.Model, list[RefinementRound]]:
  """T = `rounds` rounds of: `embed_tools(params, model, r)` -> [N, D] or [N, V, D] (the first codebook's space);
  `quantize(emb, codebook, r)` -> the new codebook; `add_tokens(params, model, new)` -> (params, model) (default
  `add_code_tokens`); `train(params, new, model, r)` -> params. Returns (params, codebook, model, one
  `RefinementRound` per round)."""
  add_tokens = add_tokens or (lambda p, m, cb: add_code_tokens(p, m, cb))
  history = []
  for r in range(rounds):
    new = quantize(np.asarray(embed_tools(params, model, r)), codebook, r)
    changed = changed_tools(codebook.codes, new.codes)
    params, model = add_tokens(params, model, new)
    codebook = new
    params = train(params, codebook, model, r)
    history.append(RefinementRound(round=r, changed_tools=changed, metrics={}))
  return params, codebook, model, history


# ---- the paper's loop (section 4.2, App. D iv) -------------------------------------------------------------------

def set_code_rows(params: Any, model: vocab_lib.Model, codebook: Any, levels: list[np.ndarray]) -> Any:
  """`levels[l]` [K_l, D]: code c of level l's vector, written as the row of its token (`code_vocab.token_string`)
  in the input embedding, and as its output column when the head is untied (as `vocab.extend_vocab` initialises
  both). Tokens of codes without a vector (a collision suffix level) keep their rows. Returns new params."""
  ids, vecs = [], []
  for level, rows in enumerate(levels):
    for code, v in enumerate(np.asarray(rows)):
      tid = model.tokenizer.token_to_id(token_string(codebook.token_kind, level, code))
      if tid is not None:
        ids.append(tid)
        vecs.append(v)
  if not ids:
    return params
  ids_a = jnp.asarray(ids)
  emb = params["embed"]["embedding"]
  out = {**params, "embed": {"embedding": emb.at[ids_a].set(jnp.asarray(np.stack(vecs), emb.dtype))}}
  if "lm_head" in params and not model.config.tie_embeddings:
    k = params["lm_head"]["kernel"]
    out["lm_head"] = {"kernel": k.at[:, ids_a].set(jnp.asarray(np.stack(vecs).T, k.dtype))}
  return out


def reframed_rows(params: Any, model: vocab_lib.Model, codebook: Any, emb: np.ndarray) -> Any:
  """Step (iii): the code tokens' rows re-initialised by Toolscaler's reframed embedding of the round's codebook
  (`code_vectors.reframe_code_vectors` on the embeddings it was fitted on, already in the model's space: gist
  outputs [N, V, D] or the LLM's own hidden states [N, D])."""
  return set_code_rows(params, model, codebook, code_vectors.reframe_code_vectors(codebook, emb, None))


def paper_refinement(params: Any, codebook: Any, model: vocab_lib.Model, *, iterations: int,
                     compress: Callable[[Any, Any, vocab_lib.Model, int], np.ndarray],
                     quantize: Callable[[np.ndarray, Any, int, int], Any],
                     train: Callable[[Any, Any, vocab_lib.Model, int], Any],
                     reframe: Callable[[Any, vocab_lib.Model, Any, np.ndarray], Any] | None = None,
                     add_tokens: Callable[[Any, vocab_lib.Model, Any], tuple[Any, vocab_lib.Model]] | None = None,
                     update_tokens: Callable[[Any, Any, vocab_lib.Model, Any, int, int], Any] | None = None,
                     token_state: Any = None, token_epochs: int = 0,
                     ) -> tuple[Any, Any, vocab_lib.Model, list[RefinementRound]]:
  """Toolscaler's post-guided refinement (section 4.2, App. D iv; module docstring), T = `iterations` rounds.

  Hooks, t the round, e the epoch of the Token update:
    update_tokens(token_state, theta_frozen, model, codebook, t, e) -> token_state  (only with token_epochs > 0)
    compress(token_state, theta_frozen, model, t) -> [N, V, D] or [N, D]   the tools re-embedded on theta_{t-1}
    quantize(emb, codebook, t, e) -> codebook                              PCA + residual k-means, same shape
    reframe(params, model, codebook, emb) -> params                        default `reframed_rows`
    add_tokens(params, model, codebook) -> (params, model)                 default `add_code_tokens`
    train(params, codebook, model, t) -> params                            L_tool + L_traj on every stage
  theta_frozen is the params object the round started from (theta_{t-1}); no hook before `train` gets another.
  Returns (params, codebook, model, one `RefinementRound` per round)."""
  add_tokens = add_tokens or (lambda p, m, cb: add_code_tokens(p, m, cb))
  reframe = reframe or reframed_rows
  if token_epochs > 0 and update_tokens is None:
    raise ValueError("paper_refinement: token_epochs > 0 needs an update_tokens hook")
  history = []
  for t in range(iterations):
    frozen = params  # theta_{t-1}: every re-derivation below reads it, nothing trains it until `train`
    start, fits = codebook, 0
    for e in range(max(int(token_epochs), 1)):
      if token_epochs > 0:
        token_state = update_tokens(token_state, frozen, model, codebook, t, e)
      emb = np.asarray(compress(token_state, frozen, model, t))
      codebook = quantize(emb, codebook, t, e)  # a new codebook at the end of each epoch
      fits += 1
    changed = changed_tools(start.codes, codebook.codes)
    params, model = add_tokens(frozen, model, codebook)
    params = reframe(params, model, codebook, emb)
    params = train(params, codebook, model, t)
    history.append(RefinementRound(round=t, changed_tools=changed, metrics={}, codebooks=fits))
  return params, codebook, model, history


# ---- step (0): the Token update against the frozen theta_{t-1} ---------------------------------------------------
#
# The tool tokens' rows are a function of the gist Token embeddings E_tok (the V rows the gist encoder learnt,
# section 4.1): h = gist(E_tok; theta_{t-1}) [N, V, D] (the encoder's adapter mounted on the frozen model), and the
# first-level row of code c at position p is the mean of h[:, p] over c's member tools (the reframed embedding;
# deeper levels are fitted centroids, constants within an epoch). The update minimises L_tool + L_traj of the frozen
# theta_{t-1} with those rows, over E_tok only. Its gradient is exact but computed in two passes, so that the N tools
# are never all on one tape: the forward over every tool without a tape, the loss's gradient on the rows, then the
# VJP of the gist pass for the tools whose code received a gradient (`token_gradient`).

def first_level_rows(h: Any, codes: np.ndarray, active: np.ndarray, levels_per_position: int, size: int):
  """h [N, P, D] -> (rows [P, K, D]: mean of h[:, p] over the active tools whose first-level code at position p is
  c; counts [P, K]). Differentiable in h (jnp)."""
  a = jnp.asarray(active, jnp.float32)
  rows, counts = [], []
  for p in range(h.shape[1]):
    seg = jnp.asarray(codes[:, p * levels_per_position])
    cnt = jax.ops.segment_sum(a, seg, num_segments=size)
    rows.append(jax.ops.segment_sum(h[:, p] * a[:, None], seg, num_segments=size) / jnp.maximum(cnt, 1.0)[:, None])
    counts.append(cnt)
  return jnp.stack(rows), jnp.stack(counts)


def tool_loss_with_rows(params: Any, model_config: Any, token_ids: Any, rows: Any, counts: Any, batch: dict):
  """Mean target-token cross-entropy of `batch` (InputPipeline's tokens/targets/weights/attention_mask) under the
  frozen `params` whose code-token rows `token_ids` [P, K] are `rows` [P, K, D] (codes without members keep their
  row); the untied head's columns likewise (as `set_code_rows`)."""
  ids = jnp.asarray(token_ids).reshape(-1)
  keep = (counts.reshape(-1) > 0)[:, None]
  emb = params["embed"]["embedding"]
  new = jnp.where(keep, rows.reshape(-1, rows.shape[-1]).astype(emb.dtype), emb[ids])
  p = {**params, "embed": {"embedding": emb.at[ids].set(new)}}
  if "lm_head" in params and not model_config.tie_embeddings:
    k = params["lm_head"]["kernel"]
    p["lm_head"] = {"kernel": k.at[:, ids].set(jnp.where(keep.T, new.T.astype(k.dtype), k[:, ids]))}
  logits, _ = llama.forward(p, model_config, jnp.asarray(batch["tokens"]), attention_mask=jnp.asarray(
      batch["attention_mask"]))
  ce = llama.softmax_cross_entropy(logits, jnp.asarray(batch["targets"]))
  w = jnp.asarray(batch["weights"], jnp.float32)
  return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)


def token_gradient(token_rows: Any, gist_fn: Callable[[Any, int, int], Any], num_tools: int, loss_of_rows: Callable,
                   codes: np.ndarray, active: np.ndarray, levels_per_position: int, size: int, chunk: int = 64):
  """d(loss_of_rows(rows, counts)) / d token_rows, rows = `first_level_rows`(gist_fn(token_rows, lo, hi) over all
  tools). gist_fn(token_rows, lo, hi) -> h [hi - lo, P, D] of tools lo..hi-1. -> (loss, gradient like token_rows)."""
  h = jnp.concatenate([gist_fn(token_rows, lo, min(lo + chunk, num_tools)) for lo in range(0, num_tools, chunk)])
  rows, counts = first_level_rows(h, codes, active, levels_per_position, size)
  loss, g_rows = jax.value_and_grad(loss_of_rows)(rows, counts)
  g_h = jnp.stack([g_rows[p][jnp.asarray(codes[:num_tools, p * levels_per_position])]
                   / jnp.maximum(counts[p][jnp.asarray(codes[:num_tools, p * levels_per_position])], 1.0)[:, None]
                   for p in range(h.shape[1])], 1) * jnp.asarray(active[:num_tools], jnp.float32)[:, None, None]
  grad = jnp.zeros_like(token_rows)
  for lo in range(0, num_tools, chunk):
    hi = min(lo + chunk, num_tools)
    if not bool(jnp.any(g_h[lo:hi] != 0)):
      continue  # no tool of this chunk holds a code the batch reads
    _, vjp = jax.vjp(lambda r: gist_fn(r, lo, hi), token_rows)
    grad = grad + vjp(g_h[lo:hi])[0]
  return loss, grad


def gist_token_hooks(config: Any, gist_dir: Any, dataset: Any, tools: list, *, quantize: Callable, stored: Callable,
                     done: Callable, log: Callable[[str], None] = print) -> dict:
  """`paper_refinement`'s step (0) for a gist codebook: the hooks (update_tokens, compress, quantize, token_epochs)
  that update the gist encoder's Token rows against the frozen theta_{t-1} for `train.refine_token_epochs` epochs
  of the stages' examples (L_tool + L_traj), with a codebook fitted at the end of every epoch.

  gist_dir: the stored gist encoder; tools: the codebook's rows as `Tool`s (Finish included); quantize(emb, old, t):
  the pipeline's (it stores the round's codebook), used for the round's last epoch; done(t): that codebook exists
  (a resumed round: no update, the stored codebook and `stored(params, model, t)`'s embeddings are used)."""
  gcfg = gist.config_from(config.encoder, int(config.seed))
  fields = [gist.tool_fields(t) for t in tools]
  epochs = int(config.train.get("refine_token_epochs", 0))
  n_corpus = len(dataset.corpus)

  def encoder(frozen, m, rows):
    p, c = lora_lib.merge_lora(frozen, m.config)
    p, c, ids, tokenize = gist.load_encoder(gist_dir, p, c, m.tokenizer, gcfg)
    if rows is not None:
      p = {**p, "embed": {"embedding": p["embed"]["embedding"].at[ids].set(rows)}}
    return p, c, ids, tokenize

  def compress(rows, frozen, m, t):
    if done(t):
      return stored(frozen, m, t)
    p, c, ids, tokenize = encoder(frozen, m, rows)
    return gist.embed_tools(p, c, fields, tokenize, ids, gcfg)

  def update(rows, frozen, m, cb, t, e):
    if done(t):
      return rows
    p, c, ids, tokenize = encoder(frozen, m, rows)
    rows = p["embed"]["embedding"][ids]
    content, cmask = gist._pad([tokenize(gist.document_text(f)) for f in fields], gcfg.max_content)
    gfn = jax.jit(lambda gp, r, c_, m_: gist.token_outputs(
        {**gp, "embed": {"embedding": gp["embed"]["embedding"].at[ids].set(r)}}, c, c_, m_, jnp.asarray(ids)))
    gist_fn = lambda r, lo, hi: gfn(p, r, jnp.asarray(content[lo:hi]), jnp.asarray(cmask[lo:hi]))
    vocab = CodeVocabulary(cb, m.tokenizer)
    l_per = int(cb.quantizer_config["num_levels"])
    size = int(cb.quantizer_config["codebook_size"])
    token_ids = np.asarray([[m.tokenizer.token_to_id(token_string(cb.token_kind, q * l_per, k)) for k in range(size)]
                            for q in range(gcfg.num_gist)])  # [P, K]: first level of each position
    examples = [x for s in config.train.stages for x in stages.stage_examples(
        s, corpus=dataset.corpus, queries=stages.training_queries(dataset),
        trajectories=stages.training_trajectories(config, dataset), codes=vocab, tokenizer=m.tokenizer,
        train_config=config.train, data_config=config.data, finish_id=cb.finish_id)]
    pipe = ip.InputPipeline(examples, m.tokenizer, batch_size=int(config.train.batch_size),
                            seq_len=int(config.train.seq_len), seed=int(config.seed) + 1000 * t + e,
                            pad_id=m.tokenizer.pad_id or 0)
    opt = optax.adam(float(config.encoder.gist_learning_rate))
    state = opt.init(rows)
    frozen_cfg = m.config
    loss_fn = jax.jit(lambda fp, r, k, b: tool_loss_with_rows(fp, frozen_cfg, token_ids, r, k, b))
    steps = max(1, int(np.ceil(len(examples) / int(config.train.batch_size))))
    for s in range(steps):
      batch = pipe.batch(s)
      loss, g = token_gradient(rows, gist_fn, len(fields), lambda r, k: loss_fn(frozen, r, k, batch), cb.codes,
                               cb.active, l_per, size)
      upd, state = opt.update(g, state, rows)
      rows = optax.apply_updates(rows, upd)
    log(f"[refine {t}] Token update epoch {e}: {steps} steps on {len(examples)} examples, last L_tool+L_traj "
        f"{float(loss):.4f} (model frozen)")
    return rows

  def quantize_epoch(emb, old, t, e):
    if e == epochs - 1 or done(t):
      return quantize(emb, old, t)
    new = cb_lib.build(config.codebook, emb[:n_corpus], [x.name for x in dataset.corpus],
                       cooccurrence=dataset.cooccurrence, encoder=old.encoder,
                       cooccurrence_normalization=config.data.cooccurrence_normalization)
    if len(emb) > n_corpus:
      new.add_finish(embeddings=emb[n_corpus:])
    return new

  return dict(update_tokens=update, compress=compress, quantize=quantize_epoch, token_epochs=epochs)
