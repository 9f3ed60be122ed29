"""Batched, jitted sentence encoding of tool documents / queries, with an on-disk cache keyed by corpus + encoder.

    from toolgen_jax.codebook.embed import encode_texts
    emb = encode_texts(["get weather by city", ...])        # np.ndarray [N, 384] float32, rows L2-normalised

Static shapes: texts are sorted by token length and padded to a length bucket (powers of two up to `max_len`) and a
fixed batch size, so a corpus compiles at most log2(max_len) programs whatever its size; the order of the input is
restored on the way out.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax import assets
from toolgen_jax.codebook import bert
from toolgen_jax.data.records import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
  """A loaded sentence encoder: config, params, tokenizer and a stable identity string for caches/artifacts."""

  config: bert.BertConfig
  params: Any
  tokenizer: Any  # tokenizers.Tokenizer (padding/truncation disabled; we pad ourselves)
  encoder_id: str
  path: str

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  @functools.cached_property
  def _apply(self):
    module = bert.BertEncoder(self.config)

    @jax.jit
    def apply(params, tokens, mask):
      return bert.mean_pool_normalize(module.apply(params, tokens, mask), mask)

    return apply

  def info(self, max_len: int = 128) -> dict:
    """The identity a Codebook records (`encoder=`), so `add_tools(docs=...)` re-encodes with the same model."""
    return {"encoder_id": self.encoder_id, "path": self.path, "max_len": int(max_len),
            "model_type": self.config.model_type, "dim": self.dim}

  def tokenize(self, texts: Sequence[str], max_len: int) -> list[list[int]]:
    return [e.ids[:max_len - 1] + e.ids[-1:] if len(e.ids) > max_len else e.ids
            for e in self.tokenizer.encode_batch(list(texts))]

  def encode(self, texts: Sequence[str], *, batch_size: int = 64, max_len: int = 128,
             progress: bool = False) -> np.ndarray:
    """texts (N) -> [N, H] float32 L2-normalised sentence embeddings."""
    texts = list(texts)
    for i, s in enumerate(texts):
      if not isinstance(s, str):
        raise DataError("<texts>", i, None, f"expected a string, got {type(s).__name__}")
    max_len = min(max_len, self.config.max_position_embeddings - (self.config.pad_token_id + 1
                                                                 if self.config.model_type == "mpnet" else 0))
    out = np.zeros((len(texts), self.dim), np.float32)
    if not texts:
      return out
    ids = self.tokenize(texts, max_len)
    order = np.argsort([len(x) for x in ids], kind="stable")
    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=len(texts), desc=f"encode[{self.encoder_id}]", unit="text")
    pad = self.config.pad_token_id
    for start in range(0, len(texts), batch_size):
      idx = order[start:start + batch_size]
      longest = max(len(ids[i]) for i in idx)
      t = min(max_len, 1 << max(3, (longest - 1).bit_length()))
      tokens = np.full((batch_size, t), pad, np.int32)
      mask = np.zeros((batch_size, t), np.int32)
      for r, i in enumerate(idx):
        tokens[r, :len(ids[i])] = ids[i]
        mask[r, :len(ids[i])] = 1
      mask[len(idx):, 0] = 1  # filler rows: keep them finite, then drop
      emb = np.asarray(self._apply(self.params, jnp.asarray(tokens), jnp.asarray(mask)))
      out[idx] = emb[:len(idx)]
      if bar is not None:
        bar.update(len(idx))
    if bar is not None:
      bar.close()
    return out


def _encoder_identity(path: pathlib.Path) -> str:
  """Directory name + hash of config and of the weights' size and first MiB (cheap, changes when weights do)."""
  h = hashlib.sha256((path / "config.json").read_bytes())
  for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model.bin")):
    h.update(str(f.stat().st_size).encode())
    with open(f, "rb") as fh:
      h.update(fh.read(1 << 20))
  name = path.name if path.name != "model" else path.parent.name
  return f"{name}-{h.hexdigest()[:12]}"


def resolve_encoder_path(spec: str | os.PathLike = "minilm") -> pathlib.Path:
  """'minilm' (or '') -> the embedded all-MiniLM-L6-v2; 'mpnet' -> all-mpnet-base-v2 (ToolWeaver's encoder) unpacked
  from its offline packages (`assets.mpnet_dir`, a MissingAssetError naming them when absent); otherwise a local HF
  BERT/MPNet directory."""
  if str(spec) in ("", "minilm"):
    return assets.minilm_dir()
  if str(spec) == "mpnet":
    return assets.mpnet_dir()
  if str(spec) == "gist":
    raise ValueError("encoder.kind='gist' embeddings come from the LLM, not a sentence encoder: the pipeline "
                     "trains them (pipeline.gist_embeddings); by hand, gist.train then gist.embed_tools [N, V, D]")
  if str(spec) == "bert_dir":
    raise ValueError("encoder.kind='bert_dir' needs encoder.path: a local BERT/MPNet directory")
  path = pathlib.Path(spec)
  if not (path / "config.json").exists():
    raise DataError(str(path), None, None, "encoder directory has no config.json")
  return path


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, dtype_name: str) -> Encoder:
  from tokenizers import Tokenizer
  p = pathlib.Path(path)
  config, params = bert.load_hf_encoder(p, dtype=jnp.dtype(dtype_name))
  if not (p / "tokenizer.json").exists():
    raise DataError(str(p / "tokenizer.json"), None, None, "encoder directory has no tokenizer.json (fast tokenizer)")
  tok = Tokenizer.from_file(str(p / "tokenizer.json"))
  tok.no_padding()
  tok.no_truncation()
  return Encoder(config, params, tok, _encoder_identity(p), path)


