"""Loading real checkpoints into the `llama` params tree: GGUF (llama.cpp) and Hugging Face safetensors.

Memory: the stacked [L, ...] arrays are preallocated once in the target dtype and filled tensor by tensor, reading
safetensors shards through a memory map one at a time (pages are dropped as soon as a tensor is copied), so host
memory peaks near one copy of the weights plus one tensor, never two copies.
"""

from __future__ import annotations

import json
import mmap
import os
import pathlib
import re
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from toolgen_jax import assets
from toolgen_jax.models.llama import LlamaConfig, _shapes_and_axes, _nest

# HF name -> (our path, kind). kind says how an HF tensor (PyTorch Linear: [out, in]) maps to our layout.
_HF_LAYER = {
    "input_layernorm.weight": (("attn_norm", "scale"), "vector"),
    "self_attn.q_proj.weight": (("q_proj", "kernel"), "qkv"),
    "self_attn.k_proj.weight": (("k_proj", "kernel"), "qkv"),
    "self_attn.v_proj.weight": (("v_proj", "kernel"), "qkv"),
    "self_attn.q_proj.bias": (("q_proj", "bias"), "qkv_bias"),
    "self_attn.k_proj.bias": (("k_proj", "bias"), "qkv_bias"),
    "self_attn.v_proj.bias": (("v_proj", "bias"), "qkv_bias"),
    "self_attn.o_proj.weight": (("o_proj", "kernel"), "o"),
    "post_attention_layernorm.weight": (("mlp_norm", "scale"), "vector"),
    "mlp.gate_proj.weight": (("gate_proj", "kernel"), "linear"),
    "mlp.up_proj.weight": (("up_proj", "kernel"), "linear"),
    "mlp.down_proj.weight": (("down_proj", "kernel"), "linear"),
}
_HF_TOP = {
    "model.embed_tokens.weight": (("embed", "embedding"), "embedding"),
    "model.norm.weight": (("final_norm", "scale"), "vector"),
    "lm_head.weight": (("lm_head", "kernel"), "linear"),
}
_GGUF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
  """A checkpoint that cannot be loaded: names the file and the tensor."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """A checkpoint file or directory (or a file it needs) does not exist."""


# ---- layout conversion ------------------------------------------------------------------------------------------

def hf_to_ours(kind: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """One HF tensor -> our layout of the given (per-layer) shape."""
  if kind in ("vector", "embedding", "qkv_bias"):
    return w.reshape(shape)
  if kind in ("linear", "qkv", "o"):
    return w.T.reshape(shape)
  raise ValueError(kind)


def ours_to_hf(kind: str, w: np.ndarray) -> np.ndarray:
  """Inverse of `hf_to_ours` (per-layer tensor in our layout -> HF PyTorch layout)."""
  if kind in ("vector", "embedding"):
    return w
  if kind == "qkv_bias":
    return w.reshape(-1)
  if kind in ("qkv", "linear"):
    return w.reshape(w.shape[0], -1).T
  if kind == "o":
    return w.reshape(-1, w.shape[-1]).T
  raise ValueError(kind)


def hf_names(config: LlamaConfig) -> Iterator[tuple[str, tuple[str, ...], int | None, str]]:
  """Yields (hf_name, our path, layer index or None, kind) for every tensor of the base model."""
  ours = _shapes_and_axes(config.replace(lora_rank=0, lora_targets=()))
  for hf, (path, kind) in _HF_TOP.items():
    if path in ours:
      yield hf, path, None, kind
  for i in range(config.num_layers):
    for suffix, (sub, kind) in _HF_LAYER.items():
      path = ("layers", *sub)
      if path in ours:
        yield f"model.layers.{i}.{suffix}", path, i, kind


def assemble(config: LlamaConfig, tensors: Iterator[tuple[str, Callable[[], np.ndarray]]], source: str,
             dtype: Any = None) -> dict:
  """Builds the params tree from a stream of (hf_name, lazy loader) pairs, one tensor in memory at a time.

  Raises CheckpointError naming `source` and the tensor on a shape mismatch, an unexpected tensor or a missing one.
  """
  dt = np.dtype(jnp.dtype(dtype or config.param_dtype))
  specs = _shapes_and_axes(config.replace(lora_rank=0, lora_targets=()))
  expected = {hf: (path, layer, kind) for hf, path, layer, kind in hf_names(config)}
  out = {path: np.empty(shape, dt) for path, (shape, _, _) in specs.items()}
  seen = set()
  for name, load in tensors:
    if name.endswith("rotary_emb.inv_freq"):
      continue
    if name == "lm_head.weight" and config.tie_embeddings:
      continue  # some tied checkpoints still store the head; it equals the embedding
    if name not in expected:
      raise CheckpointError(f"{source}: unexpected tensor '{name}' for a {config.architecture} model with "
                            f"{config.num_layers} layers (qkv_bias={config.qkv_bias}, tied={config.tie_embeddings})")
    path, layer, kind = expected[name]
    full = specs[path][0]
    target = full if layer is None else full[1:]
    w = load()
    want = ours_to_hf_shape(kind, target)
    if tuple(w.shape) != want:
      raise CheckpointError(f"{source}: tensor '{name}' has shape {tuple(w.shape)}, expected {want} "
                            f"(from the config: {config.architecture}, hidden={config.hidden_size}, "
                            f"heads={config.num_heads}, kv_heads={config.num_kv_heads}, vocab={config.vocab_size})")
    w = hf_to_ours(kind, w, target).astype(dt)
    if layer is None:
      out[path][...] = w
    else:
      out[path][layer] = w
    seen.add(name)
  missing = [n for n in expected if n not in seen]
  if missing:
    raise CheckpointError(f"{source}: {len(missing)} tensors missing, e.g. {missing[:3]}")
  result = {}
  for p in list(out):  # hand arrays to jax one by one so host memory never holds two full copies
    result[p] = jax.device_put(out.pop(p)).block_until_ready()
  return _nest(result)


def ours_to_hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind in ("vector", "embedding"):
    return tuple(shape)
  if kind == "qkv_bias":
    return (int(np.prod(shape)),)
  if kind in ("qkv", "linear"):
    return (int(np.prod(shape[1:])), shape[0])
  if kind == "o":
    return (shape[-1], int(np.prod(shape[:-1])))
  raise ValueError(kind)


# ---- safetensors ------------------------------------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors_header(path: pathlib.Path) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    n = int.from_bytes(raw, "little")
    try:
      header = json.loads(f.read(n))
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from e
  header.pop("__metadata__", None)
  return header, 8 + n


def iter_safetensors(path: pathlib.Path) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
  """(name, loader) for each tensor of one file, via a read-only memory map (supports BF16 via ml_dtypes)."""
  header, base = read_safetensors_header(path)
  with open(path, "rb") as f:
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
      for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
          raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]

        def load(info=info, start=start, end=end):
          a = np.frombuffer(mm, dtype=_ST_DTYPES[info["dtype"]], count=(end - start) //
                            np.dtype(_ST_DTYPES[info["dtype"]]).itemsize, offset=base + start)
          return a.reshape(info["shape"])

        yield name, load
    finally:
      try:
        mm.close()
      except BufferError:  # a caller still holds a view; the map closes when it is collected
        pass


def load_safetensors_dir(path: str | os.PathLike, **config_overrides) -> tuple[LlamaConfig, dict]:
  """An HF directory (config.json + model.safetensors or sharded model-0000x-of-0000y.safetensors)."""
  d = pathlib.Path(path)
  cfg_file = d / "config.json"
  if not cfg_file.exists():
    raise CheckpointNotFoundError(f"{cfg_file}: missing (an HF checkpoint directory needs config.json + *.safetensors)")
  config = LlamaConfig.from_hf_config(json.loads(cfg_file.read_text()), **config_overrides)
  index = d / "model.safetensors.index.json"
  if index.exists():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    shards = [d / f for f in files]
    for s in shards:
      if not s.exists():
        raise CheckpointNotFoundError(f"{s}: shard listed in {index.name} is missing")
  else:
    shards = sorted(d.glob("*.safetensors"))
  if not shards:
    raise CheckpointError(f"{d}: no *.safetensors files")

  def stream():
    for s in shards:
      yield from iter_safetensors(s)

  return config, assemble(config, stream(), str(d))


# ---- GGUF -------------------------------------------------------------------------------------------------------

def _gguf_field(reader, key, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  return f.contents()


def gguf_config(reader, source: str = "", **overrides) -> LlamaConfig:
  """LlamaConfig from GGUF metadata (general.architecture 'llama' or 'qwen2')."""
  arch = _gguf_field(reader, "general.architecture")
  if arch not in ("llama", "qwen2"):
    raise CheckpointError(f"{source}: unknown GGUF architecture {arch!r}; supported: llama, qwen2")
  g = lambda k, d=None: _gguf_field(reader, f"{arch}.{k}", d)
  heads = int(g("attention.head_count"))
  hidden = int(g("embedding_length"))
  names = {t.name for t in reader.tensors}
  vocab = g("vocab_size")
  if vocab is None:
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
  args = dict(
      vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(g("feed_forward_length")),
      num_layers=int(g("block_count")), num_heads=heads, num_kv_heads=int(g("attention.head_count_kv", heads)),
      head_dim=int(g("rope.dimension_count", hidden // heads)), rope_theta=float(g("rope.freq_base", 10000.0)),
      rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
      tie_embeddings="output.weight" not in names, qkv_bias="blk.0.attn_q.bias" in names,
      max_position_embeddings=int(g("context_length", 8192)), architecture=arch,
      bos_token_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id"),
      eos_token_id=_gguf_field(reader, "tokenizer.ggml.eos_token_id"))
  if "rope_freqs.weight" in names:
    raise CheckpointError(f"{source}: GGUF with a rope_freqs tensor (llama3 rope scaling) is not supported; "
                          "load the HF safetensors checkpoint instead")
  return LlamaConfig(**(args | overrides))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation (its converter interleaves the two rotary halves per head)."""
  dim = w.shape[0] // n_head // 2
  return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str | os.PathLike, **config_overrides) -> tuple[LlamaConfig, dict]:
  """A llama.cpp GGUF file, dequantised to float with `gguf.quants.dequantize`."""
  import gguf  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointNotFoundError(f"{path}: GGUF file not found")
  reader = gguf.GGUFReader(str(path))
  config = gguf_config(reader, str(path), **config_overrides)
  permute = config.architecture == "llama"

  def stream():
    for t in reader.tensors:
      m = re.match(r"^blk\.(\d+)\.(.+)$", t.name)
      if m:
        if m.group(2) not in _GGUF_LAYER:
          raise CheckpointError(f"{path}: unexpected GGUF tensor '{t.name}'")
        name = f"model.layers.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}"
      elif t.name in _GGUF_TOP:
        name = _GGUF_TOP[t.name]
      else:
        raise CheckpointError(f"{path}: unexpected GGUF tensor '{t.name}'")

      def load(t=t, name=name):
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        if permute and name.endswith("q_proj.weight"):
          w = _unpermute(w, config.num_heads)
        elif permute and name.endswith("k_proj.weight"):
          w = _unpermute(w, config.num_kv_heads)
        return w

      yield name, load

  return config, assemble(config, stream(), str(path))


