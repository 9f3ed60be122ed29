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
  texts, tools = dr.training_pairs(queries)
  cfg = dr.DenseConfig(steps=120, batch_size=6, learning_rate=3e-3, temperature=0.1, max_len=8)
  tuned, losses = dr.fine_tune(enc, texts, tools, DOCS, cfg=cfg)
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
  assert tuned.encoder_id.startswith("tiny-dense-") and tuned.params is not enc.params
  after = dr.DenseRetriever(DOCS, tuned)
  hits = lambda r: np.mean([row[0] == q.relevant[0] for row, q in zip(r.rank(queries, 1, None), queries)])
  assert hits(after) >= 0.9 > hits(before) + 0.3
  res = harness.evaluate(after, queries, ks=(1,), settings=("multi-domain",))
  assert res["multi-domain"][harness.ALL][harness.ALL]["ndcg@1"] >= 0.9
