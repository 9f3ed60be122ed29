"""Issue #17, checkpoints: a corrupt newest step (truncated data file, deleted metadata, missing item) is skipped with
a warning naming the step and why, and the newest readable step is restored; `train.fit` resumes from it."""

import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolgen_jax.training import checkpoint as ckpt_lib
from toolgen_jax.training import sharding as shd


def _state(x):
  return {"params": {"w": jnp.arange(12.0).reshape(3, 4) * x, "b": jnp.ones(4) * x}, "step": jnp.int32(x)}


def _abstract():
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), _state(1))


def _saved(tmp_path, steps=(2, 4, 6)):
  ck = ckpt_lib.Checkpointer(tmp_path, keep=3, async_save=False)
  for step in steps:
    ck.save(step, _state(step), {"step": step})
  ck.close()
  return tmp_path / "latest"


def _truncate_data(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / "state") for f in fs
           if os.sep + "d" + os.sep in os.path.join(r, f)]
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def _delete_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()
  (step_dir / "extras" / "metadata").unlink()


def _missing_item(step_dir):
  shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize("corrupt", [_truncate_data, _delete_metadata, _missing_item])
def test_corrupt_newest_step_is_skipped_and_named(tmp_path, corrupt, caplog):
  latest = _saved(tmp_path)
  corrupt(latest / "6")
  ck = ckpt_lib.Checkpointer(tmp_path, keep=3)
  with caplog.at_level(logging.WARNING, logger="toolgen_jax.training.checkpoint"):
    state, extras = ck.restore(_abstract(), ck.latest_step())  # what train.fit does on resume
  assert int(state["step"]) == 4 and extras == {"step": 4} and ck.restored_step == 4
  np.testing.assert_array_equal(state["params"]["w"], np.arange(12.0).reshape(3, 4) * 4)
  assert [s for s, _ in ck.skipped] == [6] and ck.skipped[0][1]
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1 and lines[0].startswith("skipping checkpoint step 6 under ") and ck.skipped[0][1] in lines[0]
  ck.close()


def test_every_step_unreadable_is_one_clear_error(tmp_path):
  latest = _saved(tmp_path, steps=(2, 4))
  _truncate_data(latest / "4")
  _delete_metadata(latest / "2")
  ck = ckpt_lib.Checkpointer(tmp_path, keep=3)
  with pytest.raises(ckpt_lib.UnreadableCheckpointError, match=r"no readable checkpoint under .*step 4: .*step 2: "):
    ck.restore(_abstract())
  # an older step asked for by number is read as asked, or fails naming it (no silent substitute)
  with pytest.raises(ckpt_lib.UnreadableCheckpointError, match="checkpoint step 2 under .* cannot be read"):
    ck.restore(_abstract(), step=2)
  ck.close()


def test_leftover_tmp_folder_is_not_a_step(tmp_path):
  latest = _saved(tmp_path, steps=(2,))
  shutil.copytree(latest / "2", latest / "8.orbax-checkpoint-tmp-1234")
  ck = ckpt_lib.Checkpointer(tmp_path, keep=3)
  assert ck.latest_step() == 2
  state, _ = ck.restore(_abstract())
  assert int(state["step"]) == 2 and ck.skipped == []
  ck.close()
