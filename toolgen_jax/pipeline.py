"""corpus -> tool embeddings -> codebook -> vocabulary extension -> stages -> evaluation -> report.

`run(config, workdir)` is what `main.py` calls and what a notebook calls; the steps below are its parts, imported
only by `main` and the tests (the trained result is read back through `toolgen_jax.artifact`). Every step leaves
its artifact in the workdir (layout: `artifact.py`) and a line in `status.json`; re-running with the same workdir
resumes: a finished step is loaded, not redone, unless it is named in `config.pipeline.redo` (training resumes from
its latest orbax checkpoint by itself).
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
import time

import ml_collections
import numpy as np
from absl import logging

from toolgen_jax import prompts
from toolgen_jax.artifact import Workdir, build_trie, save_trained, write_config
from toolgen_jax.code_vocab import CodeVocabulary, token_members, token_strings
from toolgen_jax.models.vocab import Model


def _say(msg: str) -> None:
  print(msg, flush=True)
  logging.info(msg)


# ---- corpus and tool embeddings -----------------------------------------------------------------------------------

def load_corpus(config: ml_collections.ConfigDict, wd: Workdir):
  from toolgen_jax import data
  path = wd / "dataset"
  if wd.done("corpus", config.pipeline.redo) and (path / "manifest.json").exists():
    return data.load_dataset(path)
  ds = data.from_config(config.data, seed=int(config.seed))
  digest = ds.save(path)
  splits: dict[str, int] = {}
  for q in ds.queries:
    splits[q.split] = splits.get(q.split, 0) + 1
  wd.mark("corpus", tools=len(ds.corpus), queries=len(ds.queries), splits=splits, hash=digest,
          edges=int(ds.cooccurrence.num_edges))
  wd.invalidate_after("corpus")
  _say(f"[corpus] {config.data.source}: {len(ds.corpus)} tools, {len(ds.queries)} queries {splits}, "
       f"{ds.cooccurrence.num_edges} co-occurrence edges -> {path}")
  return data.load_dataset(path)


def tool_documents(config, ds) -> list[str]:
  from toolgen_jax.data import documents_from_config
  return documents_from_config(ds.corpus, config.data)


def load_embeddings(config, wd: Workdir, ds) -> np.ndarray:
  """The quantiser's input: [N, D] sentence embeddings, or [N, V, D] gist embeddings (encoder.kind='gist')."""
  if config.encoder.kind == "gist":
    return gist_embeddings(config, wd, ds)
  return sentence_embeddings(config, wd, ds)


def sentence_embeddings(config, wd: Workdir, ds, kind: str | None = None) -> np.ndarray:
  """[N, D] sentence-encoder embeddings of the tool documents, cached in WORKDIR/embeddings (`kind`: another
  encoder, for the similarity baseline when the quantiser reads gist embeddings)."""
  from toolgen_jax.codebook import embed
  docs = tool_documents(config, ds)
  enc = embed.load_encoder(kind or config.encoder.path or config.encoder.kind)
  emb = embed.cached_encode(docs, wd / "embeddings" / kind if kind else wd / "embeddings", enc,
                            batch_size=int(config.encoder.batch_size), max_len=int(config.encoder.max_len))
  if kind is None:
    if not wd.done("embeddings"):
      wd.mark("embeddings", shape=list(emb.shape), encoder=enc.encoder_id)
    _say(f"[embeddings] {emb.shape[0]} tool documents x {emb.shape[1]} ({enc.encoder_id})")
  return emb


