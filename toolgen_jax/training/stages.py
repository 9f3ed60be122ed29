"""The alignment stages as training sets (records + code texts -> `Example`s), and the one orchestration that
trains them in order.

* memorization (ToolGen stage 1, "tool memorization"): user = the tool's document, assistant = its code tokens.
* retrieval (ToolGen stage 2, "retrieval training"): user = the query, assistant = the code tokens of a relevant
  tool. Several relevant tools (I2/I3): 'separate' makes one example per tool (ToolGen), 'joint' one example whose
  target is every relevant tool's codes in the source's order (multi-tool generation).
* trajectory (ToolGen stage 3, "end-to-end agent tuning"): a ToolBench trajectory rendered in the agent's chat
  format (`toolgen_jax.prompts.chat_turns`), so training and inference prompts are byte-identical; the loss is on
  assistant turns only.

Prompts and targets are rendered by `toolgen_jax.prompts` (the one owner of the format); a tool's code text comes
from a `toolgen_jax.code_vocab.CodeVocabulary` (the one owner of the code -> token mapping), or any object with
`tool_text(row) -> str`. `run_stages` is the orchestration `pipeline.run` calls: stages in order, each resuming from
its own checkpoints, then Toolscaler's post-guided rounds (`training.refinement`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from absl import logging

from toolgen_jax import prompts
from toolgen_jax.data import documents as docs_lib
from toolgen_jax.data.records import DataError, Message, Query, ToolCorpus, Trajectory
from toolgen_jax.prompts import Example

STAGES = ("memorization", "retrieval", "trajectory")
MULTI_TARGET = ("separate", "joint")
ENGINES = ("recipe", "code")  # config.train.engine (config.py says what each is)
CODE_ENGINE_STAGES = ("memorization", "retrieval")  # code targets only; agent tuning's free text needs the recipe
SCHEDULES = ("sequential", "mixed")  # config.train.schedule
MIXED = "mixed"  # the stage name of a mixed schedule's one run (checkpoints, stage_epochs, the report)


class CodeText(Protocol):
  """What the example builders need of a code vocabulary: the assistant text of a codebook row's code."""

  def tool_text(self, row: int) -> str: ...


# ---- stages ----------------------------------------------------------------------------------------------------

def memorization_documents(corpus: ToolCorpus, *, template: str = docs_lib.DEFAULT_TEMPLATE,
                           max_chars: int = docs_lib.DEFAULT_MAX_CHARS, views: Sequence[str] = (),
                           tool_ids: Sequence[int] | None = None) -> list[tuple[int, str, str]]:
  """(tool row, name, text) of every memorisation document: one cut document per tool (ToolGen), or with `views`
  each tool's distinct views of those kinds (`data.views`, documents as queries; view texts keep their own limit)."""
  ids = range(len(corpus)) if tool_ids is None else tool_ids
  if not views:
    return [(tid, str(tid), docs_lib.tool_document(corpus[tid], template, max_chars)) for tid in ids]
  from toolgen_jax.data import views as views_lib
  unknown = sorted(set(views) - set(views_lib.KINDS))
  if unknown:
    raise ValueError(f"config.train.memorization_views: unknown view kinds {unknown}; known: {views_lib.KINDS}")
  wanted = set(ids)
  allv, _ = views_lib.corpus_views(corpus)
  out, n = [], {}
  for v in allv:
    if v.tool_id in wanted and v.kind in views:
      n[v.tool_id] = n.get(v.tool_id, 0) + 1
      out.append((v.tool_id, f"{v.tool_id}/{v.kind}{n[v.tool_id]}", v.text))
  return out


