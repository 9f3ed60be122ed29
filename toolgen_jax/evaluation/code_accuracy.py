"""Per-level teacher-forced code accuracy: which code level a trained model has learnt, and which it has not.

For each query and its first relevant tool, the model reads the retrieval prompt followed by the tool's true code
tokens; at the position that predicts code level l it is right when the true code is the top-1

  * among the level's K codes (`level`), and
  * among the codes that can follow the true prefix in the codebook (`children`: the trie's children of
    c_0 .. c_{l-1}, what constrained decoding chooses from).

NDCG says whether retrieval works; this says why not (e.g. level 1 learnt, level 2 at the chance rate of its
children). Chance per level is reported beside it: the mean of 1 / (number of choices).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from toolgen_jax.data.records import Query
from toolgen_jax.models import llama
from toolgen_jax.prompts import retrieval_prompt_ids


def _children(codes: np.ndarray, level: int) -> dict[tuple, np.ndarray]:
  out: dict[tuple, set] = {}
  for row in codes[codes[:, level] >= 0]:
    out.setdefault(tuple(row[:level].tolist()), set()).add(int(row[level]))
  return {k: np.asarray(sorted(v)) for k, v in out.items()}


def teacher_forced_accuracy(params: Any, model_config: llama.LlamaConfig, vocab: Any, queries: Sequence[Query], *,
                            system_prompt: str | None = None, max_prompt_tokens: int = 256,
                            batch_size: int = 8) -> dict:
  """{'n', 'level': [L], 'children': [L], 'chance_level': [L], 'chance_children': [L]} over `queries` (those whose
  first relevant tool has a code); {} for codes that are vocabulary ids (the semantic baseline: no code levels).

  vocab: a `code_vocab.CodeVocabulary` (the tokenizer holds its tokens); rows are corpus ids (a Finish row, which
  sits after the corpus's tools, is never a query's relevant tool)."""
  if vocab.token_ids is None:
    return {}
  cb, tok, table = vocab.codebook, vocab.tokenizer, np.asarray(vocab.token_ids)
  active = cb.codes[cb.active]
  L = cb.num_levels
  children = [_children(active, l) for l in range(L)]
  rows = [(q, int(q.relevant[0])) for q in queries if q.relevant and 0 <= int(q.relevant[0]) < cb.num_tools]
  @jax.jit
  def code_logits(p, t, m, pos):  # [B, L, V]: the LM head on the code-predicting positions only
    h = llama.hidden_states(p, model_config, t, attention_mask=m)[0]
    return llama.logits_from_hidden(p, model_config, jax.numpy.take_along_axis(h, pos[..., None], axis=1))
  hits_level, hits_child = np.zeros(L), np.zeros(L)
  chance_level, chance_child, counts = np.zeros(L), np.zeros(L), np.zeros(L)
  pad = tok.pad_id if getattr(tok, "pad_id", None) is not None else 0
  for s in range(0, len(rows), batch_size):
    chunk = rows[s:s + batch_size]
    seqs, code_pos, code_vals = [], [], []
    for q, t in chunk:
      prompt = retrieval_prompt_ids(tok, q.text, max_prompt_tokens, system_prompt)
      code = cb.code_of(t)
      seqs.append(prompt + vocab.tool_token_ids(t))
      code_pos.append([len(prompt) - 1 + l for l in range(len(code))])
      code_vals.append(code)
    T = -(-max(len(x) for x in seqs) // 32) * 32  # few shapes, few compilations
    tokens = np.full((batch_size, T), pad, np.int32)
    mask = np.zeros((batch_size, T), np.int32)
    for r, x in enumerate(seqs):
      tokens[r, :len(x)], mask[r, :len(x)] = x, 1
    pos = np.zeros((batch_size, L), np.int32)
    for r, p_r in enumerate(code_pos):
      pos[r, :len(p_r)] = p_r
    all_logits = np.asarray(code_logits(params, tokens, mask, pos))
    for r, code in enumerate(code_vals):
      logits = all_logits[r]
      for l, c in enumerate(code):
        valid = np.flatnonzero(table[l] >= 0)
        scores = logits[l, table[l, valid]]
        hits_level[l] += valid[int(np.argmax(scores))] == c
        kids = children[l][tuple(code[:l])]
        hits_child[l] += kids[int(np.argmax(logits[l, table[l, kids]]))] == c
        chance_level[l] += 1.0 / len(valid)
        chance_child[l] += 1.0 / len(kids)
        counts[l] += 1
  n = np.maximum(counts, 1)
  return {"n": len(rows), "level": (hits_level / n).tolist(), "children": (hits_child / n).tolist(),
          "chance_level": (chance_level / n).tolist(), "chance_children": (chance_child / n).tolist()}
