"""Orbax round trip onto shardings, extras (codebook, tokenizer, config) beside the state, keep-N, best-by-metric."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _training_helpers import ByteChatTokenizer
from toolgen_jax.training import checkpoint as ckpt_lib
from toolgen_jax.training import sharding as shd


def _state(x):
  return {"params": {"w": jnp.arange(12.0).reshape(3, 4) * x, "b": jnp.ones(4) * x}, "step": jnp.int32(x)}


def _abstract(mesh):
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), _state(1))


def test_roundtrip_with_extras_and_keep_n(tmp_path):
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  ck = ckpt_lib.Checkpointer(tmp_path, keep=2, save_every=2, async_save=True)
  extras = {"config": {"train": {"steps": 6}}, "codebook": ckpt_lib.codebook_json({0: ["<T0_1>", "<T1_3>"]}),
            "tokenizer": ckpt_lib.tokenizer_json(ByteChatTokenizer())}
  for step in (2, 4, 6):
    ck.save(step, _state(step), extras)
  ck.wait()
  assert sorted(int(p.name) for p in (tmp_path / "latest").iterdir() if p.name.isdigit()) == [4, 6]
  state, ex = ck.restore(_abstract(mesh))
  np.testing.assert_array_equal(state["params"]["w"], np.arange(12.0).reshape(3, 4) * 6)
  assert int(state["step"]) == 6
  assert ex["config"]["train"]["steps"] == 6 and ex["codebook"] == {"0": ["<T0_1>", "<T1_3>"]}
  older, _ = ck.restore(_abstract(mesh), step=4)
  assert int(older["step"]) == 4
  ck.close()
  assert ck.should_save(4, 10) and not ck.should_save(3, 10) and ck.should_save(10, 10)


def test_tokenizer_json_from_a_hf_fast_tokenizer(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))

  class Wrapper:  # our models.tokenizer.Tokenizer keeps the HF tokenizer in `.hf`
    hf = tok
  text = ckpt_lib.tokenizer_json(Wrapper())
  assert json.loads(text)["model"]["vocab"] == {"a": 0, "[UNK]": 1}


def test_best_by_metric_keeps_the_best(tmp_path):
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  ck = ckpt_lib.Checkpointer(tmp_path, best_metric="ndcg@5", best_mode="max", async_save=False)
  for step, score in ((1, 0.3), (2, 0.7), (3, 0.5)):
    ck.save_best(step, _state(step), {"ndcg@5": score})
  ck.wait()
  assert ck.best_step() == 2
  state, _ = ck.restore(_abstract(mesh), best=True)
  assert int(state["step"]) == 2
  with pytest.raises(KeyError, match="best_metric"):
    ck.save_best(4, _state(4), {"loss": 1.0})
  ck.close()


def test_missing_checkpoint_and_bad_mode_raise(tmp_path):
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  ck = ckpt_lib.Checkpointer(tmp_path)
  assert ck.latest_step() is None
  with pytest.raises(FileNotFoundError):
    ck.restore(_abstract(mesh))
  with pytest.raises(ValueError, match="best_mode"):
    ckpt_lib.Checkpointer(tmp_path / "x", best_mode="up")