def memorization_examples(corpus: ToolCorpus, codes: CodeText, tokenizer: Any, *,
                          template: str = docs_lib.DEFAULT_TEMPLATE, max_chars: int = docs_lib.DEFAULT_MAX_CHARS,
                          tool_ids: Sequence[int] | None = None, system_prompt: str | None = None,
                          views: Sequence[str] = ()) -> list[Example]:
  """Document -> code tokens (ToolGen 'tool memorization'): one example per `memorization_documents` entry."""
  out = []
  for tid, name, doc in memorization_documents(corpus, template=template, max_chars=max_chars, views=views,
                                               tool_ids=tool_ids):
    turns = prompts.retrieval_turns(doc, codes.tool_text(tid), system_prompt)
    out.append(prompts.render_chat(tokenizer, turns, f"memorization/{name}"))
  return out


def retrieval_examples(queries: Sequence[Query], codes: CodeText, tokenizer: Any, *,
                       multi_target: str = "separate", system_prompt: str | None = None) -> list[Example]:
  """Query -> code tokens of its relevant tool(s); queries without a relevant tool raise (naming the query)."""
  if multi_target not in MULTI_TARGET:
    raise ValueError(f"config.train.multi_target must be one of {MULTI_TARGET}, got {multi_target!r}")
  out = []
  for q in queries:
    if not q.relevant:
      raise DataError("queries", q.id, "relevant", "a retrieval example needs at least one relevant tool")
    if multi_target == "joint":
      targets = [("all", "".join(codes.tool_text(t) for t in q.relevant))]
    else:
      targets = [(str(t), codes.tool_text(t)) for t in q.relevant]
    for name, target in targets:
      turns = prompts.retrieval_turns(q.text, target, system_prompt)
      out.append(prompts.render_chat(tokenizer, turns, f"retrieval/{q.id}/{name}"))
  return out


def trajectory_examples(trajectories: Sequence[Trajectory], corpus: ToolCorpus, codes: CodeText, tokenizer: Any, *,
                        finish_id: int | None = None, system_prompt: str | None = None,
                        per_step: bool = False) -> list[Example]:
  """Agent tuning: each trajectory in the agent's chat format; loss on every assistant turn (thought, action code,
  action input). `finish_id`: the codebook row of the Finish action (required when a trajectory finishes).

  `per_step`: one example per assistant step instead: the gold history before it as context (no loss) and that
  step's turns as targets, i.e. exactly the prompts the agent sees at inference. Truncation to seq_len then cuts
  old history, never the step being learnt (whole trajectories of ToolBench run 1-4k tokens).

  A step whose action is neither a corpus tool nor Finish (ToolBench's hallucinated names, an answer written
  without an action) has no code sequence: it is left out of the rendering with the observation it drew, and
  counted in one summary line.
  """

  def action_text(m: Message) -> str:
    if m.action is None:
      if finish_id is None:
        raise DataError("trajectories", m.action_name, "action",
                        "a Finish action needs finish_id (the Finish action's codebook row)")
      return codes.tool_text(finish_id)
    return codes.tool_text(m.action)

  def tool_of(m: Message):
    return prompts.FINISH_TOOL if m.action is None else corpus[m.action]

  kw = {} if system_prompt is None else {"system_prompt": system_prompt}
  out = []
  dropped = 0
  for tr in trajectories:
    msgs, n = prompts.known_steps(tr.messages)
    dropped += n
    if not per_step:
      out.append(prompts.render_chat(tokenizer, prompts.chat_turns(msgs, action_text=action_text, tool_of=tool_of, **kw),
                             f"trajectory/{tr.id}"))
      continue
    for i, m in enumerate(msgs):
      if m.role != "assistant":
        continue
      context = prompts.chat_turns(msgs[:i], action_text=action_text, tool_of=tool_of, **kw)
      step = prompts.assistant_turns(m, action_text=action_text, tool_of=tool_of)
      out.append(prompts.render_chat(tokenizer, context + step, f"trajectory/{tr.id}/{i}", first_target=len(context)))
  if dropped:
    logging.warning("trajectory_examples: %d assistant steps without a known tool or Finish left out (with their "
                    "observations) of %d trajectories", dropped, len(trajectories))
  return out