def gist_embeddings(config, wd: Workdir, ds) -> np.ndarray:
  """Toolscaler's semantic compression: trains V gist tokens + LoRA on the backbone to reconstruct every document
  field from the gist alone, then embeds each tool as its V gist hidden states [N, V, D]. Stored in
  WORKDIR/embeddings/gist (embeddings.npy, the encoder's trainable state for coding new tools, losses)."""
  from toolgen_jax.codebook import gist
  from toolgen_jax.models import tokenizer as tok_lib
  from toolgen_jax.models import weights
  path = wd / "embeddings" / "gist"
  if wd.done("embeddings", config.pipeline.redo) and (path / "embeddings.npy").exists():
    emb = np.load(path / "embeddings.npy")
  else:
    t0 = time.perf_counter()
    tok = tok_lib.tokenizer_from_config(config.model)
    mcfg, params = weights.load_backbone(config.model, tok, int(config.seed))
    gcfg = gist.config_from(config.encoder, int(config.seed))
    tokenize = lambda s: tok_lib.encode_text(tok, s)
    fields = [gist.tool_fields(t) for t in ds.corpus]
    _say(f"[embeddings] gist: training {gcfg.num_gist} gist tokens + LoRA r={gcfg.lora_rank} on "
         f"{len(fields)} tools x {len(fields[0])} fields, {gcfg.steps} steps")
    p, gm, ids, losses = gist.train(params, mcfg, fields, tokenize, gcfg, log=_say)
    emb = gist.embed_tools(p, gm, fields, tokenize, ids, gcfg)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "state.npz", **gist.trainable_state(p, ids))
    (path / "losses.json").write_text(json.dumps(losses))
    np.save(path / "embeddings.npy", emb)
    wd.mark("embeddings", shape=list(emb.shape), encoder="gist", seconds=round(time.perf_counter() - t0, 1))
    wd.invalidate_after("embeddings")
  _say(f"[embeddings] {emb.shape[0]} tools x {emb.shape[1]} gist positions x {emb.shape[2]} (gist)")
  return emb


# ---- codebook ----------------------------------------------------------------------------------------------------

def finish_document(config) -> str:
  return prompts.finish_document(config.data.doc_template, config.data.doc_max_chars)


def finish_embedding(config, wd: Workdir, emb: np.ndarray) -> np.ndarray:
  """[1, ...] the Finish document embedded like the corpus's documents (same encoder, so the frozen quantiser
  codes it like a tool)."""
  if emb.ndim != 2:  # gist: the workdir's trained gist encoder
    from toolgen_jax.artifact import tool_embedder
    return tool_embedder(config, wd.root, "gist", None)([prompts.FINISH_TOOL], [finish_document(config)])
  from toolgen_jax.codebook import embed
  enc = embed.load_encoder(config.encoder.path or config.encoder.kind)
  return enc.encode([finish_document(config)], batch_size=1, max_len=int(config.encoder.max_len))


def load_codebook(config, wd: Workdir, ds, emb: np.ndarray):
  from toolgen_jax.codebook import codebook as cb_lib
  path = wd / "codebook"
  if wd.done("codebook", config.pipeline.redo) and path.exists():
    initial = wd / "codebook_initial"  # after post-guided refinement: the stages started from this one
    return cb_lib.load(initial if initial.exists() else path)
  for stale in [wd / "codebook_initial", *wd.root.glob("codebook_refine*")]:  # refinements of an older codebook
    shutil.rmtree(stale, ignore_errors=True)
  t0 = time.perf_counter()
  kw = {}
  if config.codebook.method == "semantic":  # codes are the LLM's own tokens of the tool name, then end-of-turn
    from toolgen_jax.models import tokenizer as tok_lib
    tok = tok_lib.tokenizer_from_config(config.model)
    kw = dict(tokenize=tok.encode, end_id=prompts.end_of_turn_id(tok))
  cb = cb_lib.build(config.codebook, emb, [t.name for t in ds.corpus], cooccurrence=ds.cooccurrence,
                    encoder={"kind": config.encoder.kind, "path": config.encoder.path}, progress=True,
                    cooccurrence_normalization=config.data.cooccurrence_normalization, **kw)
  if "trajectory" in config.train.stages:  # agent tuning: Finish gets its own code sequence (row cb.finish_id)
    rep = cb.add_finish(embeddings=finish_embedding(config, wd, emb))
    _say(f"[codebook] Finish -> row {cb.finish_id}, codes {cb.code_of(cb.finish_id)}"
         f"{' (moved off a taken code)' if rep.collided[0] else ''}")
  cb.save(path)
  codebook_plots(cb, ds, path)
  rep = {k: v for k, v in cb.collision_report.items() if np.isscalar(v)}
  n_tokens = len(token_strings(cb))
  wd.mark("codebook", seconds=round(time.perf_counter() - t0, 1), method=cb.method, levels=cb.num_levels,
          level_sizes=cb.level_sizes, new_tokens=n_tokens, **rep)
  wd.invalidate_after("codebook")
  _say(f"[codebook] {cb.method}: {cb.num_tools} tools -> {cb.num_levels} levels {cb.level_sizes}, "
       f"{n_tokens} new tokens, collisions {rep} ({time.perf_counter() - t0:.0f}s) -> {path}")
  return cb


