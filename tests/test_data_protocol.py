import collections

from toolgen_jax.data import load_source
from toolgen_jax.data import protocol


def test_real_protocol_splits_and_unseen_counts(shared_data):
  ds = load_source("real_protocol", str(shared_data))
  counts = collections.Counter((q.group, q.split) for q in ds.queries)
  assert counts[("ToolLens", "train")] == 16893 and counts[("ToolLens", "test")] == 1877
  assert counts[("Gorilla-torchhub", "train")] == 837 and counts[("Gorilla-torchhub", "test")] == 186
  for g, n in (("I1", 163), ("I2", 106), ("I3", 61)):
    got = {s: counts[(g, s)] for s in ("train", "dev", "test")}
    assert sum(got.values()) == n
    assert abs(got["train"] - 0.6 * n) <= 1 and abs(got["test"] - 0.2 * n) <= 2
  # every relevant id points into the merged corpus
  assert all(0 <= t < len(ds.corpus) for q in ds.queries for t in q.relevant)
  unseen = protocol.unseen_test_tools(ds)
  assert unseen["ToolLens"] == 0 and unseen["Gorilla-torchhub"] == 0  # as the data README states
  assert 0 < unseen["I1"] <= unseen["I1_total"]
  # deterministic
  again = load_source("real_protocol", str(shared_data))
  assert [(q.id, q.split) for q in again.queries] == [(q.id, q.split) for q in ds.queries]
