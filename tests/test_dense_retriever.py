"""The supervised dense baseline: in-batch-negative fine-tuning teaches a tiny encoder query -> tool pairs that share no
words, and the result is a Retriever like the zero-shot one."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.codebook import bert
from toolgen_jax.codebook.embed import Encoder
from toolgen_jax.data.records import Query
from toolgen_jax.evaluation import dense_retriever as dr
from toolgen_jax.evaluation import harness


@dataclasses.dataclass
class _Enc:
  ids: list


class _WordTokenizer:
  """Word -> id by a fixed hash (ids 2..127); 1 = [CLS]."""

  def encode_batch(self, texts):
    return [_Enc([1] + [2 + sum(map(ord, w)) * 7919 % 126 for w in t.lower().split()]) for t in texts]


DOCS = ["sunny rain forecast", "stock price market", "translate language words", "flight airport ticket",
        "recipe cooking oven", "football score match"]
# Queries use other words than their tool's document: only training can connect them.
QUERIES = [("umbrella tomorrow", 0), ("will it drizzle", 0), ("shares of apple", 1), ("nasdaq today", 1),
           ("say hello in french", 2), ("spanish for cat", 2), ("fly to paris", 3), ("book a plane", 3),
           ("bake bread", 4), ("dinner idea", 4), ("who won yesterday", 5), ("premier league goals", 5)]


def _encoder():
  cfg = bert.BertConfig.tiny()
  params = bert.BertEncoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
  return Encoder(cfg, params, _WordTokenizer(), "tiny", "")


def test_contrastive_loss_masks_other_copies_of_the_positive():
  q = jnp.eye(3)
  d = jnp.asarray([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
  same = jnp.asarray([[True, True, False], [True, True, False], [False, False, True]])
  masked = float(dr.contrastive_loss(q, d, same, 1.0))
  unmasked = float(dr.contrastive_loss(q, d, jnp.eye(3, dtype=bool), 1.0))
  # Row 0: with its twin d_1 masked, only d_2 (cos 0) competes.
  ref0 = -np.log(np.e / (np.e + 1))
  ref1 = -np.log(1 / (1 + 1))          # q_1 . d_1 = 0 vs d_2 = 0 (d_0, its twin, masked)
  ref2 = -np.log(np.e / (np.e + 2))
  assert masked == pytest.approx((ref0 + ref1 + ref2) / 3, rel=1e-5)
  assert unmasked > masked


@pytest.mark.slow
def test_fine_tuning_learns_pairs_without_shared_words():
  enc = _encoder()
  queries = [Query(f"q{i}", t, (tool,), split="train") for i, (t, tool) in enumerate(QUERIES)]
  before = dr.DenseRetriever(DOCS, enc)
  texts, tools, _ = dr.training_pairs(queries)
  cfg = dr.DenseConfig(steps=120, batch_size=6, learning_rate=3e-3, temperature=0.1, max_len=8)
  tuned, losses = dr.fine_tune(enc, texts, tools, DOCS, cfg=cfg)
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
  assert tuned.encoder_id.startswith("tiny-dense-") and tuned.params is not enc.params
  after = dr.DenseRetriever(DOCS, tuned)
  hits = lambda r: np.mean([row[0] == q.relevant[0] for row, q in zip(r.rank(queries, 1, None), queries)])
  assert hits(after) >= 0.9 > hits(before) + 0.3
  res = harness.evaluate(after, queries, ks=(1,), settings=("multi-domain",))
  assert res["multi-domain"][harness.ALL][harness.ALL]["ndcg@1"] >= 0.9


def _numpy_infonce(q, d, tools, tau):
  """float64 reference: row i's softmax over j = i and every j whose tool differs from i's."""
  q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
  s = q @ d.T / tau
  out = []
  for i in range(len(q)):
    keep = [j for j in range(len(q)) if j == i or tools[j] != tools[i]]
    out.append(-(s[i, i] - np.log(np.sum(np.exp(s[i, keep])))))
  return np.mean(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrastive_loss_matches_numpy_reference(seed):
  rng = np.random.default_rng(seed)
  q, d = rng.normal(size=(2, 9, 16))
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  d /= np.linalg.norm(d, axis=1, keepdims=True)
  tools = rng.integers(0, 4, size=9)  # 9 pairs over 4 tools: several rows share a tool
  same = jnp.asarray(tools[:, None] == tools[None, :])
  got = float(dr.contrastive_loss(jnp.asarray(q, jnp.float32), jnp.asarray(d, jnp.float32), same, 0.07))
  assert got == pytest.approx(_numpy_infonce(q, d, tools, 0.07), rel=1e-5)


def test_training_pairs_never_see_a_held_out_text():
  qs = [Query("a", "Umbrella tomorrow", (0,), split="train"),
        Query("b", "shares of apple", (1, 2), split="train"),
        Query("c", "umbrella   TOMORROW", (3,), split="test"),   # the same text as a training query, case/spacing aside
        Query("d", "bake bread", (4,), split="test"),
        Query("e", "fly to paris", (5,), split="dev"),
        Query("f", "dinner idea", (4,), split=""),               # unsplit: not the training split either
        Query("g", "who won", (5,), split="train")]
  texts, tools, dropped = dr.training_pairs(qs)
  assert (texts, tools, dropped) == (["shares of apple", "shares of apple", "who won"], [1, 2, 5], 1)
  held = {" ".join(q.text.lower().split()) for q in qs if q.split != "train"}
  assert not held & {" ".join(t.lower().split()) for t in texts}
  texts, _, dropped = dr.training_pairs(qs, held_out_texts=["Who won"])  # a text scored elsewhere is held out too
  assert texts == ["shares of apple"] * 2 and dropped == 2


def test_bucket_is_a_power_of_two_within_max_len():
  assert [dr._bucket(n, 64) for n in (1, 8, 9, 33, 64, 200)] == [8, 8, 16, 64, 64, 64]


@pytest.mark.slow  # 10 s of the fast tier's budget
def test_load_or_train_caches_by_pairs_and_settings(tmp_path, monkeypatch):
  enc = _encoder()
  queries = [Query(f"q{i}", t, (tool,), split="train") for i, (t, tool) in enumerate(QUERIES)]
  cfg = dr.DenseConfig(steps=3, batch_size=4, max_len=8)
  lines = []
  first = dr.load_or_train(DOCS, queries, tmp_path, encoder=enc, cfg=cfg, log=lines.append)
  assert any("step 3/3" in s for s in lines) and any("fine-tuning" in s for s in lines)
  (key,) = [p.name for p in (tmp_path / dr.CACHE_DIR).iterdir()]
  assert first.encoder.encoder_id == f"tiny-dense-{key}"

  def no_training(*a, **k):
    raise AssertionError("trained again although the cache matches")

  monkeypatch.setattr(dr, "fine_tune", no_training)
  again = dr.load_or_train(DOCS + ["a new tool appended"], queries, tmp_path, encoder=enc, cfg=cfg, log=lines.append)
  assert any("loaded the fine-tuned encoder" in s for s in lines)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), first.encoder.params,
                                   again.encoder.params))
  np.testing.assert_allclose(again.scores(["bake bread"])[:, :len(DOCS)], first.scores(["bake bread"]), atol=1e-6)
  for changed in (dict(cfg=dataclasses.replace(cfg, steps=4)), dict(queries=queries[:-1])):
    with pytest.raises(AssertionError, match="trained again"):
      dr.load_or_train(DOCS, **{"queries": queries, "cfg": cfg, **changed}, workdir=tmp_path, encoder=enc, log=None)
  with pytest.raises(ValueError, match="training-split queries"):
    dr.load_or_train(DOCS, [dataclasses.replace(q, split="test") for q in queries], tmp_path, encoder=enc, cfg=cfg)