def codebook_plots(cb, ds, path: pathlib.Path) -> dict:
  """stats.json + code_usage.png next to the codebook (utilisation, perplexity, prefix sharing of co-used tools)."""
  from toolgen_jax.codebook import stats
  codes = cb.codes[cb.active]
  out = {}
  if cb.level_sizes:
    out = stats.code_stats(codes, cb.level_sizes)
    stats.plot_code_usage(codes, cb.level_sizes, path / "code_usage.png", title=f"{cb.method} code usage")
  edges, w = ds.cooccurrence.edges()
  if len(edges):
    out["cooccurring_prefix_sharing"] = stats.edge_prefix_sharing(cb.codes, edges, w)
  (path / "stats.json").write_text(json.dumps(out, indent=2, default=float))
  return out


# ---- the model: backbone + code tokens -------------------------------------------------------------------------

def build_model(config, wd: Workdir, ds, cb) -> Model:
  """Pretrained backbone + the codebook's code tokens (`code_vocab.token_strings`), initialised as `vocab.init`
  says (deterministic and cheap, so it is rebuilt rather than stored; the trained weights live in the checkpoints)."""
  from toolgen_jax.models import tokenizer as tok_lib
  from toolgen_jax.models import vocab as vocab_lib
  from toolgen_jax.models import weights
  t0 = time.perf_counter()
  tok = tok_lib.tokenizer_from_config(config.model)
  mcfg, params = weights.load_backbone(config.model, tok, int(config.seed))
  n_old = len(tok)
  new_tokens = token_strings(cb)
  kw = {}
  init = config.vocab.init
  if init == "codebook":  # a code token starts at the mean of its member tools' document vectors
    docs = tool_documents(config, ds)
    if cb.finish_id is not None:  # the Finish row (after the corpus's tools) has a document too
      docs = docs + [finish_document(config)]
    kw["tool_vectors"] = vocab_lib.tool_model_vectors(params, mcfg, tok, docs)
    kw["token_members"] = token_members(cb)
  elif init == "subword_mean" and cb.token_kind == "atomic":  # ToolGen: a tool token starts at its name's sub-words
    kw["token_texts"] = [ds.corpus[i].name for i in range(cb.num_tools)]
  elif init in vocab_lib.ROW_INITS:
    kw["rows"] = code_token_rows(config, wd, ds, cb, new_tokens,
                                 vocab_lib.tool_model_vectors(params, mcfg, tok, tool_documents(config, ds)))
  params, mcfg, tok = vocab_lib.extend_vocab(params, mcfg, tok, new_tokens, init, rng=int(config.seed),
                                             pad_to_multiple=int(config.vocab.pad_to_multiple), **kw)
  _say(f"[model] {config.model.checkpoint}: {mcfg.num_layers} layers, hidden {mcfg.hidden_size}, vocabulary "
       f"{n_old} + {len(new_tokens)} tool tokens (init={init}) in {time.perf_counter() - t0:.1f}s")
  return Model(config=mcfg, params=params, tokenizer=tok, new_token_start=n_old)


