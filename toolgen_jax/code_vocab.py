"""The code vocabulary: the one mapping from a tool's code sequence to the LLM's tokens.

A `Codebook` knows codes only (tool row -> (c_0, ..., c_{L-1}), integers). Which token the model emits for code c
at position l is decided here and nowhere else, for every tokenizer kind (`Codebook.token_kind`):

  codes    per-level tokens `<T{l}_{c}>`, l and c 0-based (ToolWeaver's L x K, Toolscaler's 4 x 512, and the
           numerical / hierarchical ablations); a variable-length code (collision suffix, hierarchical) ends with
           the end-of-turn token, which the trie decodes as END.
  atomic   one token `<A_{c}>` per tool (ToolGen), c = the tool's row.
  vocab    the codes *are* vocabulary ids (the semantic ablation: the tool name's own sub-words, then end-of-turn).

Everything that needs the mapping asks this module: the vocabulary extension (`token_strings`, `token_members` for
the codebook init), the training targets (`tool_text`, what the assistant turn holds), the trie (`token_ids`
[L, K], `trie`) and the agent (`tool_text` for history, `trie(finish=True)`). `tests/test_code_vocab.py` checks for
each method that the tokenised training target of a tool equals `trie.tokens_of(tool)`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from toolgen_jax.codebook.codebook import Codebook
from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.prompts import end_of_turn_id


def token_string(kind: str, level: int, code: int) -> str:
  """The token string of code `code` at position `level` for a codebook of token kind `kind`."""
  if kind == "atomic":
    return f"<A_{int(code)}>"
  if kind == "codes":
    return f"<T{int(level)}_{int(code)}>"
  raise ValueError(f"token kind {kind!r} has no token strings (codes of kind 'vocab' are vocabulary ids)")


def token_strings(codebook: Codebook) -> list[str]:
  """The new vocabulary entries a codebook needs, in a fixed order: level-major (l, c) for every code of
  `level_sizes`, one per tool for atomic, none for 'vocab'."""
  kind = codebook.token_kind
  if kind == "vocab":
    return []
  return [token_string(kind, l, c) for l, k in enumerate(codebook.level_sizes) for c in range(k)]


def token_members(codebook: Codebook, active_only: bool = True) -> list[list[int]]:
  """For each token of `token_strings(codebook)`, in that order: the rows whose code uses it (what the `codebook`
  vocabulary init averages)."""
  cb = codebook
  mask = cb.active if active_only else np.ones(cb.num_tools, bool)
  if cb.token_kind == "vocab":
    return []
  out = []
  for level, size in enumerate(cb.level_sizes):  # one stable sort per level: O(N log N) (atomic: N tokens)
    col = cb.codes[:, level] if level < cb.num_levels else np.full(cb.num_tools, -1)
    ids = np.nonzero((col >= 0) & mask)[0]
    ids = ids[np.argsort(col[ids], kind="stable")]
    bounds = np.searchsorted(col[ids], np.arange(size + 1))
    out.extend(ids[bounds[c]:bounds[c + 1]].tolist() for c in range(size))
  return out


class CodeVocabulary:
  """A codebook bound to a tokenizer that holds its tokens (after `models.vocab.extend_vocab`).

  Rebuild it after the codebook changes (`add_tools` may add a level or codes): it is cheap and holds no state of
  its own beyond the [L, K] id table.
  """

  def __init__(self, codebook: Codebook, tokenizer: Any):
    self.codebook = codebook
    self.tokenizer = tokenizer
    self.kind = codebook.token_kind
    self._ids = None if self.kind == "vocab" else self._id_table()

  def _id_table(self) -> np.ndarray:
    cb = self.codebook
    sizes = cb.level_sizes  # atomic: [num_tools]
    table = np.full((len(sizes), max(sizes, default=0)), -1, np.int64)
    missing = []
    for level, size in enumerate(sizes):
      for code in range(size):
        tid = self.tokenizer.token_to_id(token_string(self.kind, level, code))
        if tid is None:
          missing.append(token_string(self.kind, level, code))
        else:
          table[level, code] = tid
    if missing:
      raise KeyError(f"{len(missing)} code tokens are not in the tokenizer (first: {missing[0]}); extend the "
                     "vocabulary with code_vocab.token_strings(codebook) first")
    return table

  @staticmethod
  def missing_tokens(codebook: Codebook, tokenizer: Any) -> list[str]:
    """The codebook's token strings the tokenizer does not have yet (what a vocabulary extension must add)."""
    return [t for t in token_strings(codebook) if tokenizer.token_to_id(t) is None]

  # --- the mapping -----------------------------------------------------------------------------------------
  @property
  def token_ids(self) -> np.ndarray | None:
    """[L, K] int64 vocabulary id of code k at position l (-1 where a level has fewer codes); None for 'vocab'."""
    return self._ids

  @property
  def variable_length(self) -> bool:
    """Codes end with an END token (end-of-turn): some code is shorter than the longest, or codes are vocab ids."""
    return self.kind == "vocab" or bool((self.codebook.codes < 0).any())

  @property
  def end_id(self) -> int | None:
    """The token that ends a variable-length code (the chat template's end-of-turn), None for fixed length."""
    return end_of_turn_id(self.tokenizer) if self.variable_length else None

  def tool_token_ids(self, row: int) -> list[int]:
    """The vocabulary ids the model generates for codebook row `row`, END excluded."""
    code = self.codebook.code_of(row)
    if self.kind == "vocab":
      end = end_of_turn_id(self.tokenizer)
      return [int(c) for c in code if int(c) != end]
    if self.kind == "atomic":
      return [int(self._ids[0, code[0]])]
    return [int(self._ids[l, c]) for l, c in enumerate(code)]

  def tool_text(self, row: int) -> str:
    """The assistant text of row `row`'s code: what training targets hold and the agent writes into its history."""
    if self.kind == "vocab":
      return self.tokenizer.decode(self.tool_token_ids(row))
    code = self.codebook.code_of(row)
    if self.kind == "atomic":
      return token_string(self.kind, 0, code[0])
    return "".join(token_string(self.kind, l, c) for l, c in enumerate(code))

  def targets(self) -> dict[int, str]:
    """Every codebook row -> `tool_text(row)`."""
    return {i: self.tool_text(i) for i in range(self.codebook.num_tools)}

  def token_members(self, active_only: bool = True) -> list[list[int]]:
    return token_members(self.codebook, active_only)

  # --- the trie ----------------------------------------------------------------------------------------------
  def trie(self, rows: Sequence[int] | None = None, tool_ids: Sequence[int] | None = None, *,
           dense_budget_bytes: int = 64 << 20) -> trie_lib.Trie:
    """The trie over codebook `rows` (default: the active corpus tools, `Codebook.tool_rows`), labelled
    `tool_ids` (default: their corpus ids), each (level, code) mapped to its vocabulary id. A codebook whose
    collision policy lets tools share a code tuple (`Codebook.shares_codes`: Toolscaler's 'report', ToolWeaver's
    'sinkhorn') gets shared leaves (`Trie.expand` ranks their members); a 'unique' one must have none."""
    cb = self.codebook
    rows = cb.tool_rows() if rows is None else np.asarray(rows, np.int64)
    ids = cb.corpus_ids(rows) if tool_ids is None else np.asarray(tool_ids, np.int64)
    codes = cb.codes[rows]
    if self.kind == "vocab":
      return trie_lib.Trie.build(codes, ids, code_tokens=None, num_codes=None, end_token=None,
                                 dense_budget_bytes=int(dense_budget_bytes), shared_codes=cb.shares_codes)
    table = np.where(self._ids >= 0, self._ids, 0)
    end = end_of_turn_id(self.tokenizer) if (codes < 0).any() else None  # these rows' codes vary in length
    return trie_lib.Trie.build(codes, ids, code_tokens=table, num_codes=table.shape[1], end_token=end,
                               dense_budget_bytes=int(dense_budget_bytes), shared_codes=cb.shares_codes)
