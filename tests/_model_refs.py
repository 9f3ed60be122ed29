"""Shared, cached references for the model tests (one load per pytest worker, whichever test file asks first)."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def smollm2_ours():
  from toolgen_jax.models import weights
  return weights.load_pretrained("smollm2")


@functools.lru_cache(maxsize=None)
def smollm2_torch():
  """transformers' own GGUF loader (its dequantisation and q/k un-permutation): the parity reference."""
  import torch
  import transformers
  from toolgen_jax import assets
  p = assets.smollm2_gguf()
  model = transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
  return model.eval()


def torch_model_from_ours(params, config, attn="eager"):
  """A transformers model holding exactly our weights (built from config.to_hf_config())."""
  import torch
  import transformers
  from toolgen_jax.models import weights
  hf = config.to_hf_config()
  hf_cfg = transformers.AutoConfig.for_model(**hf)
  hf_cfg._attn_implementation = attn
  model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
  state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.to_hf_state_dict(params, config).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [m for m in missing if not (config.tie_embeddings and m == "lm_head.weight")]
  assert not missing and not unexpected, (missing, unexpected)
  if config.tie_embeddings:
    model.tie_weights()
  return model.eval()


def greedy_ours(params, config, prompt: np.ndarray, steps: int) -> np.ndarray:
  """Greedy decoding with the KV cache: prompt [1, T] -> generated ids [steps]."""
  import jax
  import jax.numpy as jnp
  from toolgen_jax.models import llama
  cache = llama.init_cache(config, prompt.shape[0], prompt.shape[1] + steps)
  step = jax.jit(lambda p, t, c: llama.forward(p, config, t, cache=c))
  logits, cache = step(params, jnp.asarray(prompt), cache)
  out = []
  tok = jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)
  for _ in range(steps):
    out.append(int(tok[0, 0]))
    logits, cache = step(params, tok, cache)
    tok = jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)
  return np.array(out)


@functools.lru_cache(maxsize=None)
def smollm2_tokenizer_hf_direct():
  """transformers' tokenizer built straight from the GGUF (no cache): the reference for our cached one."""
  import transformers
  from toolgen_jax import assets
  p = assets.smollm2_gguf()
  return transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)


def smollm2_tokenizer():
  """A fresh Tokenizer each call (add_tokens mutates it); fast after the first build thanks to the cache."""
  from toolgen_jax.models.tokenizer import load_tokenizer
  return load_tokenizer("smollm2")