def code_token_rows(config, wd: Workdir, ds, cb, new_tokens, tool_vectors: np.ndarray) -> np.ndarray:
  """[len(new_tokens), D] rows of the `rqvae_codebook` / `reframe` inits: each code's vector in model space
  (`codebook.code_vectors`) under its token (`code_vocab.token_string`); NaN (random) for a token without one.
  tool_vectors [N, D]: the corpus tools' mean document-token embeddings."""
  from toolgen_jax.code_vocab import token_string
  from toolgen_jax.codebook import code_vectors
  emb = load_embeddings(config, wd, ds)
  if config.vocab.init == "rqvae_codebook":
    levels = code_vectors.rqvae_code_vectors(cb, emb, tool_vectors)
  else:  # gist outputs are the backbone's hidden states: no map into the model's space
    levels = code_vectors.reframe_code_vectors(cb, emb, None if emb.ndim == 3 else tool_vectors)
  vec = {token_string(cb.token_kind, l, c): v for l, lv in enumerate(levels) for c, v in enumerate(lv)}
  nan = np.full(tool_vectors.shape[1], np.nan, np.float32)
  return np.stack([vec.get(t, nan) for t in new_tokens])


# ---- training ------------------------------------------------------------------------------------------------------

def train(config, wd: Workdir, ds, cb, model: Model):
  """`training.stages.run_stages` on this workdir, with the post-guided rounds' hooks and the dev evaluator from
  the config; saves the trained model (WORKDIR/model). Returns (final params, the codebook they were trained on,
  the model (refinement may add code tokens))."""
  from toolgen_jax.evaluation import evaluators
  from toolgen_jax.training import stages

  trie_fn = lambda codebook, tok: build_trie(config, codebook, tok)
  params, cb, model, _ = stages.run_stages(
      config, model=model, dataset=ds, codebook=cb, codes=CodeVocabulary, workdir=wd.root,
      evaluator=evaluators.from_config(config, ds, trie_fn),
      refine=functools.partial(refine, config, wd, ds), log=_say)
  save_trained(wd.root, model, params)
  wd.mark("train", stages=list(config.train.stages), refine_rounds=int(config.train.refine_rounds))
  return params, cb, model


