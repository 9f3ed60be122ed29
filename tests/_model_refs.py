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
  """transformers' own GGUF loader (its dequantisation and q/k un-permutation): the parity reference.

  Dequantising in transformers takes ~20 s, so its state dict is cached as safetensors under $TOOLGEN_CACHE
  (keyed by the GGUF's size and mtime); later runs rebuild the same model from that file.
  """
  import hashlib
  import os
  import pathlib
  import torch
  import transformers
  from safetensors.torch import load_file, save_file
  from toolgen_jax import assets
  p = assets.smollm2_gguf()
  st = p.stat()
  key = hashlib.sha1(f"{p}|{st.st_size}|{int(st.st_mtime)}|{transformers.__version__}".encode()).hexdigest()[:16]
  cache = pathlib.Path(os.environ.get("TOOLGEN_CACHE", pathlib.Path.home() / ".cache" / "toolgen_jax")) / "ref"
  f = cache / f"smollm2_transformers_{key}.safetensors"
  cfg = cache / f"smollm2_transformers_{key}.json"
  if f.exists() and cfg.exists():
    hf = transformers.AutoConfig.from_pretrained(str(cfg))
    hf._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(hf, dtype=torch.float32)
    model.load_state_dict(load_file(str(f)), strict=False)
    model.tie_weights()
    return model.eval()
  model = transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
  try:
    cache.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(f) + ".tmp")
    os.replace(str(f) + ".tmp", f)
    model.config.to_json_file(str(cfg))
  except OSError:
    pass
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


def smollm2_torch_greedy(prompt: np.ndarray, steps: int) -> np.ndarray:
  """transformers' greedy continuation of `prompt` (cached next to the reference weights: ~15 CPU-s per run)."""
  import hashlib
  import json
  import os
  import pathlib
  import torch
  from toolgen_jax import assets
  p = assets.smollm2_gguf()
  st = p.stat()
  key = hashlib.sha1(f"{p}|{st.st_size}|{int(st.st_mtime)}|{prompt.tolist()}|{steps}".encode()).hexdigest()[:16]
  f = pathlib.Path(os.environ.get("TOOLGEN_CACHE", pathlib.Path.home() / ".cache" / "toolgen_jax")) / "ref" / \
      f"smollm2_greedy_{key}.json"
  if f.exists():
    return np.array(json.loads(f.read_text()))
  model = smollm2_torch()
  ids = torch.from_numpy(prompt).long()
  with torch.no_grad():
    gen = model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                         attention_mask=torch.ones_like(ids))
  out = gen[0, prompt.shape[1]:].numpy()
  try:
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(out.tolist()))
  except OSError:
    pass
  return out
