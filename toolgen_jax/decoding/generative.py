"""The trained model as a retriever: query -> chat prompt -> trie-constrained beam search -> ranked distinct tools.

The prompt is `prompts.retrieval_prompt_ids`: exactly the prefix the retrieval stage trains on (the tokenizer's chat
template with a single user turn and the generation prompt), so the first generated token is the first code token.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from toolgen_jax.data.records import Query
from toolgen_jax.decoding import beam_search as bs
from toolgen_jax.decoding import constrained
from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.prompts import retrieval_prompt_ids


PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)


@dataclasses.dataclass
class GenerativeRetriever:
  """A `toolgen_jax.evaluation.retriever.Retriever` over a trained model (params, config, tokenizer, trie)."""

  params: Any
  model_config: Any
  tokenizer: Any
  trie: trie_lib.Trie
  beam_size: int = 5
  batch_size: int = 8
  alpha: float = 0.0
  max_prompt_tokens: int = 256
  progress: bool = True
  name: str = "generative"
  system_prompt: str | None = None
  normalize: str = "full"  # config.decode.normalize: the softmax codes are scored by (as the model was trained)

  def __post_init__(self):
    self._device_trie = self.trie.device()
    self._num_tools = int(np.max(self.trie.tool_ids)) + 1 if len(self.trie.tool_ids) else 0

  def rank(self, queries: Sequence[Query], k: int, candidates: Sequence[tuple[int, ...] | None] | None = None
           ) -> list[list[int]]:
    """Top-k distinct tools per query (k <= beam_size: the beam is the ranked list). A shared leaf (tools sharing
    a code tuple) contributes all of its live members, at its score, in tool-id order (`Trie.expand`), within the
    query's candidates when given."""
    if candidates is None:
      candidates = [None] * len(queries)
    beam = max(self.beam_size, k)
    pad = self.tokenizer.pad_id if getattr(self.tokenizer, "pad_id", None) is not None else 0
    order = sorted(range(len(queries)), key=lambda i: len(queries[i].text))  # similar lengths share a program
    results: dict[int, list[int]] = {}
    it = range(0, len(order), self.batch_size)
    for start in tqdm(it, desc=f"{self.name} retrieval", disable=not self.progress, leave=False):
      idx = order[start:start + self.batch_size]
      prompts = [retrieval_prompt_ids(self.tokenizer, queries[i].text, self.max_prompt_tokens, self.system_prompt)
                 for i in idx]
      while len(prompts) < self.batch_size:  # one static batch shape
        prompts.append(prompts[-1])
      longest = max(len(p) for p in prompts)
      bucket = next((b for b in PROMPT_BUCKETS if b >= longest), -(-longest // 256) * 256)
      tokens, mask = constrained.left_pad(prompts, pad, multiple=bucket)  # few shapes -> few compilations
      tool_mask = None
      if any(candidates[i] is not None for i in idx):
        tool_mask = np.ones((self.batch_size, self._num_tools), bool)
        for row, i in enumerate(idx):
          if candidates[i] is not None:
            ids = [t for t in candidates[i] if t < self._num_tools]  # tools beyond the trie cannot be generated
            tool_mask[row] = trie_lib.tool_mask_from_ids([ids], self._num_tools)[0]
        tool_mask = jnp.asarray(tool_mask)
      res = constrained.retrieve(self.params, self.model_config, jnp.asarray(tokens), jnp.asarray(mask),
                                 self._device_trie, beam_size=beam, alpha=self.alpha, tool_mask=tool_mask,
                                 normalize=self.normalize)
      ranked = bs.ranked_tools(res, None if self.trie.shared_codes else k)
      for row, i in enumerate(idx):
        pool = None if candidates[i] is None else set(int(t) for t in candidates[i])
        tools, _ = self.trie.expand(ranked[row], allowed=pool)
        results[i] = tools[:k]
    out = [results[i] for i in range(len(queries))]
    return out
