"""Export: extended (+ LoRA-merged) model and tokenizer -> HF directory that transformers loads with our logits."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.models import export, llama, lora, vocab, weights

import _model_refs
from _training_helpers import code_tokens

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _extended_model(architecture, tied):
  config = llama.LlamaConfig.tiny(vocab_size=49152, tie_embeddings=tied, architecture=architecture,
                                  qkv_bias=architecture == "qwen2", bos_token_id=1, eos_token_id=2)
  params = llama.init_params(config, jax.random.key(0), init_std=0.1)
  tok = _model_refs.smollm2_tokenizer()
  params, config, tok = vocab.extend_vocab(params, config, tok, code_tokens(2, 4), init="subword_mean",
                                           pad_to_multiple=128)
  params, config = lora.apply_lora(params, config, jax.random.key(1), rank=4, alpha=8.0)
  # a trained-looking adapter: non-zero B
  params["layers"]["v_proj"]["lora_b"] = 0.1 * jax.random.normal(jax.random.key(2),
                                                                  params["layers"]["v_proj"]["lora_b"].shape)
  return params, config, tok


@pytest.mark.slow
@pytest.mark.parametrize("architecture,tied", [("llama", False), ("qwen2", True)])
def test_transformers_loads_export_with_our_logits(tmp_path, architecture, tied):
  params, config, tok = _extended_model(architecture, tied)
  text = "Use <T0_2><T1_3> to get the weather in Paris"
  ids = tok.encode(text)
  assert 49152 + 2 in ids and 49152 + 4 + 3 in ids
  ours, _ = llama.forward(params, config, jnp.asarray([ids]))
  out = export.export_hf(tmp_path / "hf", params, config, tok, max_shard_bytes=4 * 2**20)
  assert (out / "model.safetensors.index.json").exists()  # sharded at 4 MiB
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["vocab_size"] == config.vocab_size == 49152 + 128
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert hf_tok.encode(text, add_special_tokens=False) == ids
  assert hf_tok.decode(ids) == text
  with torch.no_grad():
    ref = model(torch.tensor([ids])).logits.numpy()
  err, scale = np.abs(np.asarray(ours) - ref).max(), np.abs(ref).max()
  assert err <= 1e-4 * scale, (err, scale)
  # our own loader reads the export back bit for bit (merged weights, no LoRA)
  c2, p2 = weights.load_pretrained(out)
  merged, mc = lora.merge_lora(params, config)
  assert c2.replace(param_dtype=mc.param_dtype) == mc.replace(bos_token_id=c2.bos_token_id)
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_export(tmp_path):
  params, config, tok = _extended_model("llama", False)
  out = export.export_hf(tmp_path / "bf16", params, config, tok, dtype="bfloat16")
  header, _ = weights.read_safetensors_header(out / "model.safetensors")
  assert {v["dtype"] for v in header.values()} == {"BF16"}
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
  assert model.dtype == torch.bfloat16
  c2, p2 = weights.load_pretrained(out, param_dtype="bfloat16")
  assert p2["embed"]["embedding"].dtype == jnp.bfloat16
