"""Shared by the training tests: a byte-level chat tokenizer (ChatML template) with added tool-code tokens.

It keeps the stage tests independent of any checkpoint: vocabulary = 256 bytes + the ChatML specials + the code
tokens, so a tiny Llama (LlamaConfig.tiny) can be trained on real tool documents in seconds.
"""

from __future__ import annotations

import re


class ByteChatTokenizer:
  SPECIALS = ("<|im_start|>", "<|im_end|>")

  def __init__(self, extra_tokens=()):
    names = list(self.SPECIALS) + [t for t in extra_tokens if t not in self.SPECIALS]
    self.added = {t: 256 + i for i, t in enumerate(names)}
    self.inverse = {v: k for k, v in self.added.items()}
    self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(names, key=len, reverse=True)) + ")")
    self.eos_id = self.added["<|im_end|>"]
    self.pad_id = 0

  @property
  def vocab_size(self) -> int:
    return 256 + len(self.added)

  def encode(self, text, add_special_tokens=False):
    ids = []
    for part in self._split.split(text):
      if part in self.added:
        ids.append(self.added[part])
      elif part:
        ids.extend(part.encode("utf-8"))
    return ids

  def decode(self, ids):
    out, buf = [], bytearray()
    for i in ids:
      if i in self.inverse:
        out.append(buf.decode("utf-8", "replace")); buf = bytearray(); out.append(self.inverse[i])
      else:
        buf.append(i)
    out.append(buf.decode("utf-8", "replace"))
    return "".join(out)

  def apply_chat_template(self, turns, tokenize=False, add_generation_prompt=False):
    text = "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns)
    if add_generation_prompt:
      text += "<|im_start|>assistant\n"
    return text


def code_tokens(levels: int, size: int) -> list[str]:
  return [f"<T{l}_{c}>" for l in range(levels) for c in range(size)]


def toy_codebook(num_tools: int, levels: int = 2, size: int = 8, seed: int = 0) -> dict[int, list[str]]:
  """Distinct random code sequences per tool (a stand-in for the learned codebook)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  seen, out = set(), {}
  for t in range(num_tools):
    while True:
      codes = tuple(int(c) for c in rng.integers(0, size, levels))
      if codes not in seen:
        seen.add(codes)
        break
    out[t] = [f"<T{l}_{c}>" for l, c in enumerate(codes)]
  return out