def stage_examples(stage: str, *, corpus: ToolCorpus, queries: Sequence[Query] = (),
                   trajectories: Sequence[Trajectory] = (), codes: CodeText, tokenizer: Any,
                   train_config: Any = None, data_config: Any = None, finish_id: int | None = None) -> list[Example]:
  """Config-driven dispatch: `config.train.stages` names run in order, each built by this function."""
  tc = train_config or {}
  dc = data_config or {}
  if stage == "memorization":
    return memorization_examples(corpus, codes, tokenizer, template=dc.get("doc_template",
                                                                            docs_lib.DEFAULT_TEMPLATE),
                                 max_chars=int(tc.get("memorization_max_chars", 0) or
                                               dc.get("doc_max_chars", docs_lib.DEFAULT_MAX_CHARS)),
                                 system_prompt=tc.get("system_prompt"),
                                 views=tuple(tc.get("memorization_views", ())))
  if stage == "retrieval":
    return retrieval_examples(queries, codes, tokenizer, multi_target=tc.get("multi_target", "separate"),
                              system_prompt=tc.get("system_prompt"))
  if stage == "trajectory":
    mode = dc.get("trajectory_examples", "whole")
    if mode not in ("whole", "steps"):
      raise ValueError(f"config.data.trajectory_examples must be whole|steps, got {mode!r}")
    return trajectory_examples(trajectories, corpus, codes, tokenizer, finish_id=finish_id,
                               per_step=mode == "steps")
  raise ValueError(f"unknown stage {stage!r}; config.train.stages may contain {STAGES}")


# ---- what each stage trains on, and for how long ---------------------------------------------------------------

TRAIN_SPLIT = "train"  # the only query split any stage trains on


def training_queries(dataset: Any) -> list[Query]:
  return [q for q in dataset.queries if q.split == TRAIN_SPLIT]


def training_trajectories(config: Any, dataset: Any) -> list[Trajectory]:
  """The trajectories the `trajectory` stage trains on: those of training-split queries (a trajectory without a
  query record counts as training) outside `data.trajectory_holdout_groups` (the id's prefix, I1/I2/I3)."""
  held = set(config.data.get("trajectory_holdout_groups", ()))
  split_of = {q.id: q.split for q in dataset.queries}
  return [t for t in dataset.trajectories if split_of.get(t.query_id, TRAIN_SPLIT) == TRAIN_SPLIT
          and (t.id.split("/", 1)[0] if "/" in t.id else "all") not in held]


def stage_steps(config: Any, stage: str, num_examples: int = 0) -> int:
  """Steps of a stage: `train.stage_epochs[stage]` epochs of its `num_examples` when set (> 0), else
  `train.stage_steps[stage]` if set (> 0), else `train.steps`. A post-guided round retrains the last stage for
  `stage_steps.refine` steps when set, else as long as that stage."""
  per = config.train.stage_steps
  if stage.partition("_refine")[2]:
    if int(per.get("refine", 0)) > 0:
      return int(per["refine"])
    stage = stage.partition("_refine")[0]
  epochs = float(config.train.get("stage_epochs", {}).get(stage, 0.0))
  if epochs > 0 and num_examples > 0:
    return max(1, int(np.ceil(epochs * num_examples / int(config.train.batch_size))))
  return int(per[stage]) if stage in per and int(per[stage]) > 0 else int(config.train.steps)


