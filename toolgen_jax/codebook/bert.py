"""A Flax (linen) BERT / MPNet sentence encoder loaded from a local Hugging Face directory.

Tool embeddings in ToolWeaver and Toolscaler come from a sentence-transformers model (all-MiniLM-L6-v2, a 6-layer
BERT; the papers also use all-mpnet-base-v2, an MPNet). Both are post-LayerNorm transformer encoders that differ only
in how positions enter: BERT adds learned absolute position (and token-type) embeddings; MPNet adds learned absolute
positions offset by `padding_idx + 1` *and* a T5-style bucketed relative-position bias shared by all layers.
One module covers both so any sentence-transformers BERT/MPNet directory goes through the same path.

Sentence embedding = mean of the last hidden states over real tokens, then L2 normalisation (the
sentence-transformers `Pooling(mean)` + `Normalize` modules).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.data.records import DataError

SUPPORTED_MODEL_TYPES = ("bert", "mpnet")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int = 2          # 0 for MPNet (no token-type embeddings)
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  model_type: str = "bert"
  pad_token_id: int = 0
  relative_attention_num_buckets: int = 0  # MPNet: 32; 0 = no relative bias (BERT)
  dtype: Any = jnp.float32

  @classmethod
  def from_hf(cls, path: str | pathlib.Path) -> "BertConfig":
    """Reads `config.json` of a Hugging Face BERT/MPNet directory."""
    path = pathlib.Path(path) / "config.json"
    try:
      d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise DataError(str(path), None, None, f"cannot read encoder config: {e}") from e
    mt = d.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
      raise DataError(str(path), None, "model_type",
                      f"unsupported encoder architecture {mt!r}; supported: {SUPPORTED_MODEL_TYPES}")
    if d.get("position_embedding_type", "absolute") != "absolute":
      raise DataError(str(path), None, "position_embedding_type", "only absolute position embeddings are supported")
    try:
      return cls(
          vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
          num_heads=d["num_attention_heads"], intermediate_size=d["intermediate_size"],
          max_position_embeddings=d["max_position_embeddings"],
          type_vocab_size=d.get("type_vocab_size", 2) if mt == "bert" else 0,
          layer_norm_eps=d.get("layer_norm_eps", 1e-12), hidden_act=d.get("hidden_act", "gelu"), model_type=mt,
          pad_token_id=d.get("pad_token_id", 0 if mt == "bert" else 1),
          relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32) if mt == "mpnet" else 0)
    except KeyError as e:
      raise DataError(str(path), None, e.args[0], "missing required field") from e

  @classmethod
  def tiny(cls, **overrides) -> "BertConfig":
    base = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_position_embeddings=64)
    return cls(**(base | overrides))


def _act(name: str):
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"unsupported hidden_act {name!r}")


def relative_position_bucket(relative_position: jax.Array, num_buckets: int = 32, max_distance: int = 128):
  """T5/MPNet bidirectional bucketing of (memory - query) offsets: half the buckets per sign, exact below
  `num_buckets // 4`, log-spaced up to `max_distance`."""
  n = -relative_position
  num_buckets //= 2
  ret = (n < 0).astype(jnp.int32) * num_buckets
  n = jnp.abs(n)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
      * (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class _Layer(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, bias):
    c = self.config
    hd = c.hidden_size // c.num_heads
    dense = lambda n, name: nn.Dense(n, dtype=c.dtype, name=name)
    b, t, _ = x.shape
    q = dense(c.hidden_size, "query")(x).reshape(b, t, c.num_heads, hd)
    k = dense(c.hidden_size, "key")(x).reshape(b, t, c.num_heads, hd)
    v = dense(c.hidden_size, "value")(x).reshape(b, t, c.num_heads, hd)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd) + bias
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(c.dtype)
    attn = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, c.hidden_size)
    x = nn.LayerNorm(c.layer_norm_eps, dtype=c.dtype, name="attention_ln")(x + dense(c.hidden_size, "attention_out")(attn))
    h = _act(c.hidden_act)(dense(c.intermediate_size, "intermediate")(x))
    return nn.LayerNorm(c.layer_norm_eps, dtype=c.dtype, name="output_ln")(x + dense(c.hidden_size, "output")(h))


class BertEncoder(nn.Module):
  """tokens [B, T] int32, mask [B, T] (1 = real token, right padding) -> last hidden states [B, T, H]."""

  config: BertConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    b, t = tokens.shape
    mask = mask.astype(jnp.int32)
    if c.model_type == "mpnet":
      # MPNet/RoBERTa numbering: real tokens get padding_idx + 1, padding_idx + 2, ...; pads get padding_idx.
      positions = jnp.cumsum(mask, axis=1) * mask + c.pad_token_id
    else:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    x = nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(tokens)
    x = x + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
    if c.type_vocab_size:
      x = x + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(jnp.zeros_like(tokens))
    x = nn.LayerNorm(c.layer_norm_eps, dtype=c.dtype, name="embeddings_ln")(x).astype(c.dtype)
    bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    if c.relative_attention_num_buckets:
      rel = jnp.arange(t)[None, :] - jnp.arange(t)[:, None]  # memory - query
      buckets = relative_position_bucket(rel, c.relative_attention_num_buckets)
      rel_bias = nn.Embed(c.relative_attention_num_buckets, c.num_heads, name="relative_attention_bias")(buckets)
      bias = bias + jnp.transpose(rel_bias, (2, 0, 1))[None]
    for i in range(c.num_layers):
      x = _Layer(c, name=f"layer_{i}")(x, bias)
    return x


def mean_pool_normalize(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Sentence-transformers mean pooling over real tokens, then L2 normalisation. [B, T, H], [B, T] -> [B, H]."""
  m = mask.astype(jnp.float32)[..., None]
  pooled = (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def _strip_prefix(tensors: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
  prefixes = (f"{model_type}.", "model.", "0.auto_model.")
  out = {}
  for k, v in tensors.items():
    for p in prefixes:
      if k.startswith(p):
        k = k[len(p):]
        break
    out[k] = v
  return out


def convert_hf_state(tensors: dict[str, np.ndarray], config: BertConfig, source: str = "<state>") -> dict:
  """Maps Hugging Face BertModel / MPNetModel tensor names onto the `BertEncoder` parameter tree.

  Linear weights are transposed ([out, in] -> kernel [in, out]). Unused heads (pooler, LM head) are ignored; a
  missing tensor raises DataError naming it.
  """
  t = _strip_prefix(tensors, config.model_type)

  def get(name):
    if name not in t:
      raise DataError(source, None, name, "tensor missing from the checkpoint")
    return np.asarray(t[name], np.float32)

  def dense(prefix):
    return {"kernel": get(prefix + ".weight").T, "bias": get(prefix + ".bias")}

  def ln(prefix):
    return {"scale": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

  p: dict[str, Any] = {
      "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
      "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
      "embeddings_ln": ln("embeddings.LayerNorm"),
  }
  if config.type_vocab_size:
    p["token_type_embeddings"] = {"embedding": get("embeddings.token_type_embeddings.weight")}
  if config.relative_attention_num_buckets:
    p["relative_attention_bias"] = {"embedding": get("encoder.relative_attention_bias.weight")}
  for i in range(config.num_layers):
    pre = f"encoder.layer.{i}."
    if config.model_type == "mpnet":
      names = dict(query="attention.attn.q", key="attention.attn.k", value="attention.attn.v",
                   attention_out="attention.attn.o", attention_ln="attention.LayerNorm")
    else:
      names = dict(query="attention.self.query", key="attention.self.key", value="attention.self.value",
                   attention_out="attention.output.dense", attention_ln="attention.output.LayerNorm")
    layer = {k: (ln if k.endswith("_ln") else dense)(pre + v) for k, v in names.items()}
    layer["intermediate"] = dense(pre + "intermediate.dense")
    layer["output"] = dense(pre + "output.dense")
    layer["output_ln"] = ln(pre + "output.LayerNorm")
    p[f"layer_{i}"] = layer
  return {"params": jax.tree.map(jnp.asarray, p)}


def load_hf_encoder(path: str | pathlib.Path, dtype: Any = jnp.float32) -> tuple[BertConfig, dict]:
  """Loads config + weights (`model.safetensors`, or `pytorch_model.bin` through torch if that is all there is)."""
  path = pathlib.Path(path)
  config = dataclasses.replace(BertConfig.from_hf(path), dtype=dtype)
  st = sorted(path.glob("*.safetensors"))
  if st:
    from safetensors.numpy import load_file
    tensors = {}
    for f in st:
      tensors.update(load_file(str(f)))
    source = str(st[0])
  elif (path / "pytorch_model.bin").exists():
    import torch  # only for legacy checkpoints
    sd = torch.load(str(path / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    tensors = {k: v.float().numpy() for k, v in sd.items()}
    source = str(path / "pytorch_model.bin")
  else:
    raise DataError(str(path), None, None, "no *.safetensors or pytorch_model.bin weights in the encoder directory")
  return config, convert_hf_state(tensors, config, source)
