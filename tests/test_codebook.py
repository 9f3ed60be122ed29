"""The Codebook artifact on a real corpus: unique codes, add_tools (Toolscaler Alg. 1), remove_tools, save/load."""

import json

import numpy as np
import pytest

from toolgen_jax import config as config_lib
from toolgen_jax.codebook import codebook as cb_lib
from toolgen_jax.codebook import collisions, embed, rqvae
from toolgen_jax.data.records import DataError


def _prefix_free(codes):
  seqs = [tuple(int(c) for c in r if c >= 0) for r in codes]
  s = set(seqs)
  return len(s) == len(seqs) and all(seq[:k] not in s for seq in seqs for k in range(1, len(seq)))


@pytest.fixture(scope="module")
def toollens(shared_data):
  from toolgen_jax.data.documents import tool_documents
  from toolgen_jax.data.readers import load_source
  ds = load_source("beir", shared_data / "COLT/datasets/ToolLens", log=False)
  docs = tool_documents(ds.corpus)
  enc = embed.load_encoder("minilm")
  x = enc.encode(docs, max_len=64)
  info = {"encoder_id": enc.encoder_id, "path": enc.path, "max_len": 64, "kind": "minilm"}
  return ds, docs, x, info


@pytest.fixture(scope="module")
def rq_codebook(toollens):
  ds, docs, x, info = toollens
  edges, w = ds.cooccurrence.edges()
  # lambda = 0 here: the collaborative pull crowds some first codes (ToolWeaver's argmax-of-plan assignment is
  # not hard-balanced), and a full prefix bucket sends a colliding newcomer to another prefix by design.
  cfg = rqvae.RQVAEConfig.tiny(codebook_size=32, hidden=(128, 64), code_dim=32, steps=200)
  return cb_lib.from_rqvae(cfg, x, edges, w, tool_names=[t.name for t in ds.corpus], encoder=info)


def test_codes_unique_for_every_real_tool(rq_codebook, toollens):
  cb = rq_codebook
  assert cb.num_tools == 464 and _prefix_free(cb.codes)
  assert collisions.collision_rate(cb.codes) == 0
  rep = cb.collision_report
  assert rep["rate_before"] > 0 and rep["rate_after"] == 0  # 464 tools in 32 x 32 codes collide first
  assert rep["rate_after_sinkhorn"] < rep["rate_before"]


def test_add_near_duplicate_shares_first_code(rq_codebook, toollens):
  ds, docs, x, info = toollens
  cb = cb_lib.load(rq_codebook.save(pytest.importorskip("tempfile").mkdtemp()))
  picks = list(range(0, 464, 23))
  near = [docs[i].replace(" | params:", ". | params:", 1) + " " for i in picks]
  rep = cb.add_tools(docs=near, names=[f"copy of {i}" for i in picks])
  assert cb.num_tools == 464 + len(picks)
  shared = np.mean([rep.codes[j, 0] == cb.codes[i, 0] for j, i in enumerate(picks)])
  # Measured 0.76-0.95 depending on training (a 2% edit moves ~8% of the latent radius; chance is 1/32).
  assert shared >= 0.7, shared
  # A near-duplicate lands on its original's code, so it collides and is moved: still all unique.
  assert rep.collided.mean() >= 0.5
  assert _prefix_free(cb.codes)


def test_remove_tools_and_save_load_roundtrip(rq_codebook, toollens, tmp_path):
  ds, docs, x, info = toollens
  cb = cb_lib.load(rq_codebook.save(tmp_path / "a"))
  np.testing.assert_array_equal(cb.codes, rq_codebook.codes)
  assert cb.level_sizes == rq_codebook.level_sizes and cb.token_kind == rq_codebook.token_kind
  rev = cb.revision
  cb.remove_tools([0, 5])
  assert cb.revision == rev + 1 and not cb.active[[0, 5]].any() and cb.active.sum() == 462
  assert 0 not in cb.members(0, cb.codes[0, 0]) and 0 in cb.members(0, cb.codes[0, 0], active_only=False)
  # The retired tool's code stays reserved: re-adding its exact embedding must not reuse it.
  rep = cb.add_tools(x[:1])
  assert tuple(rep.codes[0][rep.codes[0] >= 0]) != cb.code_of(0) and rep.collided[0]
  cb.save(tmp_path / "b")
  back = cb_lib.load(tmp_path / "b")
  np.testing.assert_array_equal(back.active, cb.active)
  assert back.revision == cb.revision and back.tool_of(cb.code_of(7)) == 7
  # Frozen quantiser survives the round trip: the same new tool gets the same code.
  again = back.add_tools(x[1:2])
  again2 = cb.add_tools(x[1:2])
  np.testing.assert_array_equal(again.codes, again2.codes)