def fit_code_stage(config: Any, name: str, params: Any, codebook: Any, model: Any, vocab: Any,
                   examples: Sequence[Example], steps: int, workdir: Any, *, prototype: bool,
                   log: Callable[[str], None] = print) -> tuple[Any, Any, list[dict]]:
  """One stage on the code engine (`train.engine='code'`): the examples' frozen bottom (`train.frozen_layers`
  layers) computed once into WORKDIR/feature_cache/<stage>, then the top layers and the code tokens' own output
  rows trained on `train.code_loss` for the stage's steps (`training.code_engine`). `prototype`: the code rows
  start at the mean cached hidden state of their tools (the first code stage of a run). The trained parts are kept
  as WORKDIR/checkpoints/<stage>/engine.npz: a re-run loads them instead of training. Returns (params, model config
  (the head untied when the code rows are their own), per-step metrics)."""
  import json
  import pathlib

  import jax

  from toolgen_jax.training import code_engine, code_loss
  from toolgen_jax.training import feature_cache as fc
  from toolgen_jax.training import input_pipeline as ip
  from toolgen_jax.training import optimizer as opt_lib
  tc = config.train
  table = np.asarray(vocab.token_ids)
  encoded = [ip.encode_example(model.tokenizer, ex)[0] for ex in examples]
  cex = fc.code_examples(encoded, table, int(tc.seq_len), pad_id=model.tokenizer.pad_id or 0,
                         keep_tail=prompts.prompt_suffix_tokens(model.tokenizer, tc.get("system_prompt")))
  part = opt_lib.Partition(new_token_start=model.new_token_start, frozen_layers=int(tc.frozen_layers))
  # train.code_inputs_epochs > 0: a second phase trains the code tokens' input rows too (code_engine's docstring)
  inputs_epochs = float(tc.get("code_inputs_epochs", 0.0))
  part_inputs = dataclasses.replace(part, input_rows=True)
  trainable = opt_lib.split(params, model.config, part_inputs if inputs_epochs else part)
  out = pathlib.Path(workdir) / "checkpoints" / name
  saved = out / "engine.npz"
  if saved.exists():
    leaves, treedef = jax.tree_util.tree_flatten(trainable)
    with np.load(saved) as z:
      trainable = jax.tree_util.tree_unflatten(treedef, [z[f"leaf{i}"] for i in range(len(leaves))])
    history = json.loads((out / "engine_history.json").read_text())
    log(f"[train:{name}] code engine: trained parts loaded from {saved}")
    if inputs_epochs:
      part = part_inputs
  else:
    text_weight = float(tc.get("text_weight", 0.0))
    cache = fc.build(params, model.config, cex, frozen_layers=part.frozen_layers,
                     directory=pathlib.Path(workdir) / "feature_cache" / name,
                     text_positions=int(tc.get("text_positions", 0)) if text_weight else 0,
                     new_token_start=model.new_token_start, log=log,
                     prefix_kv="float16" if inputs_epochs else None)
    log(f"[train:{name}] feature cache: {len(cache)} examples, layer {part.frozen_layers} states "
        f"({cex.truncated} prompts cut at seq_len {tc.seq_len})")
    if prototype:
      trainable["code_head"] = code_engine.prototype_rows(cache, params, model.config, part, table, trainable)
    allowed = None
    if tc.code_loss == "trie":
      allowed = code_loss.trie_children_mask(codebook.codes[codebook.active], cex.codes, table.shape[1])
    ecfg = code_engine.EngineConfig(
        loss=tc.code_loss, text_weight=text_weight, lr_rows=float(tc.lr_rows), lr_layers=float(tc.lr_layers),
        epochs=steps * int(tc.batch_size) / max(len(cex), 1), batch_size=int(tc.batch_size),
        warmup_fraction=float(tc.warmup_fraction), weight_decay=float(tc.weight_decay),
        grad_clip=float(tc.grad_clip), seed=int(config.seed))
    rows = {k: v for k, v in trainable.items() if k != "new_rows"}
    rows, history = code_engine.fit(cache, params, model.config, part, table, cfg=ecfg, trainable=rows,
                                    allowed=allowed, log=log, log_every=int(tc.log_every))
    trainable = {**trainable, **rows}
    if inputs_epochs:
      t0 = history[-1]["seconds"] if history else 0.0
      log(f"[train:{name}] code engine: {inputs_epochs:g} epochs with the code tokens' input rows training too")
      icfg = dataclasses.replace(ecfg, epochs=inputs_epochs,
                                 lr_rows=float(tc.get("lr_inputs_rows", 0.0) or tc.lr_rows),
                                 lr_inputs=float(tc.get("lr_inputs", 2e-3)))
      trainable, more = code_engine.fit(cache, params, model.config, part_inputs, table, cfg=icfg,
                                        trainable=trainable, allowed=allowed, log=log, log_every=int(tc.log_every))
      history += [{**h, "phase": "inputs", "seconds": h["seconds"] + t0} for h in more]
      part = part_inputs
    out.mkdir(parents=True, exist_ok=True)
    np.savez(saved, **{f"leaf{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(trainable))})
    (out / "engine_history.json").write_text(json.dumps(history))
  params, mcfg = opt_lib.export(params, trainable, model.config, part)
  return params, mcfg, history


def untie_like(params: Any, config: Any, target: Any) -> Any:
  """`params` of a tied model written untied (lm_head = E^T, the same function) when `target` is untied, so base
  and tuned weights share one model config."""
  if config.tie_embeddings and not target.tie_embeddings:
    params = dict(params)
    params["lm_head"] = {"kernel": params["embed"]["embedding"].T}
  return params


# ---- the orchestration ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class StageRun:
  """One stage's examples and fit result (what `run_stages` reports per stage)."""
  name: str
  examples: int
  steps: int
  fit: Any  # training.train.FitResult (recipe), or the code engine's per-step metrics (a list of dicts)


def run_stages(config: Any, *, model: Any, dataset: Any, codes: Callable[[Any, Any], CodeText], codebook: Any,
               workdir: Any, mesh: Any = None, evaluator: Callable[[Any, Any], Callable] | None = None,
               refine: Callable | None = None, log: Callable[[str], None] = print) -> tuple[Any, Any, Any, dict]:
  """Trains `config.train.stages` in order, each stage starting from the previous one's params, then
  `config.train.refine_rounds` Toolscaler post-guided rounds (`refine`, see `training.refinement`).

  model: a `models.vocab.Model` (config, params, tokenizer, new_token_start); `codes(codebook, tokenizer)` makes
  the code vocabulary the targets are spelled with (`code_vocab.CodeVocabulary`). Retrieval trains on the
  training split only (`training_queries`), agent tuning on `training_trajectories`. Every stage checkpoints under
  WORKDIR/checkpoints/<stage>: a re-run skips finished stages and resumes a killed one. `evaluator(codebook,
  model)` (`evaluation.evaluators.from_config`) makes each stage's `eval_fn(state)`, which `fit` calls every
  `train.eval_every` steps and which feeds `train.best_metric`.

  Returns (params, codebook, model, {stage name: StageRun}) — refinement may change the codebook and add tokens.
  """
  from toolgen_jax.training import input_pipeline as ip
  from toolgen_jax.training import sharding as shd
  from toolgen_jax.training import train as train_lib

  tc = config.train
  mesh = mesh if mesh is not None else shd.make_mesh(config.mesh)
  train_q = training_queries(dataset)
  train_t = training_trajectories(config, dataset)
  if "trajectory" in tc.stages:
    log(f"[train] {len(train_t)} of {len(dataset.trajectories)} trajectories for agent tuning (held out: query "
        f"split != train, groups {tuple(config.data.trajectory_holdout_groups)})")
  results: dict[str, StageRun] = {}

  engine = tc.get("engine", "recipe")
  if engine not in ENGINES:
    raise ValueError(f"config.train.engine must be one of {ENGINES}, got {engine!r}")
  first_code_stage = next((s for s in tc.stages if engine == "code" and s in CODE_ENGINE_STAGES), None)

  def fit_stage(stage: str, name: str, params, codebook, model):
    if stage == "retrieval" and not train_q:
      raise ValueError(f"stage 'retrieval': the dataset has no queries in split {TRAIN_SPLIT!r}")
    vocab = codes(codebook, model.tokenizer)
    examples = []
    for part_stage in (tuple(tc.stages) if stage == MIXED else (stage,)):  # mixed: every stage's examples, one run
      examples += stage_examples(part_stage, corpus=dataset.corpus, queries=train_q, trajectories=train_t,
                                 codes=vocab, tokenizer=model.tokenizer,
                                 train_config=tc, data_config=config.data, finish_id=codebook.finish_id)
    steps = stage_steps(config, name, len(examples))
    log(f"[train:{name}] {len(examples)} examples, {steps} steps of {tc.batch_size} "
        f"({steps * int(tc.batch_size) / max(len(examples), 1):.2f} epochs)")
    if engine == "code" and (stage in CODE_ENGINE_STAGES or stage == MIXED):
      first = bool(tc.get("prototype_init", True)) and (stage == MIXED or (stage == first_code_stage and
                                                                          name == stage))
      params, mcfg, history = fit_code_stage(config, name, params, codebook, model, vocab, examples, steps, workdir,
                                             prototype=first, log=log)
      model = dataclasses.replace(model, config=mcfg, params=untie_like(model.params, model.config, mcfg))
      if history:
        log(f"[train:{name}] code loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}, "
            f"accuracy {history[-1]['accuracy']:.3f}")
      results[name] = StageRun(name=name, examples=len(examples), steps=steps, fit=history)
      return params, model
    pipe = ip.InputPipeline(examples, model.tokenizer, batch_size=int(tc.batch_size), seq_len=int(tc.seq_len),
                            seed=int(config.seed), pad_id=model.tokenizer.pad_id or 0, mode=tc.packing)
    res = train_lib.fit(model_config=model.config, params=params, train_config=tc, mesh=mesh,
                        rules=config.mesh.logical_axis_rules, pipeline=pipe, workdir=workdir, stage=name,
                        total_steps=steps, seed=int(config.seed), new_token_start=model.new_token_start,
                        eval_fn=None if evaluator is None else evaluator(codebook, model))
    if res.history:
      log(f"[train:{name}] loss {res.history[0]['loss']:.3f} -> {res.history[-1]['loss']:.3f}")
    results[name] = StageRun(name=name, examples=len(examples), steps=steps, fit=res)
    return res.state.params, model

  params = model.params
  schedule = tc.get("schedule", "sequential")
  if schedule not in SCHEDULES:
    raise ValueError(f"config.train.schedule must be one of {SCHEDULES}, got {schedule!r}")
  if schedule == MIXED:
    if engine != "code" or any(s not in CODE_ENGINE_STAGES for s in tc.stages):
      raise ValueError(f"train.schedule='mixed' trains {CODE_ENGINE_STAGES} together on train.engine='code'; "
                       f"got engine {engine!r}, stages {tuple(tc.stages)}")
    params, model = fit_stage(MIXED, MIXED, params, codebook, model)
  for stage in (() if schedule == MIXED else tc.stages):
    params, model = fit_stage(stage, stage, params, codebook, model)
  rounds = int(tc.get("refine_rounds", 0))
  if rounds:
    if refine is None:
      raise ValueError("config.train.refine_rounds > 0 needs a `refine` callable (training.refinement)")
    if engine == "code":
      raise ValueError("post-guided refinement (train.refine_rounds) runs on train.engine='recipe' only")
    paper = tc.get("refine_form", "last_stage") == "paper"

    def retrain(p, cb, m, r):  # paper (Toolscaler App. D iv): every stage again, L_tool + L_traj; else the last one
      for stage in (tc.stages if paper else tc.stages[-1:]):
        p, m = fit_stage(stage, f"{stage}_refine{r}", p, cb, m)
      return p
    params, codebook, model = refine(params, codebook, model, rounds=rounds, train=retrain)
  return params, codebook, model, results
