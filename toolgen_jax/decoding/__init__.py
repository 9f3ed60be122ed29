"""Constrained generation: trie transition tables (`trie`), jitted beam search (`beam_search`), and the Llama
prompt -> codes -> tool ids entry points (`constrained`)."""

# The free-text `beam_search` function is not re-exported here: it would shadow the `beam_search` submodule for
# `from toolgen_jax.decoding import beam_search` (use `toolgen_jax.decoding.beam_search.beam_search`).
from toolgen_jax.decoding.beam_search import (BeamResult, BeamState, beam_step, greedy, ranked_tools,
                                              trie_beam_search)
from toolgen_jax.decoding.trie import (DeviceTrie, Trie, allowed_nodes, candidates, level_token_table,
                                       tool_mask_from_ids)

__all__ = ["BeamResult", "BeamState", "DeviceTrie", "Trie", "allowed_nodes", "beam_step",
           "candidates", "greedy", "level_token_table", "ranked_tools", "tool_mask_from_ids", "trie_beam_search"]