def test_build_from_config_residual_kmeans_and_baselines(toollens):
  ds, docs, x, info = toollens
  c = config_lib.base_config().codebook
  c.method, c.size, c.pca_dim = "residual_kmeans", 16, 8
  cb = cb_lib.build(c, x, [t.name for t in ds.corpus], encoder=info)
  assert cb.method == "residual_kmeans" and _prefix_free(cb.codes)
  rep = cb.add_tools(x[10:12] + 1e-4)
  assert (rep.codes[:, 0] == cb.codes[10:12, 0]).all() and rep.collided.all()
  for method in ("atomic", "numerical", "hierarchical"):
    c.method = method
    b = cb_lib.build(c, x, [t.name for t in ds.corpus])
    assert _prefix_free(b.codes), method
  atomic = cb_lib.from_baseline("atomic", 3)
  atomic.add_tools(np.zeros((2, 4)))
  assert atomic.level_sizes == [5] and atomic.code_of(4) == (4,)


def test_bad_manifest(tmp_path):
  (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
  with pytest.raises(DataError, match="format"):
    cb_lib.load(tmp_path)


@pytest.mark.slow
def test_build_rqvae_from_config_with_graph():
  from toolgen_jax.data import cooccurrence
  rng = np.random.default_rng(0)
  x = rng.normal(size=(120, 16)).astype(np.float32)
  c = config_lib.base_config().codebook
  c.rqvae_hidden, c.code_dim, c.size, c.steps, c.batch_size = (32,), 8, 8, 20, 64
  graph = cooccurrence.from_groups([[0, 1, 2], [3, 4], [5, 6, 7]], 120)
  cb = cb_lib.build(c, x, [f"t{i}" for i in range(120)], cooccurrence=graph)
  assert cb.method == "rqvae" and cb.num_tools == 120 and _prefix_free(cb.codes)
  assert cb.quantizer_config["collab_lambda"] == 1.0 and cb.level_sizes[:2] == [8, 8]


def test_add_tools_joins_a_suffixed_group_when_the_prefix_is_full():
  from toolgen_jax.codebook import residual_kmeans as rkm
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 6)).astype(np.float32)
  cb = cb_lib.from_residual_kmeans(rkm.ResidualKMeansConfig(pca_dim=4, num_levels=2, codebook_size=2), x)
  assert cb.num_levels == 3 and _prefix_free(cb.codes)  # 40 tools in 2 x 2 codes: suffixes
  before = list(cb.level_sizes)
  rep = cb.add_tools(x[:3])
  assert rep.collided.all() and _prefix_free(cb.codes) and (rep.codes[:, 2] >= 0).all()
  assert cb.level_sizes[2] >= before[2] + 1 and cb.level_sizes[2] == cb.codes[:, 2].max() + 1
  from toolgen_jax.code_vocab import token_strings
  assert f"<T2_{cb.codes[:, 2].max()}>" in token_strings(cb)


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
def test_finish_entry_is_a_unique_code_that_survives_save_load_and_is_no_tool(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 16)).astype(np.float32)
  c = config_lib.base_config().codebook
  c.rqvae_hidden, c.code_dim, c.size, c.steps, c.batch_size = (32,), 8, 8, 20, 64
  cb = cb_lib.build(c, x, [f"t{i}" for i in range(40)])
  assert cb.finish_id is None and cb.tool_rows().tolist() == list(range(40))
  before = cb.codes.copy()
  rep = cb.add_finish(embeddings=x[3:4] + 1e-4)  # lands on tool 3's code: moved to a free one
  assert cb.finish_id == 40 and cb.tool_names[40] == cb_lib.FINISH_NAME and rep.collided[0]
  assert (cb.codes[:40] == before).all() and _prefix_free(cb.codes)
  assert 40 not in cb.tool_rows() and len(cb.tool_rows()) == 40
  with pytest.raises(ValueError, match="already"):
    cb.add_finish(embeddings=x[:1])
  cb.remove_tools([5])
  back = cb_lib.load(cb.save(tmp_path / "cb"))
  assert back.finish_id == 40 and (back.codes == cb.codes).all()
  assert back.tool_rows().tolist() == [i for i in range(40) if i != 5]
  new = back.add_tools(x[7:8] + 1e-4, names=["late"])  # tools added later come after Finish
  assert new.ids.tolist() == [41] and back.finish_id == 40
  assert back.corpus_ids([0, 39, 41]).tolist() == [0, 39, 40]  # the late tool is corpus tool 40: Finish is no tool
  with pytest.raises(ValueError, match="Finish"):
    back.corpus_ids([40])
  # A version-2 artifact (before Finish entries) still loads, as a codebook without Finish.
  m = json.loads((tmp_path / "cb" / "manifest.json").read_text())
  m["format_version"] = 2
  del m["finish_id"]
  (tmp_path / "cb" / "manifest.json").write_text(json.dumps(m))
  old = cb_lib.load(tmp_path / "cb")
  assert old.finish_id is None and len(old.tool_rows()) == 40  # 41 rows, tool 5 retired
  sem = cb_lib.Codebook("semantic", np.zeros((2, 2), np.int32), [])
  with pytest.raises(ValueError, match="semantic"):
    sem.add_finish(embeddings=np.zeros((1, 4)))