def refine(config, wd: Workdir, ds, params, cb, model: Model, *, rounds: int, train):
  """Toolscaler's post-guided rounds (`training.refinement`) with this workdir's hooks: re-embed every tool with
  the trained model, re-quantise with the same method and shape, retrain the last stage. Each round's codebook is
  kept as WORKDIR/codebook_refine<r> (a resumed run reuses it, never re-derives it from later params); the final
  one replaces WORKDIR/codebook, the first is kept as codebook_initial (what a resumed run's stages start from)."""
  from toolgen_jax.codebook import codebook as cb_lib
  from toolgen_jax.codebook import embed
  from toolgen_jax.training import refinement
  docs = tool_documents(config, ds)
  finish = cb.finish_id is not None  # an agent codebook's Finish row is re-embedded and re-coded as Finish too
  docs_all = docs + [finish_document(config)] * finish
  path_of = lambda r: wd / f"codebook_refine{r}"
  # A gist codebook codes V positions x L levels: re-embed with the workdir's gist encoder mounted on the tuned LLM
  # (V positions again, so the code length and every T_l token stay); else the tuned LLM's mean hidden state [N, D].
  kind = "gist_tuned" if cb.encoder.get("kind") in ("gist", "gist_tuned") else "llm_mean"

  def embed_tools(p, m: Model, r: int) -> np.ndarray:
    if (path_of(r) / "manifest.json").exists():  # this round's codebook exists: quantize() reloads it
      return np.load(path_of(r) / "emb.npy") if (path_of(r) / "emb.npy").exists() else np.zeros((0,), np.float32)
    _say(f"[refine {r}] re-embedding {len(docs_all)} tools with the trained model ({kind})")
    if kind == "gist_tuned":
      from toolgen_jax.codebook import gist
      return gist.embed_with_backbone(wd / "embeddings" / "gist", p, m.config, m.tokenizer,
                                      list(ds.corpus) + [prompts.FINISH_TOOL] * finish,
                                      gist.config_from(config.encoder, int(config.seed)))
    return embed.llm_tool_embeddings(p, m.config, m.tokenizer, docs_all, max_len=int(config.encoder.max_len))

  def quantize(emb, old, r: int):
    if (path_of(r) / "manifest.json").exists():
      return cb_lib.load(path_of(r))
    new = cb_lib.build(config.codebook, emb[:len(docs)], [t.name for t in ds.corpus], cooccurrence=ds.cooccurrence,
                       encoder={"kind": kind, "max_len": int(config.encoder.max_len)}, progress=True,
                       cooccurrence_normalization=config.data.cooccurrence_normalization)
    if finish:
      new.add_finish(embeddings=emb[len(docs):])
    new.save(path_of(r))
    np.save(path_of(r) / "emb.npy", emb)  # what the round's reframed rows are computed from (a resumed round too)
    return new

  add_tokens = lambda p, m, new: refinement.add_code_tokens(
      p, m, new, seed=int(config.seed), pad_to_multiple=int(config.vocab.pad_to_multiple), log=_say)
  if config.train.refine_form == "paper":  # Toolscaler section 4.2, App. D iv (training/refinement.py)
    hooks = dict(compress=lambda _, p, m, r: embed_tools(p, m, r),
                 quantize=lambda emb, old, r, _: quantize(emb, old, r))
    if kind == "gist_tuned" and config.train.refine_token_epochs:  # step (0): the Token update on the frozen model
      hooks = refinement.gist_token_hooks(config, wd / "embeddings" / "gist", ds, list(ds.corpus) + [
          prompts.FINISH_TOOL] * finish, quantize=quantize, stored=embed_tools, done=lambda r: (
              path_of(r) / "manifest.json").exists(), log=_say)
    params, cb_new, model, history = refinement.paper_refinement(
        params, cb, model, iterations=rounds, train=train, add_tokens=add_tokens, **hooks)
  else:
    params, cb_new, model, history = refinement.post_guided_refinement(
        params, cb, model, rounds=rounds, embed_tools=embed_tools, quantize=quantize, train=train,
        add_tokens=add_tokens)
  for h in history:
    _say(f"[refine {h.round}] {h.changed_tools} of {cb.num_tools} tools changed code")
  if not (wd / "codebook_initial").exists():
    shutil.copytree(wd / "codebook", wd / "codebook_initial")
  cb_new.save(wd / "codebook")
  codebook_plots(cb_new, ds, wd / "codebook")
  (wd / "codebook" / "refinement.json").write_text(json.dumps(
      [{"round": h.round, "changed_tools": h.changed_tools} for h in history], indent=2))
  return params, cb_new, model


# ---- evaluation and report ---------------------------------------------------------------------------------------

def evaluate(config, wd: Workdir, ds, cb, model: Model, params, emb: np.ndarray) -> dict:
  """The trained model (trie-constrained beam search over every tool) next to the baselines, on the test split and
  the probes (`evaluation.probes`)."""
  from toolgen_jax.decoding.generative import GenerativeRetriever
  from toolgen_jax.evaluation import baseline_retrievers, harness, probes
  test = probes.evaluation_queries(config, ds)
  retrievers = {config.codebook.method: GenerativeRetriever(
      params, model.config, model.tokenizer, build_trie(config, cb, model.tokenizer),
      beam_size=int(config.decode.beam_size), batch_size=int(config.eval.batch_size),
      alpha=float(config.decode.length_normalization), name=config.codebook.method,
      system_prompt=config.train.system_prompt, normalize=config.decode.normalize)}
  retrievers.update(baseline_retrievers.from_config(  # dense: trains on ds's training split only, cached in wd
      config.eval.baselines, tool_documents(config, ds), config, wd.root, queries=ds.queries, doc_embeddings=emb,
      log=_say))
  methods = {}
  pools = harness.pools_by_group(ds.queries)  # in-domain: every tool of the query's group (I1/I2/I3), as the papers
  for name, r in retrievers.items():
    _say(f"[evaluate] {name} on {len(test)} test queries, settings {tuple(config.eval.settings)}")
    baseline = name in baseline_retrievers.BASELINES  # they rank every tool cheaply: ask for ToolGen's depth
    methods[name] = harness.evaluate(r, test, ks=tuple(config.eval.ks), settings=tuple(config.eval.settings),
                                     batch_size=int(config.eval.batch_size) * 8, progress=name,
                                     pool_exclude=probes.PROBE_SPLITS, group_pools=pools,
                                     depth=int(config.eval.depth) if baseline else None)
  return {"queries": len(test), "methods": methods, "test_queries": test}