# ---- entry point ------------------------------------------------------------------------------------------------

def resolve(spec: str | os.PathLike) -> pathlib.Path:
  """'smollm2' -> the embedded GGUF; otherwise the path itself (must exist)."""
  if str(spec) == "smollm2":
    return assets.smollm2_gguf()
  p = pathlib.Path(spec).expanduser()
  if not p.exists():
    raise CheckpointNotFoundError(f"{p}: checkpoint not found (expected 'smollm2', a .gguf file or an HF directory with "
                          "config.json + *.safetensors)")
  return p


def load_pretrained(spec: str | os.PathLike, **config_overrides) -> tuple[LlamaConfig, dict]:
  """(LlamaConfig, params) from "smollm2" (embedded GGUF), a .gguf path, or an HF safetensors directory.

  config_overrides (e.g. dtype='bfloat16', param_dtype='bfloat16', remat=True) replace config fields; params are
  stored in config.param_dtype.
  """
  p = resolve(spec)
  if p.is_dir():
    return load_safetensors_dir(p, **config_overrides)
  if p.suffix == ".gguf":
    return load_gguf(p, **config_overrides)
  raise CheckpointError(f"{p}: unknown checkpoint format (expected a .gguf file or an HF directory)")


def to_hf_state_dict(params: Mapping[str, Any], config: LlamaConfig, dtype: Any = None) -> dict[str, np.ndarray]:
  """Our params (without LoRA factors: merge first) -> {HF tensor name: array in PyTorch layout}.

  The inverse of `assemble`; used by export and by the transformers parity tests.
  """
  if config.lora_rank:
    raise ValueError("params carry LoRA factors; call toolgen_jax.models.lora.merge_lora first")
  out = {}
  for name, path, layer, kind in hf_names(config):
    a = params
    for k in path:
      a = a[k]
    a = np.asarray(a if layer is None else a[layer])
    w = ours_to_hf(kind, a)
    out[name] = np.ascontiguousarray(w if dtype is None else w.astype(dtype))
  return out


def config_overrides(model_cfg) -> dict:
  """LlamaConfig overrides from the `model` section of `toolgen_jax.config.base_config()`."""
  remat = bool(model_cfg.get("remat", False))
  if remat and model_cfg.get("remat_policy", ""):
    remat = model_cfg.remat_policy
  return dict(dtype=model_cfg.get("dtype", "float32"), param_dtype=model_cfg.get("param_dtype", "float32"),
              remat=remat, scan_layers=bool(model_cfg.get("scan_layers", True)))


def load_backbone(model_config, tokenizer, seed: int = 0) -> tuple[LlamaConfig, dict]:
  """(LlamaConfig, params) of `config.model`: its pretrained checkpoint, or for checkpoint='random' a randomly
  initialised Llama of shape `config.model.random` over `tokenizer`'s vocabulary (tests, smoke runs)."""
  if model_config.checkpoint == "random":
    from toolgen_jax.models import llama
    mcfg = LlamaConfig.tiny(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.bos_id,
                            **model_config.random.to_dict(), **config_overrides(model_config))
    return mcfg, llama.init_params(mcfg, jax.random.PRNGKey(int(seed)))
  return load_pretrained(model_config.checkpoint, **config_overrides(model_config))