@pytest.mark.slow  # 7 s; the fast tier keeps test_collisions' policy test
def test_report_policy_keeps_shared_codes_reports_them_and_finish_never_shares(tmp_path):
  """Toolscaler's policy: codes as the quantiser gives them, collisions counted; a new tool on a taken code shares
  it (reported, not moved); the Finish action still gets a code of its own; the policy survives save/load."""
  from toolgen_jax.codebook import residual_kmeans as rkm
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 6)).astype(np.float32)
  cfg = rkm.ResidualKMeansConfig(pca_dim=4, num_levels=2, codebook_size=2)
  cb = cb_lib.from_residual_kmeans(cfg, x, collisions_policy="report")
  raw = cb_lib.from_residual_kmeans(cfg, x, collisions_policy="report").codes
  groups = collisions.collision_groups(cb.codes)
  assert cb.num_levels == 2 and cb.shares_codes and cb.collision_policy == "report"
  rep = cb.collision_report
  assert rep["policy"] == "report" and rep["shared_groups"] == len(groups) > 0
  assert rep["shared_tools"] == sum(len(g) for g in groups)  # 40 tools on at most 4 code tuples
  distinct = len(np.unique(cb.codes, axis=0))
  assert rep["rate_after"] == pytest.approx(collisions.collision_rate(cb.codes)) == pytest.approx(
      (40 - distinct) / 40) and distinct <= 4
  np.testing.assert_array_equal(cb.codes, raw)
  add = cb.add_tools(x[:2] + 1e-4)
  assert add.collided.all() and not add.moved.any()
  np.testing.assert_array_equal(add.codes, cb.codes[:2])  # shares tools 0 and 1's codes
  c = config_lib.base_config().codebook
  c.rqvae_hidden, c.code_dim, c.size, c.steps, c.batch_size, c.collisions = (32,), 8, 8, 20, 64, "report"
  cb2 = cb_lib.build(c, np.tile(x[:20], (2, 1)), [f"t{i}" for i in range(40)])  # duplicated tools: shared codes
  assert cb2.shares_codes and cb2.collision_report["shared_groups"] > 0
  r = cb2.add_finish(embeddings=x[3:4])
  assert r.moved[0] == r.collided[0]
  assert sum((cb2.codes == cb2.codes[cb2.finish_id]).all(1)) == 1  # Finish shares with nothing
  back = cb_lib.load(cb2.save(tmp_path / "cb"))
  assert back.collision_policy == "report" and back.collision_report["shared_groups"] == \
      cb2.collision_report["shared_groups"]


def test_unique_policy_is_the_default_and_old_codebooks_read_as_their_resolve_flag():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(30, 6)).astype(np.float32)
  c = config_lib.base_config().codebook
  assert c.collisions == "unique"
  c.method, c.levels, c.size, c.pca_dim = "residual_kmeans", 2, 2, 4
  cb = cb_lib.build(c, x, [f"t{i}" for i in range(30)])
  assert not cb.shares_codes and collisions.collision_rate(cb.codes) == 0
  old = cb_lib.Codebook("rqvae", np.zeros((2, 2), np.int32), [2, 2], config={"resolve": False})
  assert old.collision_policy == "report"
  assert cb_lib.Codebook("rqvae", np.zeros((1, 2), np.int32), [2, 2], config={"resolve": True}).collision_policy \
      == "unique"