def code_accuracy(config, cb, model: Model, params, queries) -> dict:
  """Per-level teacher-forced code accuracy of the trained model on each scored split (`evaluation.code_accuracy`)."""
  from toolgen_jax.evaluation.code_accuracy import teacher_forced_accuracy
  vocab = CodeVocabulary(cb, model.tokenizer)
  out = {}
  for split in sorted({q.split for q in queries}):
    out[split] = teacher_forced_accuracy(params, model.config, vocab, [q for q in queries if q.split == split],
                                         system_prompt=config.train.system_prompt)
    if out[split]:
      _say(f"[evaluate] teacher-forced code accuracy, {split}: per level " + " / ".join(
          f"{a:.3f} (children {b:.3f}, chance {c:.3f})"
          for a, b, c in zip(out[split]["level"], out[split]["children"], out[split]["chance_children"])))
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole method on `config`, resuming from whatever `workdir` holds. Returns the report dict."""
  from toolgen_jax import config as config_lib
  from toolgen_jax.evaluation import perplexity, probes
  from toolgen_jax.evaluation import report as report_lib
  from toolgen_jax.training import sharding as shd

  config_lib.validate(config)  # the same up-front checks as the command line (a notebook calls run directly)
  wd = Workdir(pathlib.Path(workdir))
  _say(f"[config] resolved config -> {write_config(config, wd.root)}")
  if config.pipeline.dry_run:
    return {}
  shd.maybe_initialize_distributed(config.mesh.distributed)  # before anything touches devices (multi-host)
  t0 = time.perf_counter()
  ds = load_corpus(config, wd)
  emb = load_embeddings(config, wd, ds)
  cb = load_codebook(config, wd, ds, emb)
  model = build_model(config, wd, ds, cb)
  params, cb, model = train(config, wd, ds, cb, model)
  if emb.ndim != 2:  # gist embeddings feed the quantiser; the similarity baseline reads sentence embeddings
    emb = sentence_embeddings(config, wd, ds, kind="minilm")
  result = evaluate(config, wd, ds, cb, model, params, emb)
  report = {"files": {f"{config.data.source}": {
      "path": str(config.data.path or config.data.source), "n_queries": result["queries"],
      "methods": result["methods"]}},
      "meta": {"seconds": round(time.perf_counter() - t0, 1), "codebook": wd.status().get("codebook", {})}}
  stats_path = wd / "codebook" / "stats.json"
  if stats_path.exists():
    report["codebook"] = {config.codebook.method: json.loads(stats_path.read_text())}
  if config.eval.perplexity:
    report["perplexity"] = perplexity.language_preservation(
        model.config, model.tokenizer, model.params, params, n_tokens=int(config.eval.get("perplexity_tokens", 2048)),
        words_only_from=model.new_token_start)
  report["code_accuracy"] = code_accuracy(config, cb, model, params, result["test_queries"])
  report["summary"] = probes.summary(report, str(config.data.source), config.codebook.method)
  paths = report_lib.write_report(report, wd.root)
  wd.mark("report", **{k: str(v) for k, v in paths.items()})
  _say((wd / "report.md").read_text())
  _say(f"[report] {paths['json']}  {paths['markdown']}  plots: {', '.join(str(p) for p in paths['plots'])}")
  _say(f"[done] {time.perf_counter() - t0:.0f}s")
  _say(json.dumps({"summary": report["summary"]}))
  return report
