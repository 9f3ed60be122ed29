"""The alignment stages as training sets: records + codebook -> `Example`s (prompt segments, target segments).

* memorization (ToolGen stage 1, "tool memorization"): user = the tool's document, assistant = its code tokens.
* retrieval (ToolGen stage 2, "retrieval training"): user = the query, assistant = the code tokens of a relevant
  tool. Several relevant tools (I2/I3): 'separate' makes one example per tool (ToolGen), 'joint' one example whose
  target is every relevant tool's codes in the source's order (multi-tool generation).
* trajectory (ToolGen stage 3, "end-to-end agent tuning"): a ToolBench trajectory rendered by the agent's own chat
  format (`toolgen_jax.agent.format.chat_turns`: Thought / action code tokens / Action Input turns), so training and
  inference prompts are byte-identical; the loss is on assistant turns only.
* Toolscaler post-guided refinement: `post_guided_refinement` re-embeds the tools with the trained model,
  re-quantises them, swaps in the new codebook (and token rows), and trains again, for T rounds.

Every prompt is rendered with the tokenizer's chat template; the target is exactly what the template appends for the
assistant turn after the generation prompt (content + end-of-turn), i.e. what the model must generate at inference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from toolgen_jax.data import documents as docs_lib
from toolgen_jax.data.records import DataError, Message, Query, ToolCorpus, Trajectory
from toolgen_jax.training.input_pipeline import Example

STAGES = ("memorization", "retrieval", "trajectory")
MULTI_TARGET = ("separate", "joint")


# ---- codebook adapter ----------------------------------------------------------------------------------------

def code_tokens(codebook: Any, tool_id: int) -> list[str]:
  """The code token strings of a tool: a mapping tool id -> token strings, or a `Codebook` (its `token_strings`
  / `tokens_of` method, else its `codes` [N, L] array written as `<T{level}_{code}>`)."""
  if isinstance(codebook, Mapping):
    if tool_id not in codebook:
      raise KeyError(f"tool {tool_id} has no code in the codebook ({len(codebook)} entries)")
    return list(codebook[tool_id])
  for name in ("token_strings", "tokens_of", "tool_tokens"):
    fn = getattr(codebook, name, None)
    if callable(fn):
      out = fn(tool_id)
      return [out] if isinstance(out, str) else list(out)
  codes = np.asarray(codebook.codes)
  if not 0 <= tool_id < codes.shape[0]:
    raise KeyError(f"tool {tool_id} outside the codebook's {codes.shape[0]} rows")
  return [f"<T{level}_{int(c)}>" for level, c in enumerate(codes[tool_id]) if c >= 0]


def code_text(codebook: Any, tool_id: int) -> str:
  return "".join(code_tokens(codebook, tool_id))


# ---- chat rendering ------------------------------------------------------------------------------------------

def _template(tokenizer: Any, turns: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
  fn = getattr(tokenizer, "apply_chat_template", None)
  if fn is None:
    raise TypeError(f"{type(tokenizer).__name__} has no apply_chat_template; stages need a chat tokenizer")
  if not turns:
    return ""
  return fn(list(turns), tokenize=False, add_generation_prompt=generation_prompt)


def render_chat(tokenizer: Any, turns: Sequence[Mapping[str, str]], example_id: str,
                target_roles: Iterable[str] = ("assistant",), first_target: int = 0) -> Example:
  """Splits the templated chat into segments; each target-role turn's own text (after its generation prompt) is a
  target segment (turns before index `first_target` are context only). Raises if the template does not render
  prefixes as prefixes (then masks would be wrong)."""
  target_roles = set(target_roles)
  segments: list[tuple[str, bool]] = []
  prev = ""
  for i, turn in enumerate(turns):
    full = _template(tokenizer, turns[:i + 1], False)
    if turn["role"] in target_roles and i >= first_target:
      head = _template(tokenizer, turns[:i], True) if i else ""
      if not (head.startswith(prev) and full.startswith(head)):
        raise ValueError(f"example {example_id}: the chat template does not extend turn {i} as a prefix; "
                         "cannot mark the assistant tokens")
      segments += [(head[len(prev):], False), (full[len(head):], True)]
    else:
      if not full.startswith(prev):
        raise ValueError(f"example {example_id}: the chat template rewrites earlier turns at turn {i}")
      segments.append((full[len(prev):], False))
    prev = full
  merged: list[tuple[str, bool]] = []
  for text, t in segments:  # runs of equal flags are tokenised as one string, as the inference prompt is
    if not text:
      continue
    if merged and merged[-1][1] == t:
      merged[-1] = (merged[-1][0] + text, t)
    else:
      merged.append((text, t))
  return Example(id=example_id, segments=tuple(merged))


# ---- stages ----------------------------------------------------------------------------------------------------

def system_turn(system_prompt: str | None) -> list[dict]:
  """The system turn of memorisation/retrieval prompts: none (the template's default) or the given text."""
  return [] if system_prompt is None else [{"role": "system", "content": system_prompt}]


def memorization_examples(corpus: ToolCorpus, codebook: Any, tokenizer: Any, *,
                          template: str = docs_lib.DEFAULT_TEMPLATE, max_chars: int = docs_lib.DEFAULT_MAX_CHARS,
                          tool_ids: Sequence[int] | None = None, system_prompt: str | None = None) -> list[Example]:
  """One example per tool: document -> code tokens (ToolGen 'tool memorization')."""
  ids = range(len(corpus)) if tool_ids is None else tool_ids
  out = []
  for tid in ids:
    doc = docs_lib.tool_document(corpus[tid], template, max_chars)
    turns = system_turn(system_prompt) + [{"role": "user", "content": doc},
                                          {"role": "assistant", "content": code_text(codebook, tid)}]
    out.append(render_chat(tokenizer, turns, f"memorization/{tid}"))
  return out


def retrieval_examples(queries: Sequence[Query], codebook: Any, tokenizer: Any, *,
                       multi_target: str = "separate", system_prompt: str | None = None) -> list[Example]:
  """Query -> code tokens of its relevant tool(s); queries without a relevant tool raise (naming the query)."""
  if multi_target not in MULTI_TARGET:
    raise ValueError(f"config.train.multi_target must be one of {MULTI_TARGET}, got {multi_target!r}")
  out = []
  for q in queries:
    if not q.relevant:
      raise DataError("queries", q.id, "relevant", "a retrieval example needs at least one relevant tool")
    if multi_target == "joint":
      targets = [("all", "".join(code_text(codebook, t) for t in q.relevant))]
    else:
      targets = [(str(t), code_text(codebook, t)) for t in q.relevant]
    for name, target in targets:
      turns = system_turn(system_prompt) + [{"role": "user", "content": q.text},
                                            {"role": "assistant", "content": target}]
      out.append(render_chat(tokenizer, turns, f"retrieval/{q.id}/{name}"))
  return out


def trajectory_examples(trajectories: Sequence[Trajectory], corpus: ToolCorpus, codebook: Any, tokenizer: Any, *,
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
  from absl import logging

  from toolgen_jax.agent import format as fmt  # the agent's format is the single definition of the turns

  def action_text(m: Message) -> str:
    if m.action is None:
      if finish_id is None:
        raise DataError("trajectories", m.action_name, "action",
                        "a Finish action needs finish_id (the Finish action's codebook row)")
      return code_text(codebook, finish_id)
    return code_text(codebook, m.action)

  def tool_of(m: Message):
    return fmt.FINISH_TOOL if m.action is None else corpus[m.action]

  kw = {} if system_prompt is None else {"system_prompt": system_prompt}
  out = []
  dropped = 0
  for tr in trajectories:
    msgs, n = fmt.known_steps(tr.messages)
    dropped += n
    if not per_step:
      out.append(render_chat(tokenizer, fmt.chat_turns(msgs, action_text=action_text, tool_of=tool_of, **kw),
                             f"trajectory/{tr.id}"))
      continue
    for i, m in enumerate(msgs):
      if m.role != "assistant":
        continue
      context = fmt.chat_turns(msgs[:i], action_text=action_text, tool_of=tool_of, **kw)
      step = fmt.assistant_turns(m, action_text=action_text, tool_of=tool_of)
      out.append(render_chat(tokenizer, context + step, f"trajectory/{tr.id}/{i}", first_target=len(context)))
  if dropped:
    logging.warning("trajectory_examples: %d assistant steps without a known tool or Finish left out (with their "
                    "observations) of %d trajectories", dropped, len(trajectories))
  return out


def stage_examples(stage: str, *, corpus: ToolCorpus, queries: Sequence[Query] = (),
                   trajectories: Sequence[Trajectory] = (), codebook: Any, tokenizer: Any,
                   train_config: Mapping[str, Any] | None = None, data_config: Mapping[str, Any] | None = None,
                   finish_id: int | None = None) -> list[Example]:
  """Config-driven dispatch: `config.train.stages` names run in order, each built by this function."""
  tc = train_config or {}
  dc = data_config or {}
  if stage == "memorization":
    return memorization_examples(corpus, codebook, tokenizer, template=dc.get("doc_template",
                                                                               docs_lib.DEFAULT_TEMPLATE),
                                 max_chars=int(tc.get("memorization_max_chars", 0) or
                                               dc.get("doc_max_chars", docs_lib.DEFAULT_MAX_CHARS)),
                                 system_prompt=tc.get("system_prompt"))
  if stage == "retrieval":
    return retrieval_examples(queries, codebook, tokenizer, multi_target=tc.get("multi_target", "separate"),
                              system_prompt=tc.get("system_prompt"))
  if stage == "trajectory":
    mode = dc.get("trajectory_examples", "whole")
    if mode not in ("whole", "steps"):
      raise ValueError(f"config.data.trajectory_examples must be whole|steps, got {mode!r}")
    return trajectory_examples(trajectories, corpus, codebook, tokenizer, finish_id=finish_id,
                               per_step=mode == "steps")
  raise ValueError(f"unknown stage {stage!r}; config.train.stages may contain {STAGES}")


# ---- Toolscaler post-guided refinement -------------------------------------------------------------------------

@dataclasses.dataclass
class RefinementRound:
  round: int
  changed_tools: int      # tools whose code changed in this round
  metrics: dict


def post_guided_refinement(params: Any, codebook: Any, *, rounds: int,
                           train: Callable[[Any, Any, int], tuple[Any, dict]],
                           embed_tools: Callable[[Any], np.ndarray],
                           quantize: Callable[[np.ndarray, Any], Any],
                           swap_tokens: Callable[[Any, Any, Any], Any] | None = None,
                           ) -> tuple[Any, Any, list[RefinementRound]]:
  """Toolscaler's loop, T = `rounds` times: re-embed every tool with the trained model (`embed_tools(params)` ->
  [N, D]), re-quantise (`quantize(embeddings, old_codebook)` -> new codebook), swap the new codebook in
  (`swap_tokens(params, old, new)` updates token rows, default: keep the rows, since the code tokens are the same
  vocabulary and only the tool -> code assignment moves), then train again (`train(params, codebook, round)` ->
  (params, metrics)). The hooks are the codebook and model parts' functions; the loop itself owns no numerics.
  """
  history = []
  for r in range(rounds):
    emb = np.asarray(embed_tools(params))
    new = quantize(emb, codebook)
    old_codes = np.asarray(getattr(codebook, "codes", np.zeros((0,))))
    new_codes = np.asarray(getattr(new, "codes", np.zeros((0,))))
    changed = -1
    if old_codes.ndim == 2 and new_codes.ndim == 2 and len(old_codes) == len(new_codes):
      w = max(old_codes.shape[1], new_codes.shape[1])  # a collision suffix level may come or go: pad with -1
      pad = lambda c: np.pad(c, ((0, 0), (0, w - c.shape[1])), constant_values=-1)
      changed = int(np.any(pad(old_codes) != pad(new_codes), axis=-1).sum())
    if swap_tokens is not None:
      params = swap_tokens(params, codebook, new)
    codebook = new
    params, metrics = train(params, codebook, r)
    history.append(RefinementRound(round=r, changed_tools=changed, metrics=dict(metrics)))
  return params, codebook, history


def mean_hidden_embeddings(params: Any, config: Any, token_batches: Iterable[tuple[np.ndarray, np.ndarray]]
                           ) -> np.ndarray:
  """Tool embeddings from the trained LLM: masked mean of final hidden states over each document's tokens.

  token_batches yields (tokens [B, T] int32, mask [B, T]); returns [N, D] float32 (L2-normalised rows).
  A ready-made `embed_tools` for `post_guided_refinement`.
  """
  import jax
  import jax.numpy as jnp

  from toolgen_jax.models import llama

  @jax.jit
  def pooled(p, tokens, mask):
    h, _ = llama.hidden_states(p, config, tokens, attention_mask=mask)
    m = mask.astype(jnp.float32)[..., None]
    v = jnp.sum(h.astype(jnp.float32) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-6)

  return np.concatenate([np.asarray(pooled(params, jnp.asarray(t), jnp.asarray(m))) for t, m in token_batches])


# ---- config-driven composition ---------------------------------------------------------------------------------

def run_stages(config: Any, *, model_config: Any, params: Any, tokenizer: Any, dataset: Any, codebook: Any,
               workdir: str, new_token_start: int | None = None, finish_id: int | None = None,
               eval_fn: Callable | None = None, mesh: Any = None, refine_hooks: Mapping[str, Callable] | None = None
               ) -> tuple[Any, Any, dict]:
  """Trains `config.train.stages` in order, each stage starting from the previous one's params.

  Retrieval uses only the dataset's training queries (split in `data.readers.TRAIN_SPLITS`); every stage saves
  checkpoints under WORKDIR/checkpoints/<stage> with the codebook, tokenizer and resolved config, and a re-run
  skips finished stages and resumes a killed one. With `config.train.refine_rounds` = T > 0, Toolscaler's
  post-guided refinement follows: `refine_hooks` = {'embed_tools': params -> [N, D], 'quantize': (emb, codebook) ->
  codebook, optionally 'swap_tokens'}; each round retrains the last stage as '<stage>_refine<r>'.

  Returns (params, codebook, {stage name: FitResult}).
  """
  from toolgen_jax.data.readers import TRAIN_SPLITS
  from toolgen_jax.training import checkpoint as ckpt_lib
  from toolgen_jax.training import input_pipeline as ip_lib
  from toolgen_jax.training import sharding as shd
  from toolgen_jax.training import train as train_lib

  tc = config.train
  mesh = mesh if mesh is not None else shd.make_mesh(config.mesh)
  train_queries = [q for q in dataset.queries if q.split in TRAIN_SPLITS]
  pad_id = getattr(tokenizer, "pad_id", 0) or 0
  results: dict = {}

  def one(stage: str, name: str, params, codebook):
    if stage == "retrieval" and not train_queries:
      raise ValueError(f"stage 'retrieval': the dataset has no queries in splits {TRAIN_SPLITS}")
    examples = stage_examples(stage, corpus=dataset.corpus, queries=train_queries,
                              trajectories=dataset.trajectories, codebook=codebook, tokenizer=tokenizer,
                              train_config=tc, data_config=config.data, finish_id=finish_id)
    pipe = ip_lib.InputPipeline(examples, tokenizer, batch_size=int(tc.batch_size), seq_len=int(tc.seq_len),
                                seed=int(config.seed), pad_id=int(pad_id), mode=tc.packing)
    extras = {"config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
              "codebook": ckpt_lib.codebook_json(codebook), "tokenizer": ckpt_lib.tokenizer_json(tokenizer),
              "stage": name}
    res = train_lib.fit(model_config=model_config, params=params, train_config=tc, mesh=mesh,
                        rules=config.mesh.logical_axis_rules, pipeline=pipe, workdir=workdir, stage=name,
                        seed=int(config.seed), new_token_start=new_token_start, extras=extras, eval_fn=eval_fn)
    results[name] = res
    return res.state.params

  for stage in tc.stages:
    params = one(stage, stage, params, codebook)
  rounds = int(tc.get("refine_rounds", 0))
  if rounds:
    if not refine_hooks or "embed_tools" not in refine_hooks or "quantize" not in refine_hooks:
      raise ValueError("config.train.refine_rounds > 0 needs refine_hooks with 'embed_tools' and 'quantize'")
    last = tc.stages[-1]
    params, codebook, history = post_guided_refinement(
        params, codebook, rounds=rounds,
        train=lambda p, cb, r: (one(last, f"{last}_refine{r}", p, cb), {}),
        embed_tools=refine_hooks["embed_tools"], quantize=refine_hooks["quantize"],
        swap_tokens=refine_hooks.get("swap_tokens"))
    results["refinement"] = history
  return params, codebook, results
