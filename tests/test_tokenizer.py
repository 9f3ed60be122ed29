"""The GGUF tokenizer: round trip, agreement with transformers' own GGUF tokenizer, chat template, added tokens."""

import pytest

from toolgen_jax import assets
from toolgen_jax.models import tokenizer as tokenizer_lib

import _model_refs

TEXTS = [
    "The capital of France is Paris.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "Unicode: héllo wörld — naïve café 🤖 日本語のテキスト",
    'def f(x):\n    return {"a": [1, 2.5e-3, None]}',
    "<|im_start|>user\nhi<|im_end|>",
    "",
]


@pytest.mark.slow
def test_matches_transformers_gguf_tokenizer_and_round_trips():
  tok = _model_refs.smollm2_tokenizer()
  ref = _model_refs.smollm2_tokenizer_hf_direct()
  assert len(tok) == len(ref) == 49152
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.bos_token_id, ref.eos_token_id, 2)
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False), text
    assert tok.decode(ids) == text
  assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
  # the special tokens are single ids
  assert tok.encode("<|im_start|>") == [1] and tok.id_to_token(2) == "<|im_end|>"


def test_vocabulary_matches_gguf_metadata():
  import gguf
  reader = gguf.GGUFReader(str(assets.smollm2_gguf()))
  tokens = reader.fields["tokenizer.ggml.tokens"].contents()
  tok = _model_refs.smollm2_tokenizer()
  for i in (0, 1, 2, 100, 1000, 30000, 49151):
    assert tok.id_to_token(i) == tokens[i]


def test_chat_template_from_gguf():
  tok = _model_refs.smollm2_tokenizer()
  text = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
  assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                  "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
  ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=True)
  assert ids[0] == tok.bos_id and tok.decode(ids) == text


def test_added_tokens_are_atomic_and_survive_save(tmp_path):
  tok = _model_refs.smollm2_tokenizer()
  ids = tok.add_tokens(["<T1_0>", "<T1_1>", "<T2_17>"])
  assert ids == [49152, 49153, 49154]
  assert tok.add_tokens(["<T1_1>"]) == [49153]  # idempotent
  (sep,) = tok.add_tokens(["<tool_sep>"], special=True)
  text = "call <T1_1><T2_17> then<tool_sep>done"
  enc = tok.encode(text)
  assert [i for i in enc if i >= 49152] == [49153, 49154, sep]
  assert tok.decode(enc) == text
  assert "<tool_sep>" not in tok.decode(enc, skip_special_tokens=True)
  tok.save(tmp_path)
  again = tokenizer_lib.load_tokenizer(tmp_path)
  assert len(again) == len(tok) and again.encode(text) == enc
  assert again.chat_template == tok.chat_template


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    tokenizer_lib.load_tokenizer(tmp_path / "nope.gguf")
  with pytest.raises(ValueError, match="no tokenizer.json"):
    tokenizer_lib.load_tokenizer(tmp_path)
