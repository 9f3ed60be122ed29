"""End to end on the tiny config: every stage runs, the report has its structure, the trained model beats a random
ranker, and a second run on the same workdir resumes instead of redoing work."""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from toolgen_jax import artifact, pipeline
from toolgen_jax.evaluation import harness

pytestmark = pytest.mark.slow  # every test runs the pipeline end to end

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.unlock()
  c.train.steps = 100
  c.train.batch_size = 8
  c.eval.train_queries = 24
  c.eval.perplexity_tokens = 128
  c.train.progress_bar = False
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


class RandomRetriever:
  def __init__(self, n, seed=0):
    self.n, self.rng = n, np.random.default_rng(seed)

  def rank(self, queries, k, candidates):
    out = []
    for c in candidates:
      pool = np.arange(self.n) if c is None else np.asarray(c)
      out.append(self.rng.permutation(pool)[:k].tolist())
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("tiny")
  report = pipeline.run(tiny_config(), str(wd))
  return wd, report


def test_report_structure(run):
  wd, report = run
  for name in ("report.json", "report.md", "config.json", "status.json"):
    assert (wd / name).exists(), name
  on_disk = json.loads((wd / "report.json").read_text())
  (entry,) = on_disk["files"].values()
  methods = entry["methods"]
  assert set(methods) == {"rqvae", "bm25", "embedding"}
  n = {split: methods["bm25"]["multi-domain"][split]["all"]["n"] for split in ("test", "train", "memorisation")}
  assert n["train"] == 24 and n["memorisation"] == 12 and n["test"] > 0  # eval.train_queries, memorization_tools
  for res in methods.values():
    for split, count in n.items():
      cell = res["multi-domain"][split]["all"]
      assert cell["n"] == count  # every method is scored on the same queries
      # One query's NDCG@1 is 0 or 1 (its first tool is relevant or not): the mean times n counts hits.
      assert cell["ndcg@1"] * count == pytest.approx(round(cell["ndcg@1"] * count), abs=1e-6), (split, cell)
    assert res["in-domain"]["test"]["all"]["n"] > 0
  # A tool's own (truncated) document as the query: BM25 ranks that tool first for 11 of the 12 probed tools. BM25
  # reads only documents and queries (no training), so this figure moves only if the corpus or the documents do.
  assert methods["bm25"]["multi-domain"]["memorisation"]["all"]["ndcg@1"] == pytest.approx(11 / 12)
  assert {"base", "tuned"} <= set(on_disk["perplexity"])
  assert list((wd / "plots").glob("*.png"))
  status = json.loads((wd / "status.json").read_text())
  assert all(status[s]["done"] for s in ("corpus", "embeddings", "codebook", "train", "report"))
  assert status["codebook"]["rate_after"] == 0.0


def test_trained_model_beats_random_ranker(run):
  wd, report = run
  (entry,) = report["files"].values()
  ours = entry["methods"]["rqvae"]["multi-domain"]
  ds = pipeline.load_corpus(tiny_config(), artifact.Workdir(wd))
  seen = [q for q in ds.queries if q.split == "train"]
  rand = harness.evaluate(RandomRetriever(len(ds.corpus)), seen, settings=("multi-domain",))
  # Training queries (their tools were seen): the model must have learnt query -> codes. The test split is not
  # asserted: BFCL test queries ask for tools no training query used, and a 2-layer random-init model trained for
  # 200 steps does not generalise to them (the real-model numbers are in BENCHMARKS.md).
  assert ours["train"]["all"]["ndcg@5"] > rand["multi-domain"]["train"]["all"]["ndcg@5"] + 0.2
  # The memorisation probe: 12 tools queried by their own training documents, scored like any query.
  assert ours["memorisation"]["all"]["n"] == 12


def test_second_run_resumes(run):
  wd, _ = run
  before = json.loads((wd / "status.json").read_text())
  c = tiny_config()
  c.eval.baselines = ()
  c.eval.perplexity = False
  pipeline.run(c, str(wd))
  after = json.loads((wd / "status.json").read_text())
  for step in ("corpus", "embeddings", "codebook"):
    assert after[step]["time"] == before[step]["time"], step  # not redone


