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

  def __len__(self) -> int:
    return self.vocab_size

  def token_to_id(self, token):
    return self.added.get(token)

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
  from toolgen_jax.code_vocab import token_string
  return [token_string("codes", l, c) for l in range(levels) for c in range(size)]


class ToyCodes(dict):
  """tool id -> its code token strings; `tool_text` as a `CodeVocabulary` has it (what the stage builders read)."""

  def tool_text(self, tool: int) -> str:
    if tool not in self:
      raise KeyError(f"tool {tool} has no code ({len(self)} entries)")
    return "".join(self[tool])


def toy_codebook(num_tools: int, levels: int = 2, size: int = 8, seed: int = 0) -> ToyCodes:
  """Distinct random code sequences per tool (a stand-in for the learned codebook)."""
  import numpy as np
  from toolgen_jax.code_vocab import token_string
  rng = np.random.default_rng(seed)
  seen, out = set(), ToyCodes()
  for t in range(num_tools):
    while True:
      codes = tuple(int(c) for c in rng.integers(0, size, levels))
      if codes not in seen:
        seen.add(codes)
        break
    out[t] = [token_string("codes", l, c) for l, c in enumerate(codes)]
  return out


def toy_examples(n: int = 32, seed: int = 0):
  """Synthetic prompt -> code examples (no data files needed)."""
  import numpy as np
  from toolgen_jax.prompts import Example
  rng = np.random.default_rng(seed)
  cb = toy_codebook(n, 2, 8, seed)
  return [Example(id=str(i), segments=(
      (f"<|im_start|>user\ntool {i} does {'abcdefgh'[i % 8] * int(rng.integers(1, 6))}<|im_end|>\n"
       "<|im_start|>assistant\n", False), ("".join(cb[i]) + "<|im_end|>\n", True))) for i in range(n)]


def toy_run(workdir: str, steps: int = 12, *, sleep: float = 0.0, checkpoint_every: int = 4, nan_at: int = -1,
            grad_accum: int = 1, async_checkpoint: bool = True, eval_fn=None, with_dev: bool = False,
            **train_overrides):
  """A tiny deterministic training run through `train.fit` (used in-process and as a killable subprocess)."""
  import time

  import jax
  import numpy as np

  from toolgen_jax import config as config_lib
  from toolgen_jax.models import llama
  from toolgen_jax.training import input_pipeline as ip
  from toolgen_jax.training import sharding as shd
  from toolgen_jax.training import train

  tok = ByteChatTokenizer(code_tokens(2, 8))
  c = config_lib.base_config()
  c.train.steps, c.train.learning_rate, c.train.warmup_fraction = steps, 3e-3, 0.1
  c.train.log_every, c.train.checkpoint_every, c.train.keep_checkpoints = 1, checkpoint_every, 2
  c.train.progress_bar, c.train.async_checkpoint, c.train.grad_accum = False, async_checkpoint, grad_accum
  for k, v in train_overrides.items():
    setattr(c.train, k, v)
  mc = llama.LlamaConfig.tiny(vocab_size=tok.vocab_size)

  class Pipe(ip.InputPipeline):
    def batch(self, step, drop_wrapped=False):
      if sleep:
        time.sleep(sleep)
      b = super().batch(step, drop_wrapped)
      if step == nan_at:
        b["weights"] = b["weights"] * np.nan
      return b

  pipe = Pipe(toy_examples(32), tok, batch_size=8, seq_len=48, seed=0)
  res = train.fit(model_config=mc, params=llama.init_params(mc, jax.random.PRNGKey(0)), train_config=c.train,
                  mesh=shd.make_mesh(c.mesh, jax.devices()[:1]), rules=c.mesh.logical_axis_rules, pipeline=pipe,
                  workdir=workdir, stage="toy", extras={"config": c.to_dict(), "codebook": toy_codebook(32, 2, 8)},
                  eval_fn=eval_fn, dev_pipeline=ip.InputPipeline(toy_examples(12, 1), tok, batch_size=8, seq_len=48)
                  if with_dev else None)
  return res


if __name__ == "__main__":
  import sys

  import jax
  import numpy as np
  res = toy_run(sys.argv[1], sleep=float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(res.state.params))[0]
  np.savez(sys.argv[1] + "/final_params.npz", **{"/".join(str(k.key) for k in p): np.asarray(x) for p, x in flat})
