"""`python -m toolgen_jax.evaluate`: format detection, pooled corpus, report structure, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from toolgen_jax import config as config_lib
from toolgen_jax import evaluate
from toolgen_jax.data.records import Query

TOPICS = {"Weather": ["forecast", "rain radar", "temperature"], "Finance": ["stock quote", "currency exchange"],
          "Food": ["recipe search", "nutrition facts"]}


def _api(cat, tool, api):
  return {"category_name": cat, "tool_name": tool, "api_name": api, "api_description": f"{api} for {tool} {cat}",
          "required_parameters": [], "optional_parameters": [], "method": "GET"}


def _write_stb(path, queries):
  recs = []
  for i, (text, rel, pool) in enumerate(queries):
    recs.append({"query": text, "query_id": i + 1, "api_list": [_api(*k) for k in pool],
                 "relevant APIs": [[k[1], k[2]] for k in rel]})
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(recs))


@pytest.fixture
def files(tmp_path):
  w = [("Weather", "SkyTool", a) for a in TOPICS["Weather"]]
  f = [("Finance", "MoneyTool", a) for a in TOPICS["Finance"]]
  food = [("Food", "ChefTool", a) for a in TOPICS["Food"]]
  _write_stb(tmp_path / "a" / "G1_instruction.json", [
      ("what is the temperature forecast tomorrow", [w[0], w[2]], w),
      ("give me a stock quote for ACME", [f[0]], f + w[:1])])
  _write_stb(tmp_path / "b" / "G2_instruction.json", [("find a recipe search and nutrition facts", food, food + f)])
  # Tools only (an unseen-tool file): queries are ignored, its tools join the corpus.
  music = [("Music", "TuneTool", "lyrics"), ("Music", "TuneTool", "charts")]
  _write_stb(tmp_path / "c" / "G3_instruction.json", [("x", music[:1], music)])
  return tmp_path


def test_detect_source(files, tmp_path):
  assert evaluate.detect_source(files / "a") == "stabletoolbench"
  assert evaluate.detect_source(files / "a" / "G1_instruction.json") == "stabletoolbench"
  (tmp_path / "beir").mkdir()
  (tmp_path / "beir" / "corpus.jsonl").write_text("")
  assert evaluate.detect_source(tmp_path / "beir") == "beir"
  (tmp_path / "odd.txt").write_text("hello")
  with pytest.raises(ValueError, match="SOURCE:PATH"):
    evaluate.detect_source(tmp_path / "odd.txt")


def test_select_split():
  from toolgen_jax.evaluation import harness
  qs = [Query("1", "a", (0,), split="train"), Query("2", "b", (0,), split="test")]
  assert [q.id for q in harness.select_split(qs, "auto", "f")] == ["2"]
  assert len(harness.select_split(qs, "", "f")) == 2
  with pytest.raises(ValueError, match="splits present"):
    harness.select_split(qs, "dev", "f")


def test_run_bm25_report(files, tmp_path):
  rep = evaluate.run(str(tmp_path / "wd"), [str(files / "a"), f"stabletoolbench:{files / 'b'}"],
                     add_tools_from=[str(files / "c")], methods=["bm25"])
  assert rep["meta"]["num_tools"] == 3 + 2 + 2 + 2  # weather, finance, food, music: pooled, deduplicated
  assert set(rep["files"]) == {"stabletoolbench:a", "stabletoolbench:b"}
  a = rep["files"]["stabletoolbench:a"]["methods"]["bm25"]
  assert set(a) >= {"multi-domain", "in-domain", "skipped"}
  cell = a["multi-domain"]["test"]["I1"]
  assert {"ndcg@1", "ndcg@3", "ndcg@5", "recall@1", "recall@3", "recall@5", "n"} <= set(cell) and cell["n"] == 2
  assert cell["ndcg@1"] == 1.0  # the words match: BM25 gets both queries' first tool right
  b = rep["files"]["stabletoolbench:b"]["methods"]["bm25"]["in-domain"]["all"]["I2"]
  assert b["recall@5"] == 1.0
  saved = json.loads((tmp_path / "wd" / "evaluate" / "report.json").read_text())
  assert saved["files"]["stabletoolbench:a"]["methods"]["bm25"]["multi-domain"]["test"]["I1"]["ndcg@1"] == 1.0
  assert (tmp_path / "wd" / "evaluate" / "report.md").read_text().count("| bm25 |") >= 4
  assert list((tmp_path / "wd" / "evaluate" / "plots").glob("*.png"))


def test_run_embedding_with_injected_encoder(files, tmp_path, monkeypatch):
  from toolgen_jax.codebook import embed

  def fake(texts, *a, **k):  # bag of letters: deterministic, no weights needed
    return np.array([[t.lower().count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], np.float32) + 1e-3

  monkeypatch.setattr(embed, "load_encoder", lambda *a, **k: None)
  monkeypatch.setattr(embed, "cached_encode", lambda texts, workdir, enc, **k: fake(texts))
  monkeypatch.setattr(embed, "encode_texts", fake)
  rep = evaluate.run(str(tmp_path / "wd"), [str(files / "a")], methods=["bm25", "embedding"],
                     settings=("multi-domain",))
  res = rep["files"]["stabletoolbench:a"]["methods"]
  assert set(res) == {"bm25", "embedding"} and "in-domain" not in res["embedding"]
  assert 0.0 <= res["embedding"]["multi-domain"]["all"]["all"]["ndcg@5"] <= 1.0


def test_cli_errors(files, tmp_path, capsys):
  args = [f"--workdir={tmp_path / 'wd'}", f"--queries={files / 'a'}"]
  assert evaluate.main(args + ["--methods=model"]) == 2
  assert "has no trained model" in capsys.readouterr().err
  assert evaluate.main(args[:1] + [f"--queries={tmp_path / 'missing.json'}", "--methods=bm25"]) == 2
  err = capsys.readouterr().err
  assert "missing.json" in err and "no such file" in err
  assert evaluate.main(args + ["--methods=bm25,bogus"]) == 2
  assert "unknown methods ['bogus']" in capsys.readouterr().err
  # No --methods on a folder without a trained model (a mistyped workdir): an error, not a baseline-only report.
  assert evaluate.main(args) == 2
  err = capsys.readouterr().err
  assert "holds no trained model" in err and "--methods=bm25,embedding" in err
  assert not (tmp_path / "wd" / "evaluate" / "report.json").exists()


@pytest.mark.slow
def test_cli_subprocess(files, tmp_path):
  cmd = [sys.executable, "-m", "toolgen_jax.evaluate", f"--workdir={tmp_path / 'wd'}", f"--queries={files / 'a'}"]
  out = subprocess.run(cmd + ["--methods=bm25", "--setting=in-domain"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "— in-domain" in out.stdout and "— multi-domain" not in out.stdout


def test_per_file_corpus(files, tmp_path):
  kw = dict(add_tools_from=[str(files / "c")], methods=["bm25"], settings=("multi-domain",))
  pooled = evaluate.run(str(tmp_path / "p"), [str(files / "a"), str(files / "b")], **kw)
  per = evaluate.run(str(tmp_path / "q"), [str(files / "a"), str(files / "b")], corpus="per-file", **kw)
  assert pooled["files"]["stabletoolbench:a"]["n_tools"] == 9
  # file a: weather + finance (5 tools) + the 2 added music tools
  assert per["files"]["stabletoolbench:a"]["n_tools"] == 7 and per["files"]["stabletoolbench:b"]["n_tools"] == 6
  assert per["meta"]["corpus"] == "per-file"


def test_subset_bm25_is_its_own_index():
  from toolgen_jax.evaluation import bm25
  from toolgen_jax.evaluation.bm25 import BM25Retriever

  cfg = config_lib.base_config()
  docs = ["apple banana", "apple cherry", "banana date", "apple", "cherry date kiwi", "apple apple banana kiwi"]
  ids = [0, 2, 4, 5]
  q = [Query("q", "apple kiwi date", (5,))]
  sub = bm25.from_config(docs, cfg.eval, ids)
  alone = BM25Retriever([docs[i] for i in ids])
  assert sub.rank(q, 4, [tuple(ids)]) == [[ids[i] for i in alone.rank(q, 4, [None])[0]]]
  assert sub.rank(q, 2, [(4, 5, 1)]) == [[ids[i] for i in alone.rank(q, 2, [(2, 3)])[0]]]  # 1 is outside: dropped
  # IDF is a corpus statistic: the pooled index scores the same candidates differently.
  pooled = BM25Retriever(docs).scores(["apple kiwi date"])[0, ids]
  assert not np.allclose(pooled, alone.scores(["apple kiwi date"])[0])


def test_perplexity_flag(files, tmp_path, monkeypatch):
  from toolgen_jax.evaluation import perplexity

  calls = []

  def fake(checkpoint, eval_config):
    calls.append((checkpoint, eval_config.perplexity_window))
    return {"perplexity": 9.5, "n_scored": 10, "text": {"source": "pydoc", "python": "3"}}

  monkeypatch.setattr(perplexity, "checkpoint_perplexity", fake)
  rep = evaluate.run(str(tmp_path / "wd"), [str(files / "a")], methods=["bm25"], perplexity=True)
  assert calls == [("smollm2", 256)]
  assert rep["perplexity"]["base (smollm2)"]["perplexity"] == 9.5
  assert "| base (smollm2) | 9.500 | 10 |" in (tmp_path / "wd" / "evaluate" / "report.md").read_text()


def test_load_config_overlays_the_workdir(tmp_path):
  from toolgen_jax import artifact
  assert artifact.load_config(tmp_path, missing_ok=True).eval.depth == 100  # no config.json: the defaults
  (tmp_path / "config.json").write_text(json.dumps({"eval": {"ks": [1, 3], "bm25_method": "robertson", "zz": 1,
                                                             "depth": 50.0},
                                                    "model": {"checkpoint": "/ckpt"}, "train": {"stages": ["retrieval"]}}))
  c = artifact.load_config(tmp_path)
  assert c.eval.ks == (1, 3) and c.eval.bm25_method == "robertson" and c.model.checkpoint == "/ckpt"
  assert c.eval.depth == 50 and isinstance(c.eval.depth, int)  # JSON numbers coerced to the field's type
  assert c.train.stages == ("retrieval",) and c.eval.recall_ks == config_lib.base_config().eval.recall_ks
  assert "zz" not in c.eval  # fields today's config lacks are ignored


@pytest.mark.slow  # trains the dense baseline: 9 s of the fast tier
def test_dense_baseline_trains_on_the_workdir_training_split_only(tmp_path, monkeypatch):
  """`--methods=dense`: the pairs come from the workdir dataset's training split minus every scored text (a
  training record that repeats a test query's text is dropped); a second run loads the cached weights."""
  import jax
  import jax.numpy as jnp
  from toolgen_jax.codebook import bert, embed
  from toolgen_jax.data.dataset import finalize
  from toolgen_jax.data.records import Tool, ToolCorpus
  from toolgen_jax.data.report import LoadReport
  from toolgen_jax.evaluation import dense_retriever

  class Words:  # word -> id by a fixed hash; 1 = [CLS]
    def encode_batch(self, texts):
      return [type("E", (), {"ids": [1] + [2 + sum(map(ord, w)) * 7919 % 126 for w in t.lower().split()]})()
              for t in texts]

  cfg = bert.BertConfig.tiny()
  params = bert.BertEncoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
  monkeypatch.setattr(embed, "load_encoder", lambda *a, **k: embed.Encoder(cfg, params, Words(), "tiny", ""))
  seen = []
  real = dense_retriever.fine_tune
  monkeypatch.setattr(dense_retriever, "fine_tune", lambda enc, texts, *a, **k: (seen.append(list(texts)),
                                                                                  real(enc, texts, *a, **k))[1])
  corpus = ToolCorpus([Tool(id=i, tool_name=f"T{i}", api_name=n, description=n)
                       for i, n in enumerate(["weather forecast", "stock quote", "recipe search", "flight booking"])])
  qs = [Query("tr1", "rain tomorrow", (0,), split="train"), Query("tr2", "price of shares", (1,), split="train"),
        Query("tr3", "Cook pasta", (2,), split="train"),     # repeats a test query's text: must not be trained on
        Query("tr4", "plane ticket", (3,), split="train"),
        Query("te1", "cook  pasta", (2,), split="test"), Query("te2", "will it snow", (0,), split="test")]
  ds = finalize(corpus, qs, [], LoadReport(source="x"), "x", log=False)
  wd = tmp_path / "wd"
  ds.save(wd / "dataset")
  ds.save(tmp_path / "queries")
  (wd / "config.json").write_text(json.dumps({"eval": {"dense_steps": 2, "dense_batch_size": 2,
                                                       "dense_max_len": 16}}))
  for _ in range(2):
    rep = evaluate.run(str(wd), [f"saved:{tmp_path / 'queries'}"], methods=["bm25", "dense"],
                       settings=("multi-domain",))
  assert len(seen) == 1, "the second run retrains instead of loading WORKDIR/dense"
  assert sorted(set(seen[0])) == ["plane ticket", "price of shares", "rain tomorrow"]
  res = rep["files"]["saved:queries"]["methods"]
  assert set(res) == {"bm25", "dense"} and res["dense"]["multi-domain"]["all"]["all"]["n"] == 2
  assert len(list((wd / dense_retriever.CACHE_DIR).iterdir())) == 1
