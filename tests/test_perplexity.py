"""Strided perplexity against Hugging Face's loss (labels masked with -100) on a tiny PyTorch Llama."""

import math

import numpy as np
import pytest

from toolgen_jax.evaluation import perplexity


def test_windows_cover_each_token_once():
  for n, w, s in [(10, 4, 2), (10, 4, 4), (9, 3, 1), (5, 8, 3), (100, 16, 5)]:
    scored = []
    for b, e, first in perplexity.windows(n, w, s):
      assert e - b <= w and b + 1 <= first < e
      scored.extend(range(first, e))
    chunk_starts = set(range(w, n, w)) if s == w else set()
    assert scored == [t for t in range(1, n) if t not in chunk_starts]
  with pytest.raises(ValueError, match="stride"):
    perplexity.windows(10, 4, 5)


def test_uniform_model_has_perplexity_vocab_size():
  v = 37
  out = perplexity.perplexity(lambda t: np.zeros(t.shape + (v,), np.float32), np.arange(50) % v, window=8, stride=3,
                              batch_size=3)
  assert out["perplexity"] == pytest.approx(v)
  assert out["n_scored"] == 49


@pytest.fixture(scope="module")
def tiny_torch_llama():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
  return torch, transformers.LlamaForCausalLM(cfg).eval()


def _hf_strided_reference(torch, model, ids, window, stride):
  """The Hugging Face perplexity recipe: per window, labels = -100 except the new tokens; sum loss * count."""
  nll_sum, n_sum, prev_end = 0.0, 0, 0
  for begin in range(0, len(ids), stride):
    end = min(begin + window, len(ids))
    trg_len = end - prev_end
    x = torch.tensor([ids[begin:end]])
    labels = x.clone()
    labels[:, :-trg_len] = -100
    with torch.no_grad():
      loss = model(x, labels=labels).loss
    n = int((labels[:, 1:] != -100).sum())
    nll_sum += float(loss) * n
    n_sum += n
    prev_end = end
    if end == len(ids):
      break
  return math.exp(nll_sum / n_sum), n_sum


@pytest.mark.slow
@pytest.mark.parametrize("window,stride", [(16, 8), (16, 16), (64, 64), (12, 5)])
def test_matches_hugging_face_recipe(tiny_torch_llama, window, stride):
  torch, model = tiny_torch_llama
  ids = np.random.default_rng(1).integers(0, 61, size=45).tolist()

  def logits_fn(tokens):
    with torch.no_grad():
      return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()

  want, n = _hf_strided_reference(torch, model, ids, window, stride)
  got = perplexity.perplexity(logits_fn, ids, window=window, stride=stride, batch_size=2)
  assert got["n_scored"] == n
  assert got["perplexity"] == pytest.approx(want, rel=1e-5)


def test_heldout_text_is_fixed_prose():
  text, prov = perplexity.heldout_text()
  assert prov["chars"] == len(text) > 100_000
  assert "statement" in text and "   " not in text.split("\n")[0]
  out = perplexity.heldout_perplexity(lambda t: np.zeros(t.shape + (256,), np.float32),
                                      lambda s: list(s.encode("utf-8")), n_tokens=300, window=64, stride=32)
  assert out["perplexity"] == pytest.approx(256)
  assert out["n_tokens"] == 300 and len(out["text"]["sha256_of_token_ids"]) == 16
  with pytest.raises(ValueError, match="only"):
    perplexity.heldout_perplexity(lambda t: t, lambda s: [1, 2, 3], n_tokens=10)


def test_flax_llama_logits_fn_matches_forward():
  import jax

  from toolgen_jax.models import llama

  cfg = llama.LlamaConfig.tiny(vocab_size=64)
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  ids = np.random.default_rng(0).integers(0, 64, size=40)
  got = perplexity.perplexity(perplexity.llama_logits_fn(params, cfg), ids, window=40, stride=40, batch_size=1)
  logits = np.asarray(llama.forward(params, cfg, ids[None].astype(np.int32))[0][0], np.float64)
  m = logits.max(-1, keepdims=True)
  lp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  want = np.exp(-np.mean(lp[np.arange(39), ids[1:]]))
  assert got["perplexity"] == pytest.approx(want, rel=1e-5)


def test_language_preservation_reports_the_tool_token_masked_figure_beside_the_full_one():
  """Tool rows that outscore every word wreck the full-vocabulary perplexity; with the tool tokens masked the tuned
  model (same weights otherwise) reads English exactly as the base model does."""
  import jax

  from _training_helpers import ByteChatTokenizer, code_tokens
  from toolgen_jax.evaluation import perplexity as ppl
  from toolgen_jax.models import llama
  tok = ByteChatTokenizer(code_tokens(2, 4))
  mc = llama.LlamaConfig.tiny(vocab_size=tok.vocab_size)
  base = llama.init_params(mc, jax.random.PRNGKey(0))
  start = 258  # bytes + the two ChatML specials; the code tokens follow
  head = np.asarray(base["lm_head"]["kernel"]).copy()
  head[:, start:] = 50.0 * np.sign(head[:, start:])  # tool rows with huge logits on any text
  tuned = {**base, "lm_head": {"kernel": jax.numpy.asarray(head)}}
  out = ppl.language_preservation(mc, tok, base, tuned, n_tokens=96, words_only_from=start)
  assert set(out) == {"base", "tuned", "tuned (tool tokens masked)"}
  assert out["tuned"]["perplexity"] > 10 * out["base"]["perplexity"]
  masked = out["tuned (tool tokens masked)"]["perplexity"]
  assert masked <= out["tuned"]["perplexity"]
  # The masked tuned model differs from the base only in the (masked) tool rows: the base's figure over words only.
  ref = ppl.language_preservation(mc, tok, base, base, n_tokens=96, words_only_from=start)["tuned (tool tokens masked)"]
  np.testing.assert_allclose(masked, ref["perplexity"], rtol=1e-5)
