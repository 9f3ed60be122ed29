"""Per-level teacher-forced code accuracy against a brute-force per-query forward pass."""

import jax
import numpy as np

from _training_helpers import ByteChatTokenizer, code_tokens
from toolgen_jax import code_vocab, prompts
from toolgen_jax.codebook import codebook as cb_lib
from toolgen_jax.data.records import Query
from toolgen_jax.evaluation.code_accuracy import teacher_forced_accuracy
from toolgen_jax.models import llama


def test_matches_a_per_query_forward_pass():
  tok = ByteChatTokenizer(code_tokens(2, 4))
  codes = np.array([[0, 1], [0, 2], [1, 0], [2, 3], [3, 3], [1, 2]])
  cb = cb_lib.Codebook("numerical", codes, [4, 4])
  vocab = code_vocab.CodeVocabulary(cb, tok)
  mc = llama.LlamaConfig.tiny(vocab_size=tok.vocab_size)
  params = llama.init_params(mc, jax.random.PRNGKey(3))
  qs = [Query(id=str(i), text=f"find tool number {i} please" + "!" * i, relevant=(i % 6,)) for i in range(9)]
  out = teacher_forced_accuracy(params, mc, vocab, qs, batch_size=4)
  hits_level, hits_child = np.zeros(2), np.zeros(2)
  for q in qs:
    t = q.relevant[0]
    prompt = prompts.retrieval_prompt_ids(tok, q.text, 256)
    ids = np.array(prompt + vocab.tool_token_ids(t), np.int32)[None]
    logits = np.asarray(llama.forward(params, mc, ids)[0])[0]
    for l, c in enumerate(codes[t]):
      row = logits[len(prompt) - 1 + l]
      hits_level[l] += int(np.argmax(row[vocab.token_ids[l]])) == c
      kids = sorted({int(r[l]) for r in codes if tuple(r[:l]) == tuple(codes[t][:l])})
      hits_child[l] += kids[int(np.argmax(row[vocab.token_ids[l, kids]]))] == c
  np.testing.assert_allclose(out["level"], hits_level / len(qs))
  np.testing.assert_allclose(out["children"], hits_child / len(qs))
  assert out["n"] == 9 and out["chance_level"] == [0.25, 0.25]
  # level 1's children: 2 codes after prefix 0 or 1, 1 after 2 or 3
  expected = np.mean([1 / {0: 2, 1: 2, 2: 1, 3: 1}[codes[q.relevant[0]][0]] for q in qs])
  np.testing.assert_allclose(out["chance_children"][1], expected)
