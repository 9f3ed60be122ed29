"""corpus -> tool embeddings -> codebook -> vocabulary extension -> stages -> evaluation -> report.

`run(config, workdir)` is what `main.py` calls and what a notebook calls. Every step leaves its artifact in the
workdir and a line in `status.json`; re-running with the same workdir resumes: a finished step is loaded, not redone,
unless it is named in `config.pipeline.redo` (training resumes from its latest orbax checkpoint by itself).

  workdir/config.json            the resolved config of the latest run
  workdir/corpus/                ToolDataset (tools, queries with splits, trajectories, co-occurrence, manifest)
  workdir/embeddings/            tool-document embeddings, keyed by corpus + encoder
  workdir/codebook/              the Codebook artifact (tool id <-> codes, quantiser state, stats, plots)
  workdir/checkpoints/<stage>/   orbax checkpoints of each training stage; metrics_<stage>.jsonl; tensorboard/
  workdir/report.json, report.md, plots/   evaluation of the trained model next to the baselines
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

STEPS = ("corpus", "embeddings", "codebook", "model", "train", "evaluate", "report")


# ---- workdir bookkeeping ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Workdir:
  root: pathlib.Path

  def __post_init__(self):
    self.root = pathlib.Path(self.root)
    self.root.mkdir(parents=True, exist_ok=True)

  def __truediv__(self, name: str) -> pathlib.Path:
    return self.root / name

  @property
  def status_path(self) -> pathlib.Path:
    return self.root / "status.json"

  def status(self) -> dict:
    return json.loads(self.status_path.read_text()) if self.status_path.exists() else {}

  def done(self, step: str, redo=()) -> bool:
    return step not in tuple(redo) and bool(self.status().get(step, {}).get("done"))

  def mark(self, step: str, **info) -> None:
    s = self.status()
    s[step] = {"done": True, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
    tmp = self.status_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(s, indent=2, sort_keys=True, default=str))
    tmp.replace(self.status_path)

  def invalidate_after(self, step: str) -> None:
    """A redone step makes every later step stale."""
    s = self.status()
    later = STEPS[STEPS.index(step) + 1:]
    for k in later:
      s.pop(k, None)
    self.status_path.write_text(json.dumps(s, indent=2, sort_keys=True, default=str))


def _say(msg: str) -> None:
  print(msg, flush=True)
  logging.info(msg)


# ---- the steps ------------------------------------------------------------------------------------------------------

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
  from toolgen_jax.codebook import embed
  docs = tool_documents(config, ds)
  if kind is not None:  # the embedding-similarity baseline's encoder when the quantiser reads gist embeddings
    enc = embed.load_encoder(kind)
    return embed.cached_encode(docs, wd / "embeddings" / kind, enc, batch_size=int(config.encoder.batch_size),
                               max_len=int(config.encoder.max_len))
  enc = embed.load_encoder(config.encoder.path or config.encoder.kind)
  emb = embed.cached_encode(docs, wd / "embeddings", enc, batch_size=int(config.encoder.batch_size),
                            max_len=int(config.encoder.max_len))
  if not wd.done("embeddings"):
    wd.mark("embeddings", shape=list(emb.shape), encoder=enc.encoder_id)
  _say(f"[embeddings] {emb.shape[0]} tool documents x {emb.shape[1]} ({enc.encoder_id})")
  return emb


def gist_config(config):
  from toolgen_jax.codebook import gist
  e = config.encoder
  return gist.GistConfig(num_gist=int(e.gist_tokens), lora_rank=int(e.gist_lora_rank), steps=int(e.gist_steps),
                         batch_size=int(e.gist_batch_size), learning_rate=float(e.gist_learning_rate),
                         max_content=int(e.max_len), seed=int(config.seed))


def gist_encoder(config, root: pathlib.Path):
  """The trained gist encoder of a workdir -> (params, config, gist ids, tokenize)."""
  from toolgen_jax.codebook import gist
  from toolgen_jax.training import input_pipeline as ip
  tok = load_tokenizer(config)
  mcfg, params = load_backbone(config, tok)
  state = dict(np.load(root / "embeddings" / "gist" / "state.npz"))
  params, mcfg, ids = gist.restore_state(params, mcfg, state, gist_config(config))
  return params, mcfg, ids, (lambda s: ip.encode_text(tok, s))


def gist_embeddings(config, wd: Workdir, ds) -> np.ndarray:
  """Toolscaler's semantic compression: trains V gist tokens + LoRA on the backbone to reconstruct every document
  field from the gist alone, then embeds each tool as its V gist hidden states [N, V, D]. Stored in
  WORKDIR/embeddings/gist (embeddings.npy, the encoder's trainable state for coding new tools, losses)."""
  from toolgen_jax.codebook import gist
  from toolgen_jax.training import input_pipeline as ip
  path = wd / "embeddings" / "gist"
  if wd.done("embeddings", config.pipeline.redo) and (path / "embeddings.npy").exists():
    emb = np.load(path / "embeddings.npy")
  else:
    t0 = time.perf_counter()
    tok = load_tokenizer(config)
    mcfg, params = load_backbone(config, tok)
    gcfg = gist_config(config)
    tokenize = lambda s: ip.encode_text(tok, s)
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


def load_backbone(config, tok):
  """(LlamaConfig, params) of config.model.checkpoint (a random tiny Llama for checkpoint='random')."""
  from toolgen_jax.models import weights
  if config.model.checkpoint == "random":
    from toolgen_jax.models import llama
    mcfg = llama.LlamaConfig.tiny(vocab_size=len(tok), eos_token_id=tok.eos_id, bos_token_id=tok.bos_id,
                                  **config.model.random.to_dict(), **_model_overrides(config))
    return mcfg, llama.init_params(mcfg, jax.random.PRNGKey(int(config.seed)))
  return weights.load_pretrained(config.model.checkpoint, **_model_overrides(config))


def load_tokenizer(config):
  from toolgen_jax.models import tokenizer as tok_lib
  spec = config.model.tokenizer or config.model.checkpoint
  if spec == "random":
    raise ValueError("config.model.checkpoint='random' needs config.model.tokenizer (e.g. 'smollm2')")
  return tok_lib.load_tokenizer(spec)


def load_codebook(config, wd: Workdir, ds, emb: np.ndarray):
  from toolgen_jax.codebook import codebook as cb_lib
  path = wd / "codebook"
  if wd.done("codebook", config.pipeline.redo) and path.exists():
    initial = wd / "codebook_initial"  # after post-guided refinement: the stages started from this one
    return cb_lib.load(initial if initial.exists() else path)
  import shutil
  for stale in [wd / "codebook_initial", *wd.root.glob("codebook_refine*")]:  # refinements of an older codebook
    shutil.rmtree(stale, ignore_errors=True)
  t0 = time.perf_counter()
  kw = {}
  if config.codebook.method == "semantic":  # codes are the LLM's own tokens of the tool name, then end-of-turn
    tok = load_tokenizer(config)
    kw = dict(tokenize=tok.encode, end_id=end_of_turn_id(tok))
  cb = cb_lib.build(config.codebook, emb, [t.name for t in ds.corpus], cooccurrence=ds.cooccurrence,
                    encoder={"kind": config.encoder.kind, "path": config.encoder.path}, progress=True, **kw)
  if "trajectory" in config.train.stages:  # agent tuning: Finish gets its own code sequence (row cb.finish_id)
    rep = cb.add_finish(embeddings=finish_embedding(config, wd, emb))
    _say(f"[codebook] Finish -> row {cb.finish_id}, codes {cb.code_of(cb.finish_id)}"
         f"{' (moved off a taken code)' if rep.collided[0] else ''}")
  cb.save(path)
  codebook_plots(cb, ds, path)
  rep = {k: v for k, v in cb.collision_report.items() if np.isscalar(v)}
  wd.mark("codebook", seconds=round(time.perf_counter() - t0, 1), method=cb.method, levels=cb.num_levels,
          level_sizes=cb.level_sizes, new_tokens=len(cb.tokens()), **rep)
  wd.invalidate_after("codebook")
  _say(f"[codebook] {cb.method}: {cb.num_tools} tools -> {cb.num_levels} levels {cb.level_sizes}, "
       f"{len(cb.tokens())} new tokens, collisions {rep} ({time.perf_counter() - t0:.0f}s) -> {path}")
  return cb


def finish_document(config) -> str:
  from toolgen_jax.agent import format as fmt
  from toolgen_jax.data.documents import tool_document
  return tool_document(fmt.FINISH_TOOL, config.data.doc_template, config.data.doc_max_chars)


def finish_embedding(config, wd: Workdir, emb: np.ndarray) -> np.ndarray:
  """[1, ...] the Finish document embedded like the corpus's documents (same encoder, so the frozen quantiser
  codes it like a tool)."""
  if emb.ndim != 2:  # gist: the workdir's trained gist encoder
    from toolgen_jax.agent import format as fmt
    from toolgen_jax.codebook import gist
    gp, gm, ids, tokenize = gist_encoder(config, wd.root)
    return gist.embed_tools(gp, gm, [gist.tool_fields(fmt.FINISH_TOOL)], tokenize, ids, gist_config(config))
  from toolgen_jax.codebook import embed
  enc = embed.load_encoder(config.encoder.path or config.encoder.kind)
  return enc.encode([finish_document(config)], batch_size=1, max_len=int(config.encoder.max_len))


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


def end_of_turn_id(tok) -> int:
  """The id the chat template closes an assistant turn with (`<|im_end|>` / `<|eot_id|>`), else EOS."""
  for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
    i = tok.token_to_id(t)
    if i is not None:
      return int(i)
  return int(tok.eos_id)


def code_targets(cb, tok) -> dict[int, list[str]]:
  """tool id -> the assistant text of its code (what stages train and the trie decodes)."""
  if cb.token_kind == "vocab":
    end = end_of_turn_id(tok)
    return {i: [tok.decode([int(c) for c in cb.code_of(i) if int(c) != end])] for i in range(cb.num_tools)}
  return {i: cb.tool_tokens(i) for i in range(cb.num_tools)}


@dataclasses.dataclass
class Model:
  config: Any          # LlamaConfig after vocabulary extension
  params: Any
  tokenizer: Any
  new_token_start: int  # first id of the tool tokens


def build_model(config, wd: Workdir, ds, cb) -> Model:
  """Pretrained backbone + tool tokens (deterministic and cheap, so it is rebuilt rather than stored; the trained
  weights live in the checkpoints)."""
  from toolgen_jax.models import vocab as vocab_lib
  t0 = time.perf_counter()
  tok = load_tokenizer(config)
  mcfg, params = load_backbone(config, tok)
  n_old = len(tok)
  new_tokens = cb.tokens()
  kw: dict[str, Any] = {}
  init = config.vocab.init
  if init == "codebook":
    docs = tool_documents(config, ds)
    if cb.finish_id is not None:  # the Finish row (after the corpus's tools) has a document too
      docs = docs + [finish_document(config)]
    kw["tool_vectors"] = vocab_lib.tool_model_vectors(params, mcfg, tok, docs)
    members = cb.token_members()
    kw["token_members"] = [members.get(t, np.zeros((0,), np.int64)).tolist() for t in new_tokens]
  elif init == "subword_mean":
    if cb.token_kind == "atomic":  # ToolGen: a tool token starts at the mean of its name's sub-words
      kw["token_texts"] = [ds.corpus[i].name for i in range(cb.num_tools)]
  params, mcfg, tok = vocab_lib.extend_vocab(params, mcfg, tok, new_tokens, init, rng=int(config.seed),
                                             pad_to_multiple=int(config.vocab.pad_to_multiple), **kw)
  _say(f"[model] {config.model.checkpoint}: {mcfg.num_layers} layers, hidden {mcfg.hidden_size}, vocabulary "
       f"{n_old} + {len(new_tokens)} tool tokens (init={init}) in {time.perf_counter() - t0:.1f}s")
  return Model(config=mcfg, params=params, tokenizer=tok, new_token_start=n_old)


def _model_overrides(config) -> dict:
  from toolgen_jax.models import weights
  return weights.config_overrides(config.model)


def build_trie(config, cb, tok, *, finish: bool = False):
  """Trie over the active tools' codes, with each (level, code) mapped to its vocabulary id.

  Trie ids are corpus tool ids. The codebook's Finish row is not a tool: retrieval (finish=False) never decodes
  it; the agent (finish=True) gets it as tool id `agent_finish_id(cb)`, one past the corpus's ids (codebook rows
  added after Finish shift down by one, so they stay corpus ids)."""
  from toolgen_jax.decoding import trie as trie_lib
  fin = cb.finish_id
  rows = cb.tool_rows()
  ids = cb.corpus_ids(rows)
  if finish and fin is not None and cb.active[fin]:
    rows, ids = np.append(rows, fin), np.append(ids, agent_finish_id(cb))
  codes = cb.codes[rows]
  if cb.token_kind == "vocab":
    table, end = None, None  # codes are vocabulary ids already, end-of-turn included
  else:
    width = max(cb.level_sizes)
    table = np.zeros((cb.num_levels, width), np.int64)
    for level, size in enumerate(cb.level_sizes):
      for code in range(size):
        tid = tok.token_to_id(cb_token(cb, level, code))
        if tid is None:
          raise KeyError(f"code token {cb_token(cb, level, code)} is not in the tokenizer")
        table[level, code] = tid
    end = end_of_turn_id(tok) if (codes < 0).any() else None
  return trie_lib.Trie.build(codes, ids, code_tokens=table, num_codes=None if table is None else table.shape[1],
                             end_token=end, dense_budget_bytes=int(config.decode.dense_budget_bytes))


def agent_finish_id(cb) -> int | None:
  """The Finish action's id in an agent trie (`build_trie(..., finish=True)`): one past the corpus's tool ids."""
  return None if cb.finish_id is None else cb.num_tools - 1


def training_trajectories(config, ds) -> list:
  """The trajectories the `trajectory` stage trains on: those of training-split queries (a trajectory without a
  query record counts as training) outside `data.trajectory_holdout_groups` (the id's prefix, I1/I2/I3)."""
  held = set(config.data.get("trajectory_holdout_groups", ()))
  split_of = {q.id: q.split for q in ds.queries}
  return [t for t in ds.trajectories if split_of.get(t.query_id, "train") == "train"
          and (t.id.split("/", 1)[0] if "/" in t.id else "all") not in held]


def cb_token(cb, level: int, code: int) -> str:
  from toolgen_jax.codebook import codebook as cb_lib
  return cb_lib.atomic_token(code) if cb.token_kind == "atomic" else cb_lib.code_token(level, code)


def train(config, wd: Workdir, ds, cb, model: Model) -> tuple[Any, Any, Model]:
  """Runs `config.train.stages` in order, then `config.train.refine_rounds` Toolscaler post-guided rounds; each
  stage resumes from its own checkpoints. Returns (final params, the codebook they were trained on, the model
  (refinement may add code tokens))."""
  from toolgen_jax.training import input_pipeline as ip
  from toolgen_jax.training import sharding as shd
  from toolgen_jax.training import stages as stages_lib
  from toolgen_jax.training import train as train_lib

  mesh = shd.make_mesh(config.mesh)
  train_q = [q for q in ds.queries if q.split == "train"]
  train_t = training_trajectories(config, ds)
  if "trajectory" in config.train.stages:
    _say(f"[train] {len(train_t)} of {len(ds.trajectories)} trajectories for agent tuning (held out: query split "
         f"!= train, groups {tuple(config.data.trajectory_holdout_groups)})")

  def fit_stage(stage: str, name: str, params, cb, model: Model):
    examples = stages_lib.stage_examples(stage, corpus=ds.corpus, queries=train_q, trajectories=train_t,
                                         codebook=code_targets(cb, model.tokenizer), tokenizer=model.tokenizer,
                                         train_config=config.train, data_config=config.data,
                                         finish_id=cb.finish_id)
    pipe = ip.InputPipeline(examples, model.tokenizer, batch_size=int(config.train.batch_size),
                            seq_len=int(config.train.seq_len), seed=int(config.seed),
                            pad_id=model.tokenizer.pad_id or 0, mode=config.train.packing)
    steps = _stage_steps(config, "refine" if name != stage else stage, len(examples)) or \
        _stage_steps(config, stage, len(examples))
    _say(f"[train:{name}] {len(examples)} examples, {steps} steps of {config.train.batch_size} "
         f"({steps * int(config.train.batch_size) / max(len(examples), 1):.2f} epochs)")
    res = train_lib.fit(model_config=model.config, params=params, train_config=config.train, mesh=mesh,
                        rules=config.mesh.logical_axis_rules, pipeline=pipe, workdir=wd.root, stage=name,
                        total_steps=steps, seed=int(config.seed), new_token_start=model.new_token_start)
    hist = res.history
    if hist:
      _say(f"[train:{name}] loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f}")
    return res.state.params

  params = model.params
  for stage in config.train.stages:
    params = fit_stage(stage, stage, params, cb, model)
  rounds = int(config.train.refine_rounds)
  if rounds:
    params, cb, model = refine(config, wd, ds, cb, model, params, rounds, fit_stage)
  save_trained(wd, model, params)
  wd.mark("train", stages=list(config.train.stages), refine_rounds=rounds)
  return params, cb, model


def llm_tool_embeddings(config, model: Model, params, docs: list[str], batch_size: int = 16) -> np.ndarray:
  """[N, D] masked-mean final hidden states of the tool documents under `params` (Toolscaler's re-embedding)."""
  from toolgen_jax.training import input_pipeline as ip
  from toolgen_jax.training import stages as stages_lib
  ids = [ip.encode_text(model.tokenizer, d)[:int(config.encoder.max_len)] or [model.tokenizer.pad_id or 0]
         for d in docs]
  T = -(-max(len(x) for x in ids) // 16) * 16  # one padded length: one compilation

  def batches():
    for i in range(0, len(ids), batch_size):
      chunk = ids[i:i + batch_size]
      tok = np.zeros((batch_size, T), np.int32)
      mask = np.zeros((batch_size, T), np.int32)
      for r, x in enumerate(chunk):
        tok[r, :len(x)], mask[r, :len(x)] = x, 1
      yield tok, mask

  out = stages_lib.mean_hidden_embeddings(params, model.config, batches())
  return out[:len(ids)]


def refine(config, wd: Workdir, ds, cb, model: Model, params, rounds: int, fit_stage) -> tuple[Any, Any, Model]:
  """Toolscaler's post-guided refinement: re-embed every tool with the trained model, re-quantise with the same
  method and shape (the code tokens stay the same vocabulary and keep their trained rows; only the tool -> code
  assignment moves; a collision suffix the new codes need is added as new tokens), retrain the last stage on them.
  Each round's codebook is kept as WORKDIR/codebook_refine<r> (a resumed run reuses it, never re-derives it from
  later params); the final one replaces WORKDIR/codebook, the first is kept as codebook_initial (what a resumed
  run's stages start from)."""
  import shutil
  from toolgen_jax.codebook import codebook as cb_lib
  from toolgen_jax.models import vocab as vocab_lib
  from toolgen_jax.training import stages as stages_lib
  docs = tool_documents(config, ds)
  names = [t.name for t in ds.corpus]
  last = config.train.stages[-1]
  state = {"round": 0, "model": model}
  # An agent-tuned codebook's Finish row is re-embedded too and re-coded as Finish again (its row stays after the tools).
  finish = cb.finish_id is not None

  def embed_tools(p):
    if (wd / f"codebook_refine{state['round']}" / "manifest.json").exists():
      return np.zeros((0,), np.float32)  # this round's codebook exists: quantize() reloads it
    _say(f"[refine {state['round']}] re-embedding {len(docs)} tools with the trained model")
    return llm_tool_embeddings(config, state["model"], p, docs + [finish_document(config)] * finish)

  def quantize(emb, old):
    path = wd / f"codebook_refine{state['round']}"
    if (path / "manifest.json").exists():
      new = cb_lib.load(path)
    else:
      new = cb_lib.build(config.codebook, emb[:len(docs)], names, cooccurrence=ds.cooccurrence,
                         encoder={"kind": "llm_mean", "max_len": int(config.encoder.max_len)}, progress=True)
      if finish:
        new.add_finish(embeddings=emb[len(docs):])
      new.save(path)
    return new

  def swap_tokens(p, old, new):
    m = state["model"]
    missing = [t for t in new.tokens() if m.tokenizer.token_to_id(t) is None]
    if not missing:
      return p
    _say(f"[refine {state['round']}] adding {len(missing)} code tokens the new codes need ({missing[0]}...)")
    kw = dict(rng=int(config.seed), pad_to_multiple=int(config.vocab.pad_to_multiple))
    p, mcfg, tok = vocab_lib.extend_vocab(p, m.config, m.tokenizer, missing, "random", **kw)
    base, _, _ = vocab_lib.extend_vocab(m.params, m.config, m.tokenizer, missing, "random", **kw)  # same shapes
    state["model"] = dataclasses.replace(m, params=base, config=mcfg, tokenizer=tok)
    return p

  def train_round(p, new_cb, r):
    out = fit_stage(last, f"{last}_refine{r}", p, new_cb, state["model"])
    state["round"] = r + 1
    return out, {}

  params, cb_new, history = stages_lib.post_guided_refinement(params, cb, rounds=rounds, train=train_round,
                                                              embed_tools=embed_tools, quantize=quantize,
                                                              swap_tokens=swap_tokens)
  for h in history:
    _say(f"[refine {h.round}] {h.changed_tools} of {cb.num_tools} tools changed code")
  if not (wd / "codebook_initial").exists():
    shutil.copytree(wd / "codebook", wd / "codebook_initial")
  cb_new.save(wd / "codebook")
  codebook_plots(cb_new, ds, wd / "codebook")
  (wd / "codebook" / "refinement.json").write_text(json.dumps(
      [{"round": h.round, "changed_tools": h.changed_tools} for h in history], indent=2))
  return params, cb_new, state["model"]


# ---- the trained model as an artifact ----------------------------------------------------------------------------

def save_trained(wd: Workdir, model: Model, params) -> pathlib.Path:
  """workdir/model/: the extended model's LlamaConfig, its tokenizer (with the tool tokens) and the final params, so
  evaluation, chat and serving load the trained model without the pretrained checkpoint."""
  import orbax.checkpoint as ocp
  out = wd / "model"
  out.mkdir(exist_ok=True)
  (out / "llama_config.json").write_text(json.dumps(dataclasses.asdict(model.config), indent=2, default=_jsonable))
  (out / "model.json").write_text(json.dumps({"new_token_start": model.new_token_start}))
  model.tokenizer.save(out / "tokenizer")
  ckpt = ocp.StandardCheckpointer()
  ckpt.save((out / "params").absolute(), jax.device_get(params), force=True)
  ckpt.wait_until_finished()
  return out


def _jsonable(o):
  if isinstance(o, dict):
    return dict(o)
  return str(o)


def load_config(workdir) -> ml_collections.ConfigDict:
  """The resolved config a workdir was run with (config.json), over today's defaults for fields it lacks."""
  from toolgen_jax import config as config_lib
  c = config_lib.base_config()
  saved = json.loads((pathlib.Path(workdir) / "config.json").read_text())

  def fill(node, d):
    for k, v in d.items():
      if k not in node:
        continue
      if isinstance(node[k], ml_collections.ConfigDict):
        fill(node[k], v)
      else:
        node[k] = tuple(v) if isinstance(node[k], tuple) and isinstance(v, list) else v

  fill(c, saved)
  return c


@dataclasses.dataclass
class Trained:
  config: ml_collections.ConfigDict
  dataset: Any
  codebook: Any
  model: Model          # model.params = the trained params
  root: pathlib.Path | None = None  # the workdir (gist codebooks code new tools with its stored gist encoder)

  def retriever(self, **kw):
    from toolgen_jax.generative import GenerativeRetriever
    c = self.config
    kw = dict(beam_size=int(c.decode.beam_size), batch_size=int(c.eval.batch_size),
              alpha=float(c.decode.length_normalization), name=c.codebook.method,
              system_prompt=c.train.get("system_prompt")) | kw
    return GenerativeRetriever(self.model.params, self.model.config, self.model.tokenizer,
                               build_trie(c, self.codebook, self.model.tokenizer), **kw)

  def add_tools(self, tools) -> Any:
    """Codes tools the model has never seen from their documents alone (frozen encoder + quantiser; Toolscaler
    Algorithm 1) and adds any new code tokens to the model. Returns the codebook's AddReport."""
    from toolgen_jax.codebook import embed
    from toolgen_jax.data.documents import tool_document
    from toolgen_jax.models import vocab as vocab_lib
    tools = list(tools)
    docs = [tool_document(t, self.config.data.doc_template, self.config.data.doc_max_chars) for t in tools]
    if self.codebook.encoder.get("kind") == "llm_mean":  # post-guided codes: embed with the trained model itself
      x = llm_tool_embeddings(self.config, self.model, self.model.params, docs)
    elif self.codebook.encoder.get("kind") == "gist":     # the workdir's trained gist encoder
      from toolgen_jax.codebook import gist
      if self.root is None:
        raise ValueError("add_tools on a gist codebook needs the workdir (use pipeline.load_trained)")
      gp, gm, ids, tokenize = gist_encoder(self.config, self.root)
      x = gist.embed_tools(gp, gm, [gist.tool_fields(t) for t in tools], tokenize, ids, gist_config(self.config))
    else:
      enc = embed.load_encoder(self.config.encoder.path or self.config.encoder.kind)
      x = enc.encode(docs, batch_size=int(self.config.encoder.batch_size), max_len=int(self.config.encoder.max_len))
    report = self.codebook.add_tools(embeddings=x, names=[t.name for t in tools])
    missing = [t for t in self.codebook.tokens() if self.model.tokenizer.token_to_id(t) is None]
    if missing:
      params, mcfg, tok = vocab_lib.extend_vocab(self.model.params, self.model.config, self.model.tokenizer, missing,
                                                 "random", rng=int(self.config.seed))
      self.model = dataclasses.replace(self.model, params=params, config=mcfg, tokenizer=tok)
    return report


def load_trained(workdir) -> Trained:
  """Config, dataset, codebook and trained model of a finished workdir (raises FileNotFoundError otherwise)."""
  import orbax.checkpoint as ocp
  from toolgen_jax import data
  from toolgen_jax.codebook import codebook as cb_lib
  from toolgen_jax.models import llama
  from toolgen_jax.models import tokenizer as tok_lib
  wd = Workdir(pathlib.Path(workdir))
  mdir = wd / "model"
  if not (mdir / "params").exists():
    raise FileNotFoundError(f"{wd.root} holds no trained model ({mdir}/params is missing): run "
                            f"`python -m toolgen_jax.main --config=... --workdir={wd.root}` first")
  config = load_config(wd.root)
  raw = json.loads((mdir / "llama_config.json").read_text())
  mcfg = llama.LlamaConfig(**{k: (tuple(v) if k == "lora_targets" else v) for k, v in raw.items()})
  abstract = jax.eval_shape(lambda: llama.init_params(mcfg, jax.random.PRNGKey(0)))
  params = ocp.StandardCheckpointer().restore((mdir / "params").absolute(), abstract)
  tok = tok_lib.load_tokenizer(mdir / "tokenizer")
  start = json.loads((mdir / "model.json").read_text())["new_token_start"]
  return Trained(config=config, dataset=data.load_dataset(wd / "dataset"), codebook=cb_lib.load(wd / "codebook"),
                 model=Model(config=mcfg, params=params, tokenizer=tok, new_token_start=start), root=wd.root)


def _stage_steps(config, stage: str, n_examples: int) -> int:
  """Steps of a stage: stage_steps[stage] if set; "refine" unset gives 0 (the caller falls back to its stage)."""
  del n_examples
  per = config.train.stage_steps
  if stage == "refine":
    return int(per.get("refine", 0))
  return int(per[stage]) if stage in per and int(per[stage]) > 0 else int(config.train.steps)


def memorization_queries(config, ds, test) -> list:
  """`eval.memorization_tools` tools of the test queries (seeded sample), each queried by its own memorisation
  document (split "memorisation"): recall here says whether doc -> code was learnt at all, which generalising to
  queries about those tools needs first."""
  from toolgen_jax.data import documents as docs_lib
  from toolgen_jax.data.records import Query
  n = int(config.eval.get("memorization_tools", 0))
  if n <= 0 or "memorization" not in config.train.stages:
    return []
  tools = sorted({t for q in test if q.split != "train" for t in q.relevant}) or list(range(len(ds.corpus)))
  pick = sorted(np.random.default_rng(int(config.seed)).permutation(tools)[:n].tolist())
  max_chars = int(config.train.memorization_max_chars or config.data.doc_max_chars)
  return [Query(id=f"memorisation/{t}", text=docs_lib.tool_document(ds.corpus[t], config.data.doc_template,
                                                                     max_chars),
                relevant=(int(t),), group="documents", split="memorisation") for t in pick]


def evaluate(config, wd: Workdir, ds, cb, model: Model, params, emb: np.ndarray) -> dict:
  from toolgen_jax.evaluation import embedding as emb_lib
  from toolgen_jax.evaluation import harness
  from toolgen_jax.generative import GenerativeRetriever

  from toolgen_jax.evaluate import select_split
  test = [q for q in select_split(ds.queries, str(config.eval.split), config.data.source) if q.split != "train"]
  if int(config.eval.max_queries) > 0:
    test = test[:int(config.eval.max_queries)]
  if int(config.eval.train_queries) > 0:  # a seeded sample of training queries, scored as split "train"
    train_q = [q for q in ds.queries if q.split == "train"]
    pick = np.random.default_rng(int(config.seed)).permutation(len(train_q))[:int(config.eval.train_queries)]
    test = test + [train_q[i] for i in sorted(pick)]
  test = test + memorization_queries(config, ds, test)
  docs = tool_documents(config, ds)
  retrievers = {}
  retrievers[config.codebook.method] = GenerativeRetriever(
      params, model.config, model.tokenizer, build_trie(config, cb, model.tokenizer), beam_size=int(config.decode.beam_size),
      batch_size=int(config.eval.batch_size), alpha=float(config.decode.length_normalization),
      name=config.codebook.method, system_prompt=config.train.system_prompt)
  if "bm25" in config.eval.baselines:
    from toolgen_jax.evaluate import bm25_retriever
    retrievers["bm25"] = bm25_retriever(docs, config)
  if "embedding" in config.eval.baselines:
    retrievers["embedding"] = emb_lib.EmbeddingRetriever(doc_embeddings=emb)
  methods = {}
  for name, r in retrievers.items():
    _say(f"[evaluate] {name} on {len(test)} test queries, settings {tuple(config.eval.settings)}")
    methods[name] = harness.evaluate(r, test, ks=tuple(config.eval.ks), settings=tuple(config.eval.settings),
                                     batch_size=int(config.eval.batch_size) * 8, progress=name,
                                     pool_exclude=("train", "memorisation"))
  return {"queries": len(test), "methods": methods}


def language_preservation(config, model: Model, params_before, params_after) -> dict:
  """Perplexity of the base and the tuned model on held-out general English (ToolWeaver's WikiText-2 check)."""
  from toolgen_jax.evaluation import perplexity as ppl
  from toolgen_jax.models import llama
  from toolgen_jax.training import input_pipeline as ip

  fwd = jax.jit(lambda p, t: llama.forward(p, model.config, t)[0])
  encode = lambda text: ip.encode_text(model.tokenizer, text)
  n = int(config.eval.get("perplexity_tokens", 2048))
  out = {}
  for label, p in (("base", params_before), ("tuned", params_after)):
    out[label] = ppl.heldout_perplexity(lambda t, p=p: np.asarray(fwd(p, np.asarray(t))), encode, n_tokens=n)
  return out


def write_config(config: ml_collections.ConfigDict, wd: Workdir) -> None:
  (wd / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole method on `config`, resuming from whatever `workdir` holds. Returns the report dict."""
  from toolgen_jax.evaluation import report as report_lib

  wd = Workdir(pathlib.Path(workdir))
  write_config(config, wd)
  _say(f"[config] resolved config -> {wd / 'config.json'}")
  if config.pipeline.dry_run:
    return {}
  from toolgen_jax.training import sharding as shd
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
    report["perplexity"] = language_preservation(config, model, model.params, params)
  paths = report_lib.write_report(report, wd.root)
  wd.mark("report", **{k: str(v) for k, v in paths.items()})
  _say((wd / "report.md").read_text())
  _say(f"[report] {paths['json']}  {paths['markdown']}  plots: {', '.join(str(p) for p in paths['plots'])}")
  _say(f"[done] {time.perf_counter() - t0:.0f}s")
  return report

