"""Toolscaler's post-guided refinement as loops over explicit state (params, codebook, model) -> next round.

Two loops, `train.refine_form` picks one:

  paper       Toolscaler section 4.2 and App. D (iv), `paper_refinement`, the default of `configs/toolscaler.py:paper`.
              Iteration t = 1..T (T = 2 in the paper) starts from the model theta_{t-1} that the previous
              iteration (or the first alignment) left, and holds it frozen while the tools are re-derived:
                (0) the Token (gist) embeddings are updated against the frozen theta_{t-1} (`update_tokens`), and
                    a new codebook is generated at the end of each such epoch (`token_epochs` of them; 0 = none);
                (i) compression: every tool re-embedded by the gist encoder mounted on theta_{t-1} (`compress`);
               (ii) PCA + residual k-means re-fitted on those embeddings: the round's codebook (`quantize`);
              (iii) reframed embedding: every code token's row re-initialised from the new codebook (`reframe`,
                    `reframed_rows`: member means of the gist outputs, inverse PCA of residual centroids);
               then the model is trained again on every stage, L_tool (query -> tool codes) + L_traj
              (trajectories) (`train`: 5 retrieval + 2 trajectory epochs in the paper).
  last_stage  the loop this project ran before (a named option; the `:real` figures in BENCHMARKS were measured with
              it), `post_guided_refinement`: re-embed with the trained model, re-quantise, keep the trained rows of
              the existing code tokens (only the tool -> code assignment moves), retrain the last stage only.

The hooks are the pipeline's (they know the workdir); the loops own no I/O and, but for `reframed_rows`, no numerics.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from toolgen_jax.code_vocab import CodeVocabulary, token_string
from toolgen_jax.codebook import code_vectors
from toolgen_jax.models import vocab as vocab_lib

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
  import jax.numpy as jnp
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
