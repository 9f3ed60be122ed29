"""Toolscaler's post-guided refinement as a loop over explicit state (params, codebook, model) -> next round.

Each round re-embeds every tool with the trained model (`embed_tools`), re-quantises (`quantize`), gives the model
any code token the new codes need (`add_code_tokens`; the existing code tokens keep their trained rows, only the
tool -> code assignment moves) and trains again (`train`). The hooks are the pipeline's (they know the workdir);
the loop owns no numerics and no I/O. The paper's own round structure (section 4.2, App. D iv) is the fidelity
issue's; this is the loop the pipeline has run so far, moved here unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from toolgen_jax.code_vocab import CodeVocabulary
from toolgen_jax.models import vocab as vocab_lib


@dataclasses.dataclass
class RefinementRound:
  round: int
  changed_tools: int      # tools whose code changed in this round (-1: the codebooks have different rows)
  metrics: dict


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