def load_encoder(spec: str | os.PathLike = "minilm", dtype: str = "float32") -> Encoder:
  """Loads (once per process; loaded weights are immutable) the encoder named by `spec`."""
  return _load_cached(str(resolve_encoder_path(spec)), dtype)


def encode_texts(texts: Sequence[str], encoder: Encoder | str | None = None, *, batch_size: int = 64,
                 max_len: int = 128, progress: bool = False) -> np.ndarray:
  """Sentence embeddings of `texts`: np.ndarray [N, H] float32, L2-normalised (H = 384 for MiniLM)."""
  enc = encoder if isinstance(encoder, Encoder) else load_encoder(encoder or "minilm")
  return enc.encode(texts, batch_size=batch_size, max_len=max_len, progress=progress)


def corpus_hash(texts: Sequence[str]) -> str:
  h = hashlib.sha256()
  for s in texts:
    h.update(s.encode("utf-8"))
    h.update(b"\x00")
  return h.hexdigest()[:16]


def cached_encode(texts: Sequence[str], workdir: str | os.PathLike, encoder: Encoder | str | None = None, *,
                  batch_size: int = 64, max_len: int = 128, progress: bool = True) -> np.ndarray:
  """`encode_texts` with a cache at `workdir/embeddings/<encoder_id>-<corpus hash>-L<max_len>.npy`."""
  enc = encoder if isinstance(encoder, Encoder) else load_encoder(encoder or "minilm")
  texts = list(texts)
  d = pathlib.Path(workdir) / "embeddings"
  f = d / f"{enc.encoder_id}-{corpus_hash(texts)}-L{max_len}.npy"
  if f.exists():
    emb = np.load(f)
    if emb.shape == (len(texts), enc.dim):
      return emb
  emb = enc.encode(texts, batch_size=batch_size, max_len=max_len, progress=progress)
  d.mkdir(parents=True, exist_ok=True)
  tmp = f.with_suffix(".tmp.npy")
  np.save(tmp, emb)
  os.replace(tmp, f)
  (d / f"{f.stem}.json").write_text(json.dumps({"encoder_id": enc.encoder_id, "path": enc.path, "n": len(texts),
                                                "max_len": max_len}))
  return emb


# ---- tool embeddings from the LLM itself (Toolscaler's post-guided re-embedding) -------------------------------

def mean_hidden_embeddings(params: Any, config: Any, token_batches) -> np.ndarray:
  """Masked mean of the LLM's final hidden states over each document's tokens, rows L2-normalised.

  token_batches yields (tokens [B, T] int32, mask [B, T]); returns [N, D] float32.
  """
  from toolgen_jax.models import llama

  @jax.jit
  def pooled(p, tokens, mask):
    h, _ = llama.hidden_states(p, config, tokens, attention_mask=mask)
    m = mask.astype(jnp.float32)[..., None]
    v = jnp.sum(h.astype(jnp.float32) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-6)

  return np.concatenate([np.asarray(pooled(params, jnp.asarray(t), jnp.asarray(m))) for t, m in token_batches])


def llm_tool_embeddings(params: Any, config: Any, tokenizer: Any, docs: Sequence[str], *, max_len: int,
                        batch_size: int = 16) -> np.ndarray:
  """[N, D] `mean_hidden_embeddings` of tool documents (each cut to `max_len` tokens, one padded length)."""
  from toolgen_jax.models.tokenizer import encode_text
  ids = [encode_text(tokenizer, d)[:int(max_len)] or [tokenizer.pad_id or 0] for d in docs]
  T = -(-max(len(x) for x in ids) // 16) * 16  # one padded length: one compilation

  def batches():
    for i in range(0, len(ids), batch_size):
      chunk = ids[i:i + batch_size]
      tok = np.zeros((batch_size, T), np.int32)
      mask = np.zeros((batch_size, T), np.int32)
      for r, x in enumerate(chunk):
        tok[r, :len(x)], mask[r, :len(x)] = x, 1
      yield tok, mask

  return mean_hidden_embeddings(params, config, batches())[:len(ids)]