def test_toolscaler_post_guided_refinement_runs_in_the_pipeline(tmp_path):
  """refine_rounds=1: the trained model re-embeds the tools, codes are re-quantised (same tokens), the last stage is
  retrained on them, the final codebook is what evaluation, the artifact and add_tools use; a re-run reuses it."""
  c = tiny_config(**{"codebook.method": "residual_kmeans", "codebook.levels": 2, "codebook.size": 8,
                     "codebook.pca_dim": 8, "train.refine_rounds": 1, "train.steps": 20, "eval.max_queries": 12,
                     "eval.train_queries": 0, "eval.perplexity": False, "eval.baselines": ()})
  report = pipeline.run(c, str(tmp_path))
  assert report["files"]["bfcl"]["methods"]["residual_kmeans"]
  hist = json.loads((tmp_path / "codebook" / "refinement.json").read_text())
  assert [h["round"] for h in hist] == [0]
  assert (tmp_path / "checkpoints" / "retrieval_refine0").exists()
  from toolgen_jax.codebook import codebook as cb_lib
  initial, final = cb_lib.load(tmp_path / "codebook_initial"), cb_lib.load(tmp_path / "codebook")
  assert final.encoder["kind"] == "llm_mean" and initial.encoder["kind"] != "llm_mean"
  from toolgen_jax.code_vocab import token_strings
  assert set(token_strings(initial)) <= set(token_strings(final))  # same code tokens (a suffix may add some)
  assert hist[0]["changed_tools"] == sum(initial.code_of(i) != final.code_of(i) for i in range(initial.num_tools))
  np.testing.assert_array_equal(final.codes, cb_lib.load(tmp_path / "codebook_refine0").codes)
  trained = artifact.load_trained(tmp_path)
  np.testing.assert_array_equal(trained.codebook.codes, final.codes)
  # Restored as device arrays: host (NumPy) weights would be copied to the device on every jitted call.
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(trained.model.params))
  # New tools are coded through the trained model's own embedding (the quantiser's input space).
  from toolgen_jax.data.records import Tool
  new = [Tool(id=-1, tool_name="brand_new", api_name=f"fn{i}", category="misc", description=f"does thing {i}")
         for i in range(2)]
  rep = trained.add_tools(new)
  assert trained.codebook.num_tools == final.num_tools + 2, rep
  ranked = trained.retriever(progress=False).rank([q for q in trained.dataset.queries][:2], 3, [None, None])
  assert all(len(r) >= 1 for r in ranked)
  # A second run resumes: the refined codebook is reused, not re-derived from the final params.
  pipeline.run(c, str(tmp_path))
  np.testing.assert_array_equal(cb_lib.load(tmp_path / "codebook").codes, final.codes)


def test_toolscaler_gist_embeddings_feed_residual_kmeans(tmp_path):
  """encoder.kind='gist': gist tokens + LoRA trained on field reconstruction give [N, V, D] embeddings, residual
  k-means codes V positions x L levels, the similarity baseline still reads MiniLM, and add_tools codes unseen tools
  through the stored gist encoder (a near-duplicate document shares its original's first code)."""
  c = tiny_config(**{"encoder.kind": "gist", "encoder.gist_tokens": 2, "encoder.gist_steps": 30,
                     "encoder.max_len": 64, "codebook.method": "residual_kmeans", "codebook.levels": 2,
                     "codebook.size": 8, "codebook.pca_dim": 8, "train.steps": 10, "eval.max_queries": 8,
                     "eval.train_queries": 0, "eval.perplexity": False, "eval.baselines": ("embedding",)})
  report = pipeline.run(c, str(tmp_path))
  emb = np.load(tmp_path / "embeddings" / "gist" / "embeddings.npy")
  assert emb.shape[:2] == (48, 2) and np.isfinite(emb).all()
  losses = json.loads((tmp_path / "embeddings" / "gist" / "losses.json").read_text())
  assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])  # reconstruction is learned
  assert set(report["files"]["bfcl"]["methods"]) == {"residual_kmeans", "embedding"}
  trained = artifact.load_trained(tmp_path)
  assert trained.codebook.encoder["kind"] == "gist" and trained.codebook.codes.shape[1] >= 4  # 2 positions x 2
  import dataclasses
  orig = trained.dataset.corpus[3]
  dup = dataclasses.replace(orig, api_name=orig.api_name + "_v2")
  before = trained.codebook.num_tools
  trained.add_tools([dup])
  assert trained.codebook.num_tools == before + 1
  assert trained.codebook.codes[before, 0] == trained.codebook.codes[3, 0]


