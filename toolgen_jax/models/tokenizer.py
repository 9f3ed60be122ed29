"""The tokenizer of a checkpoint (GGUF or HF directory) behind one small interface, with added tool tokens.

A thin wrapper over a transformers fast tokenizer: transformers already builds one from GGUF metadata (vocabulary,
merges, special ids, chat template), which is the same code path users would serve with. Building it from a GGUF
takes ~15 s (merges are parsed in Python), so the result is cached as `tokenizer.json` under
$TOOLGEN_CACHE (default ~/.cache/toolgen_jax), keyed by the file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, Iterable, Sequence

from toolgen_jax.models import weights


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("TOOLGEN_CACHE", pathlib.Path.home() / ".cache" / "toolgen_jax"))


class Tokenizer:
  """encode/decode/chat template/special ids over a transformers fast tokenizer (`.hf`)."""

  def __init__(self, hf_tokenizer: Any, source: str = ""):
    self.hf = hf_tokenizer
    self.source = source

  # ---- ids ----------------------------------------------------------------------------------------------------
  def __len__(self) -> int:
    return len(self.hf)

  @property
  def bos_id(self) -> int | None:
    return self.hf.bos_token_id

  @property
  def eos_id(self) -> int | None:
    return self.hf.eos_token_id

  @property
  def pad_id(self) -> int:
    """The padding id (falls back to eos when the checkpoint defines none, as HF generate does)."""
    return self.hf.pad_token_id if self.hf.pad_token_id is not None else self.hf.eos_token_id

  def token_to_id(self, token: str) -> int | None:
    i = self.hf.convert_tokens_to_ids(token)
    return None if i is None or (i == self.hf.unk_token_id and token != self.hf.unk_token) else int(i)

  def id_to_token(self, i: int) -> str:
    return self.hf.convert_ids_to_tokens(int(i))

  # ---- text ---------------------------------------------------------------------------------------------------
  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`. No BOS by default: chat templates and our pipelines place special tokens explicitly."""
    return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
    return [list(x) for x in self.hf(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens,
                          clean_up_tokenization_spaces=False)

  @property
  def chat_template(self) -> str | None:
    return self.hf.chat_template

  def apply_chat_template(self, messages: Sequence[dict], *, add_generation_prompt: bool = True,
                          tokenize: bool = False, **kwargs) -> str | list[int]:
    """The checkpoint's own chat template (from the GGUF `tokenizer.chat_template` or tokenizer_config.json)."""
    out = self.hf.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=False,
                                      **kwargs)
    return self.encode(out) if tokenize else out

  # ---- vocabulary extension -----------------------------------------------------------------------------------
  def add_tokens(self, tokens: Sequence[str], special: bool = False) -> list[int]:
    """Adds whole-unit tokens (never split, not normalised); returns their ids (existing ones keep theirs)."""
    from tokenizers import AddedToken  # pylint: disable=g-import-not-at-top
    new = [AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
           for t in tokens if self.token_to_id(t) is None]
    if special:
      self.hf.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    else:
      self.hf.add_tokens(new)
    ids = [self.token_to_id(t) for t in tokens]
    bad = [t for t, i in zip(tokens, ids) if i is None]
    if bad:
      raise ValueError(f"{self.source}: could not add tokens {bad[:3]}")
    return ids

  def save(self, directory: str | os.PathLike) -> None:
    """tokenizer.json + tokenizer_config.json (+ chat template) in HF layout."""
    self.hf.save_pretrained(str(directory))


def _from_gguf(path: pathlib.Path):
  import transformers  # pylint: disable=g-import-not-at-top
  st = path.stat()
  key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}|{transformers.__version__}".encode())
  cached = _cache_dir() / "tokenizers" / key.hexdigest()[:16]
  if (cached / "tokenizer.json").exists():
    return transformers.AutoTokenizer.from_pretrained(str(cached))
  tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  try:
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    os.replace(tmp, cached) if not cached.exists() else None
  except OSError:
    pass  # an unwritable cache only costs time
  return tok


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
  """Tokenizer of "smollm2" (the embedded GGUF), a .gguf file, or an HF directory (tokenizer.json etc.)."""
  import transformers  # pylint: disable=g-import-not-at-top
  p = weights.resolve(spec)
  if p.is_dir():
    if not any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
      raise weights.CheckpointError(f"{p}: no tokenizer.json / tokenizer_config.json / tokenizer.model")
    return Tokenizer(transformers.AutoTokenizer.from_pretrained(str(p)), str(p))
  if p.suffix == ".gguf":
    return Tokenizer(_from_gguf(p), str(p))
  raise weights.CheckpointError(f"{p}: unknown tokenizer source (expected a .gguf file or an HF directory)")


def encode_text(tokenizer: Any, text: str) -> list[int]:
  """Token ids without added BOS/EOS (chat templates write their special tokens as text).

  Accepts our `Tokenizer`, a transformers tokenizer, or a `tokenizers.Tokenizer`.
  """
  if not text:
    return []
  try:
    out = tokenizer.encode(text, add_special_tokens=False)
  except TypeError:
    out = tokenizer.encode(text)
  return list(getattr(out, "ids", out))


def tokenizer_from_config(model_config) -> Tokenizer:
  """The tokenizer of `config.model`: `tokenizer` if set, else the checkpoint's own."""
  spec = model_config.tokenizer or model_config.checkpoint
  if spec == "random":
    raise ValueError("config.model.checkpoint='random' needs config.model.tokenizer (e.g. 'smollm2')")
  return load_tokenizer(spec)
