"""Export to Hugging Face format: config.json + safetensors (+ index when sharded) + tokenizer files.

What users serve (transformers, vLLM, llama.cpp's converter) reads exactly this layout; LoRA factors are merged
first so the export is a plain LlamaForCausalLM / Qwen2ForCausalLM with the extended vocabulary.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from toolgen_jax.models import lora as lora_lib
from toolgen_jax.models import weights
from toolgen_jax.models.llama import LlamaConfig

_DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16",
                np.dtype(np.float64): "F64", np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes one safetensors file (any of F32/F16/BF16/F64/I32/I64), streaming tensor by tensor."""
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, a in tensors.items():
    dt = np.dtype(a.dtype)
    if dt not in _DTYPE_NAMES:
      raise ValueError(f"tensor '{name}': dtype {dt} cannot be written to safetensors")
    n = a.size * dt.itemsize
    header[name] = {"dtype": _DTYPE_NAMES[dt], "shape": list(a.shape), "data_offsets": [offset, offset + n]}
    offset += n
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # 8-byte alignment of the data section
  tmp = pathlib.Path(str(path) + ".tmp")
  with open(tmp, "wb") as f:
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for a in tensors.values():
      f.write(np.ascontiguousarray(a).tobytes())
  os.replace(tmp, path)


def export_hf(directory: str | os.PathLike, params, config: LlamaConfig, tokenizer=None, *,
              dtype: str | None = None, max_shard_bytes: int = 2 * 2**30) -> pathlib.Path:
  """Writes an HF checkpoint directory that `AutoModelForCausalLM.from_pretrained(directory)` loads.

  Args:
    directory: output folder (created).
    params, config: the model; LoRA factors are merged first (`lora.merge_lora`).
    tokenizer: a `toolgen_jax.models.tokenizer.Tokenizer` (with its added tokens); None writes no tokenizer files.
    dtype: storage dtype ('float32' | 'bfloat16' | 'float16'); default config.param_dtype.
    max_shard_bytes: above this, weights are split into model-0000i-of-0000n.safetensors + index json.
  """
  out = pathlib.Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  params, config = lora_lib.merge_lora(params, config)
  dt = np.dtype(ml_dtypes.bfloat16) if (dtype or config.param_dtype) == "bfloat16" else np.dtype(
      dtype or config.param_dtype)
  state = weights.to_hf_state_dict(params, config, dtype=dt)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, a in state.items():
    if shards[-1] and size + a.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = a
    size += a.nbytes
  if len(shards) == 1:
    write_safetensors(out / "model.safetensors", shards[0])
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      write_safetensors(out / fname, shard)
      weight_map.update({k: fname for k in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": int(sum(a.nbytes for a in state.values()))}, "weight_map": weight_map},
        indent=2))
  hf = config.to_hf_config()
  hf["torch_dtype"] = "bfloat16" if dt == np.dtype(ml_dtypes.bfloat16) else str(dt)
  if tokenizer is not None:
    hf["pad_token_id"] = tokenizer.pad_id
    tokenizer.save(out)
  (out / "config.json").write_text(json.dumps(hf, indent=2))
  gen = {k: v for k, v in (("bos_token_id", config.bos_token_id), ("eos_token_id", config.eos_token_id)) if v is not None}
  (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
  return out