def test_agent_tuning_trains_a_finish_code_that_retrieval_never_returns(shared_data, tmp_path):
  """stages memorization + trajectory on the ToolBench example: the codebook gets a Finish row (saved and loaded with
  the artifact), the trajectory stage trains on it, I3 is held out, retrieval's trie has no Finish and the agent's
  trie has it one past the corpus's ids."""
  from toolgen_jax.agent import eval as agent_eval
  from toolgen_jax.agent import loader
  from toolgen_jax.codebook import codebook as cb_lib
  c = tiny_config(**{"data.source": "toolbench", "data.path": str(shared_data / "ToolBench/data_example"),
                     "data.max_tools": -1, "data.max_queries": -1, "data.trajectory_examples": "steps",
                     "data.trajectory_holdout_groups": ("I3",), "train.stages": ("memorization", "trajectory"),
                     "train.steps": 6, "train.batch_size": 4, "train.seq_len": 256, "train.packing": "pad"})
  wd = artifact.Workdir(tmp_path)
  artifact.write_config(c, wd.root)
  ds = pipeline.load_corpus(c, wd)
  emb = pipeline.load_embeddings(c, wd, ds)
  cb = pipeline.load_codebook(c, wd, ds, emb)
  n = len(ds.corpus)
  assert cb.finish_id == n == 64 and cb.tool_names[n] == "Finish"
  assert cb.code_of(n) not in {cb.code_of(i) for i in range(n)}
  model = pipeline.build_model(c, wd, ds, cb)
  params, cb, model = pipeline.train(c, wd, ds, cb, model)
  rows = [json.loads(l) for l in (tmp_path / "metrics_trajectory.jsonl").read_text().splitlines()]
  assert len(rows) == 6 and all(np.isfinite(r["loss"]) for r in rows)
  trained_ids = agent_eval.trained_trajectory_ids(tmp_path)
  assert trained_ids and not any(t.startswith("I3/") for t in trained_ids)
  loaded = artifact.load_trained(tmp_path)
  assert loaded.codebook.finish_id == n and cb_lib.load(tmp_path / "codebook").finish_id == n
  tok = loaded.model.tokenizer
  retrieval = artifact.build_trie(loaded.config, loaded.codebook, tok)
  assert sorted(retrieval.live_tool_ids.tolist()) == list(range(n))
  agent = artifact.build_trie(loaded.config, loaded.codebook, tok, finish=True)
  assert artifact.agent_finish_id(loaded.codebook) == n and n in agent.live_tool_ids.tolist()
  np.testing.assert_array_equal(agent.tokens_of([n]), artifact.build_trie(
      loaded.config, loaded.codebook, tok, finish=True).tokens_of([n]))
  ranked = loaded.retriever(beam_size=8, progress=False).rank(ds.queries, 8, [None] * len(ds.queries))
  assert all(0 <= t < n for r in ranked for t in r) and all(len(r) == 8 for r in ranked)
  backend = loader.load_model_backend(tmp_path)
  assert backend.policy.finish_id == n
  traj = [t for t in ds.trajectories if t.id.startswith("I2/")][:1]
  out = agent_eval.evaluate(backend.policy, traj, backend.corpus, setting="gt_tools", arguments=False)
  assert out["overall"]["steps"] == sum(m.role == "assistant" for m in traj[0].messages)
  assert out["overall"]["refused_rate"] == 0.0  # the trie cannot leave the offered tools + Finish


def test_post_guided_refinement_keeps_the_finish_entry_of_an_agent_codebook(shared_data, tmp_path):
  """refine_rounds=1 after agent tuning: the re-quantised codebook codes the Finish document again (same row, a code
  no tool has), so the retrained trajectory stage and the saved artifact still have their Finish action."""
  from toolgen_jax.codebook import codebook as cb_lib
  c = tiny_config(**{"data.source": "toolbench", "data.path": str(shared_data / "ToolBench/data_example"),
                     "data.max_tools": -1, "data.max_queries": -1, "data.trajectory_examples": "steps",
                     "train.stages": ("memorization", "trajectory"), "train.refine_rounds": 1,
                     "codebook.method": "residual_kmeans", "codebook.levels": 2, "codebook.size": 8,
                     "codebook.pca_dim": 8, "train.steps": 3, "train.batch_size": 4, "train.seq_len": 256,
                     "train.packing": "pad"})
  wd = artifact.Workdir(tmp_path)
  artifact.write_config(c, wd.root)
  ds = pipeline.load_corpus(c, wd)
  cb = pipeline.load_codebook(c, wd, ds, pipeline.load_embeddings(c, wd, ds))
  n = len(ds.corpus)
  params, cb, model = pipeline.train(c, wd, ds, cb, pipeline.build_model(c, wd, ds, cb))
  assert (tmp_path / "checkpoints" / "trajectory_refine0").exists()
  final = cb_lib.load(tmp_path / "codebook")
  assert final.encoder["kind"] == "llm_mean" and final.finish_id == n == cb.finish_id
  assert final.code_of(n) not in {final.code_of(i) for i in range(n)}
