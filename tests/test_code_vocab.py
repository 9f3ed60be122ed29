"""The code vocabulary: for every tokenizer method, the tokenised training target of a tool is exactly what the trie
decodes for it (`trie.tokens_of`), and the token strings / ids / members agree with the codebook."""

import numpy as np
import pytest

from toolgen_jax import code_vocab, prompts
from toolgen_jax import config as config_lib
from toolgen_jax.codebook import codebook as cb_lib
from toolgen_jax.data.records import Query
from toolgen_jax.models import tokenizer as tok_lib
from toolgen_jax.training import stages

NAMES = [f"get_{w}_{i}" for i, w in enumerate(["weather", "stock", "news", "time", "flight", "hotel", "movie",
                                                  "recipe", "song", "translate", "convert", "define"] * 3)]


@pytest.fixture(scope="module")
def embeddings():
  rng = np.random.default_rng(0)
  return rng.normal(size=(len(NAMES), 16)).astype(np.float32)


def _codebook(method, x, tok):
  c = config_lib.base_config().codebook
  c.method, c.levels, c.size, c.pca_dim, c.branching = method, 2, 4, 8, 4
  c.rqvae_hidden, c.code_dim, c.steps, c.batch_size = (16,), 8, 5, 32
  return cb_lib.build(c, x, NAMES, tokenize=tok.encode, end_id=prompts.end_of_turn_id(tok))


# The RQ-VAE codebook trains a network first (a heavy compile, exercised fast in test_rqvae): slow tier only.
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "rqvae" else m
                                    for m in cb_lib.METHODS])
def test_training_target_tokens_are_the_trie_path(method, embeddings):
  tok = tok_lib.load_tokenizer("smollm2")
  cb = _codebook(method, embeddings, tok)
  tok.add_tokens(code_vocab.token_strings(cb))
  vocab = code_vocab.CodeVocabulary(cb, tok)
  trie = vocab.trie()
  eot = prompts.end_of_turn_id(tok)
  for t in range(cb.num_tools):
    (ex,) = stages.retrieval_examples([Query(id="q", text="find a tool", relevant=(t,))], vocab, tok)
    target = prompts.encode_text(tok, ex.target_text)
    path = [int(i) for i in trie.tokens_of([t])[0] if i >= 0]
    assert target[:len(path)] == path, (method, t, target, path)
    # After the code the template closes the turn: END of a variable-length code, or the first non-code token.
    assert eot in (path[-1], target[len(path)]), (method, t)
    assert vocab.tool_token_ids(t) == [i for i in path if i != eot or method != "semantic"][:len(
        vocab.tool_token_ids(t))]


def test_token_strings_ids_and_members(embeddings):
  tok = tok_lib.load_tokenizer("smollm2")
  cb = _codebook("residual_kmeans", embeddings, tok)
  strings = code_vocab.token_strings(cb)
  assert strings[:2] == ["<T0_0>", "<T0_1>"] and strings[cb.level_sizes[0] + 3] == "<T1_3>"
  assert len(strings) == sum(cb.level_sizes) == len(set(strings))
  assert code_vocab.CodeVocabulary.missing_tokens(cb, tok) == strings
  with pytest.raises(KeyError, match="not in the tokenizer"):
    code_vocab.CodeVocabulary(cb, tok)
  ids = tok.add_tokens(strings)
  vocab = code_vocab.CodeVocabulary(cb, tok)
  assert vocab.token_ids[1, 3] == ids[cb.level_sizes[0] + 3] and vocab.token_ids.shape[0] == cb.num_levels
  members = code_vocab.token_members(cb)
  assert len(members) == len(strings)
  assert sum(len(m) for m in members[:cb.level_sizes[0]]) == cb.num_tools
  np.testing.assert_array_equal(members[2], cb.members(0, 2))
  assert vocab.tool_text(3) == "".join(f"<T{l}_{c}>" for l, c in enumerate(cb.code_of(3)))
  assert vocab.tool_token_ids(3) == [int(vocab.token_ids[l, c]) for l, c in enumerate(cb.code_of(3))]
  cb.remove_tools([3])
  assert 3 not in code_vocab.token_members(cb)[cb.codes[3, 0]]


def test_atomic_tokens_follow_added_tools():
  cb = cb_lib.from_baseline("atomic", 3)
  cb.add_tools(np.zeros((2, 4)))
  assert code_vocab.token_strings(cb) == [f"<A_{i}>" for i in range(5)]
  with pytest.raises(ValueError, match="vocab"):
    code_vocab.token_string("vocab", 0, 1)


def test_shared_codes_build_a_trie_whose_leaves_hold_every_member(embeddings):
  """Toolscaler's 'report' policy: tools sharing a code tuple have one training target text (their shared code)
  and one trie leaf, which decodes to all of them; a 'unique' codebook never shares."""
  tok = tok_lib.load_tokenizer("smollm2")
  c = config_lib.base_config().codebook
  c.method, c.levels, c.size, c.pca_dim, c.collisions = "residual_kmeans", 2, 2, 8, "report"
  cb = cb_lib.build(c, embeddings, NAMES)  # 36 tools on at most 2 x 2 code tuples
  tok.add_tokens(code_vocab.token_strings(cb))
  vocab = code_vocab.CodeVocabulary(cb, tok)
  trie = vocab.trie()
  assert trie.shared_codes and cb.num_levels == 2
  groups = {}
  for t in range(cb.num_tools):
    groups.setdefault(cb.code_of(t), []).append(t)
  assert max(len(g) for g in groups.values()) > 1
  for code, members in groups.items():
    texts = {vocab.tool_text(t) for t in members}
    assert len(texts) == 1  # one target text per shared code
    for t in members:
      assert trie.members_of(t).tolist() == members
      assert trie.lookup(trie.tokens_of([t]))[0] == members[0]  # the leaf's label: its smallest member
  c.collisions = "unique"
  cb_u = cb_lib.build(c, embeddings, NAMES)
  assert not cb_u.shares_codes and len({cb_u.code_of(t) for t in range(cb_u.num_tools)}) == cb_u.num_tools
