"""Loss masks, shifting, deterministic and resumable order, host shards, bucketing, truncation counts."""

import numpy as np
import pytest

from _training_helpers import ByteChatTokenizer
from toolgen_jax.training import input_pipeline as ip

TOK = ByteChatTokenizer(["<T0_1>", "<T1_2>"])


def _examples(n=23):
  return [ip.Example(id=str(i), segments=((f"prompt {i} " + "x" * (i % 7), False), (f"<T0_1>ans{i}", True)))
          for i in range(n)]


def test_targets_are_shifted_and_weighted_only_on_target_tokens():
  ex = _examples(4)
  p = ip.InputPipeline(ex, TOK, batch_size=4, seq_len=32, seed=0)
  b = p.batch(0)
  for r, i in enumerate(p.global_indices(0)):
    ids = TOK.encode(ex[i].text)
    n_prompt = len(TOK.encode(ex[i].segments[0][0]))
    L = len(ids) - 1
    np.testing.assert_array_equal(b["tokens"][r, :L], ids[:-1])
    np.testing.assert_array_equal(b["targets"][r, :L], ids[1:])
    assert b["attention_mask"][r].sum() == L and b["attention_mask"][r, L:].sum() == 0
    # Weighted targets decode exactly to the target segment.
    tgt = b["targets"][r][b["weights"][r] > 0]
    assert TOK.decode(tgt.tolist()) == ex[i].target_text
    assert b["weights"][r, :n_prompt - 1].sum() == 0


def test_order_is_a_function_of_seed_and_step_and_covers_each_epoch():
  ex = _examples(24)
  a = ip.InputPipeline(ex, TOK, batch_size=8, seq_len=32, seed=3)
  b = ip.InputPipeline(ex, TOK, batch_size=8, seq_len=32, seed=3)
  c = ip.InputPipeline(ex, TOK, batch_size=8, seq_len=32, seed=4)
  # Resuming = asking a fresh pipeline for step s: same rows, no state to restore.
  for s in (0, 5, 2):
    np.testing.assert_array_equal(a.global_indices(s), b.global_indices(s))
    np.testing.assert_array_equal(a.batch(s)["tokens"], b.batch(s)["tokens"])
  assert not np.array_equal(a.global_indices(0), c.global_indices(0))
  epoch0 = np.concatenate([a.global_indices(s) for s in range(3)])
  epoch1 = np.concatenate([a.global_indices(s) for s in range(3, 6)])
  assert sorted(epoch0) == list(range(24)) and sorted(epoch1) == list(range(24))
  assert not np.array_equal(epoch0, epoch1)


def test_hosts_load_disjoint_shards_that_make_the_global_batch():
  ex = _examples(30)
  full = ip.InputPipeline(ex, TOK, batch_size=8, seq_len=32, seed=1, process_index=0, process_count=1).batch(2)
  parts = [ip.InputPipeline(ex, TOK, batch_size=8, seq_len=32, seed=1, process_index=h, process_count=4)
           for h in range(4)]
  got = [p.batch(2) for p in parts]
  for k in full:
    np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), full[k])
  # Each host tokenised only its own rows.
  assert all(len(p._encoded) == 2 for p in parts)
  with pytest.raises(ValueError, match="not divisible"):
    ip.InputPipeline(ex, TOK, batch_size=6, seq_len=32, process_index=0, process_count=4)


def test_bucket_mode_pads_to_smallest_bucket_and_keeps_order_deterministic():
  ex = _examples(64)
  p = ip.InputPipeline(ex, TOK, batch_size=4, seq_len=64, seed=0, mode="bucket")
  assert p.buckets == (16, 32, 64)
  lengths = set()
  for s in range(16):
    b = p.batch(s)
    T = b["tokens"].shape[1]
    longest = int(b["attention_mask"].sum(1).max())
    assert T == min(x for x in p.buckets if x >= longest)
    lengths.add(T)
  assert sorted(np.concatenate([p.global_indices(s) for s in range(16)])) == list(range(64))
  np.testing.assert_array_equal(p.global_indices(7), ip.InputPipeline(ex, TOK, batch_size=4, seq_len=64, seed=0,
                                                                      mode="bucket").global_indices(7))


def test_truncation_keeps_the_target_and_is_counted():
  ex = [ip.Example(id="long", segments=(("p" * 100, False), ("<T0_1><T1_2>", True)))]
  p = ip.InputPipeline(ex, TOK, batch_size=1, seq_len=16, seed=0)
  b = p.batch(0)
  assert b["attention_mask"].sum() == 16
  assert TOK.decode(b["targets"][0][b["weights"][0] > 0].tolist()) == "<T0_1><T1_2>"
  assert p.stats["truncated"] == 1 and "1 rows truncated" in p.summary()


def test_drop_wrapped_counts_each_example_once():
  ex = _examples(10)
  p = ip.InputPipeline(ex, TOK, batch_size=4, seq_len=32, seed=0)
  rows = sum(int((p.batch(s, drop_wrapped=True)["attention_mask"].sum(1) > 0).sum()) for s in range(3))
  assert rows == 10


def test_empty_and_bad_mode_raise():
  with pytest.raises(ValueError, match="no examples"):
    ip.InputPipeline([], TOK, batch_size=1, seq_len=8)
  with pytest.raises(ValueError, match="packing must be one of"):
    ip.InputPipeline(_examples(2), TOK, batch_size=1, seq_len=8, mode="pack")
