"""Parity of the Flax BERT/MPNet sentence encoder with transformers (PyTorch) + the embedding cache."""

import json
import shutil

import numpy as np
import pytest

from toolgen_jax import assets
from toolgen_jax.codebook import bert, embed
from toolgen_jax.data.records import DataError

TEXTS = ["get the weather forecast for a city", "Thai Drivers License OCR&&Driver's  License", "a",
         "word " * 300, "Search a Grocery: search a specific grocery item by name", "",
         "category_name:Food, tool_name:The Cocktail DB, api_name:List of Cocktails"]


def _torch_reference(model_dir, texts, max_len=128, one_by_one=False):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.AutoModel.from_pretrained(model_dir).eval()
  groups = [[t] for t in texts] if one_by_one else [texts]
  out = []
  for g in groups:
    b = tok(g, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    b.pop("token_type_ids", None) if model.config.model_type == "mpnet" else None
    with torch.no_grad():
      h = model(**b).last_hidden_state
    m = b["attention_mask"][..., None].float()
    out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1).numpy())
  return np.concatenate(out)


@pytest.fixture(scope="session")
def minilm():
  return embed.load_encoder("minilm")


@pytest.mark.slow
def test_minilm_parity_with_transformers(minilm):
  ours = embed.encode_texts(TEXTS, minilm, batch_size=4)
  ref = _torch_reference(assets.minilm_dir(), TEXTS)
  assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
  cos = (ours * ref).sum(-1)
  assert cos.min() >= 0.9999, cos
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_order_and_batching_do_not_change_embeddings(minilm):
  a = embed.encode_texts(TEXTS, minilm, batch_size=64)
  b = embed.encode_texts(TEXTS[::-1], minilm, batch_size=3)[::-1]
  np.testing.assert_allclose(a, b, atol=2e-5)
  assert embed.encode_texts([], minilm).shape == (0, 384)


def test_non_string_input_names_the_record(minilm):
  with pytest.raises(DataError, match="record 1"):
    embed.encode_texts(["ok", 3], minilm)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_random_hf_directory_parity(tmp_path, model_type):
  """Any BERT/MPNet directory goes through the same path (MPNet adds relative-position bias)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  common = dict(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=80)
  if model_type == "bert":
    model = transformers.BertModel(transformers.BertConfig(**common))
  else:
    model = transformers.MPNetModel(transformers.MPNetConfig(**common, pad_token_id=1))
  model.save_pretrained(tmp_path)
  for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(assets.minilm_dir() / f, tmp_path / f)
  enc = embed.load_encoder(tmp_path)
  assert enc.config.model_type == model_type
  texts = TEXTS[:3] + ["word " * 60]
  ours = enc.encode(texts, batch_size=2, max_len=64)
  ref = _torch_reference(tmp_path, texts, max_len=64, one_by_one=model_type == "mpnet")
  assert (ours * ref).sum(-1).min() >= 0.9999


def test_relative_position_bucket_matches_t5_formula():
  rel = np.arange(-200, 201)
  got = np.asarray(bert.relative_position_bucket(rel, 32, 128))
  n = -rel
  ret = (n < 0) * 16
  n = np.abs(n)
  large = np.minimum(8 + (np.log(np.maximum(n, 1) / 8) / np.log(128 / 8) * 8).astype(int), 15)
  np.testing.assert_array_equal(got, ret + np.where(n < 8, n, large))


def test_unsupported_architecture_is_a_clear_error(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
  with pytest.raises(DataError, match="model_type"):
    bert.BertConfig.from_hf(tmp_path)


def test_cache_hits_and_is_keyed_by_corpus(tmp_path, minilm):
  a = embed.cached_encode(TEXTS[:3], tmp_path, minilm, progress=False)
  files = sorted((tmp_path / "embeddings").glob("*.npy"))
  assert len(files) == 1 and minilm.encoder_id in files[0].name
  np.save(files[0], np.zeros_like(a))  # a cache hit returns the stored array, not a recomputation
  assert np.all(embed.cached_encode(TEXTS[:3], tmp_path, minilm, progress=False) == 0)
  b = embed.cached_encode(TEXTS[:2], tmp_path, minilm, progress=False)
  np.testing.assert_allclose(b, a[:2], atol=2e-5)
  assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 2
