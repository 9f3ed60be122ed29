"""Trajectory-replay evaluation: per-step tool-selection accuracy and argument validity of a policy.

For every assistant step of a gold trajectory (ToolBench DFS answers, read by `load_source('toolbench', ...)`) the
policy sees the gold history before that step (teacher forcing: earlier calls and their recorded observations) and
  - chooses an action among the allowed tools: the trajectory's offered tools ("gt_tools", ToolGen's restricted
    setting) or every tool it knows ("all"); scored top-1 (and recall@k) against the gold action, Finish included;
  - writes the Action Input for the *gold* tool, scored for validity against the tool's schema (it parses, has the
    required keys, right types and enum values) and for exact match with the gold arguments.
The gold arguments' own validity is reported as the reference the policy's rate compares with. Steps whose gold
action names no known tool (ToolBench hallucinated names) are counted and left out, with their observations, of
every later history too (`format.known_steps`, as in training).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from typing import Iterable, Sequence

from toolgen_jax import prompts as fmt
from toolgen_jax.agent import schema as schema_lib
from toolgen_jax.agent.policy import Policy
from toolgen_jax.data.records import Message, ToolCorpus, Trajectory


@dataclasses.dataclass
class _Counts:
  steps: int = 0
  correct: int = 0
  in_top_k: int = 0
  call_steps: int = 0
  call_correct: int = 0
  finish_steps: int = 0
  finish_correct: int = 0
  refused: int = 0  # the policy's top choice was outside the allowed set (the loop would refuse it)
  args_steps: int = 0
  args_valid: int = 0
  args_exact: int = 0
  gold_args_valid: int = 0

  def summary(self) -> dict:
    r = lambda a, b: round(a / b, 4) if b else None
    return {"steps": self.steps, "tool_accuracy": r(self.correct, self.steps),
            "recall_at_k": r(self.in_top_k, self.steps), "call_accuracy": r(self.call_correct, self.call_steps),
            "finish_accuracy": r(self.finish_correct, self.finish_steps), "refused_rate": r(self.refused, self.steps),
            "argument_steps": self.args_steps, "argument_validity": r(self.args_valid, self.args_steps),
            "argument_exact_match": r(self.args_exact, self.args_steps),
            "gold_argument_validity": r(self.gold_args_valid, self.args_steps)}


def _group(traj: Trajectory) -> str:
  return traj.id.split("/", 1)[0] if "/" in traj.id else "all"


def _canonical(text: str | None, parameters) -> str | None:
  try:
    return json.dumps(schema_lib.check_arguments(text, parameters), sort_keys=True)
  except schema_lib.ArgumentError:
    return None


def remap(trajectories: Iterable[Trajectory], source: ToolCorpus, target: ToolCorpus) -> tuple[list[Trajectory], int]:
  """Re-expresses tool ids of `source` as ids of `target` by (tool_name, api_name); actions unknown to `target`
  become unresolved (action None, name kept). Returns (trajectories, number of unresolved actions)."""
  missing = 0
  out = []
  for t in trajectories:
    msgs = []
    for m in t.messages:
      if m.role == "assistant" and m.action is not None:
        new = target.get_id(*source[m.action].key)
        missing += new is None
        m = dataclasses.replace(m, action=new)
      msgs.append(m)
    tools = tuple(i for i in (target.get_id(*source[x].key) for x in t.tools) if i is not None)
    out.append(dataclasses.replace(t, messages=tuple(msgs), tools=tools))
  return out, missing


def evaluate(policy: Policy, trajectories: Sequence[Trajectory], corpus: ToolCorpus, *, setting: str = "gt_tools",
             k: int = 5, think: bool = False, arguments: bool = True, batch_size: int = 8, log=None) -> dict:
  """Replays every assistant step. `think=False` teacher-forces the gold thought (ToolBench's are mostly empty);
  True asks the policy for its own. Steps are decided `batch_size` at a time through the policy's batched calls
  (`think_batch`, `choose_tool_batch`, `arguments_batch`: one prefill and one constrained search per batch for a
  model policy, its arguments filled in lockstep, each prompt continuing the previous one's KV cache), so the
  figures are those of one step at a time, computed together. A batch holds the next step of `batch_size`
  trajectories (`_lockstep_batches`), so each step continues from its trajectory's previous step's cache.
  Returns {'overall': ..., 'by_group': {...}, 'skipped_unresolved': n}."""
  if setting not in ("gt_tools", "all"):
    raise ValueError(f"setting must be gt_tools|all, got {setting!r}")
  per_traj = []  # per trajectory: its steps (trajectory, step index, gold message, history, candidates)
  skipped = 0
  for traj in trajectories:
    candidates = list(traj.tools) if setting == "gt_tools" else None
    messages, n = fmt.known_steps(traj.messages)  # the history training saw: unknown-action steps left out
    skipped += n
    per_traj.append([(traj, i, m, messages[:i], candidates) for i, m in enumerate(messages)
                     if m.role == "assistant"])
  totals: dict[str, _Counts] = defaultdict(_Counts)
  for batch in _lockstep_batches(per_traj, max(batch_size, 1)):
    thoughts = (policy.think_batch([h for _, _, _, h, _ in batch]) if think
                else [m.thought or "" for _, _, m, _, _ in batch])
    rankings = policy.choose_tool_batch([(h, t, c, True) for (_, _, _, h, c), t in zip(batch, thoughts)], k=k)
    calls = [j for j, (_, _, m, _, _) in enumerate(batch) if arguments and m.action is not None]
    texts = dict(zip(calls, policy.arguments_batch([(batch[j][3], thoughts[j], corpus[batch[j][2].action])
                                                    for j in calls]) if calls else []))
    for j, ((traj, i, m, history, candidates), thought, ranked) in enumerate(zip(batch, thoughts, rankings)):
      _score_step(totals, corpus, traj, i, m, ranked, candidates, k, texts.get(j), log)
  return {"setting": setting, "k": k, "overall": totals["overall"].summary(),
          "by_group": {g: c.summary() for g, c in sorted(totals.items()) if g != "overall"},
          "skipped_unresolved": skipped, "trajectories": len(trajectories)}


def _history_chars(history: Sequence[Message]) -> int:
  """A history's length in characters (what its prefill costs, up to the tokenizer's ratio)."""
  return sum(len(x) for m in history for x in (m.content, m.thought, m.action_name, m.action_input) if x)


def _lockstep_batches(per_traj: Sequence[list], batch_size: int) -> Iterable[list]:
  """Batches holding the next step of up to `batch_size` trajectories at once, as concurrent agents would send
  them (continuous batching: a trajectory that ends gives its row to the next one, shortest first).

  A step's prompt is the one before it plus the gold action, its observation and the next turn, so a row whose
  previous step was in the batch before continues from that step's KV cache (a model policy's `reuse_cache`):
  each step feeds only what its history grew by, where one step at a time re-feeds the whole history (ToolBench
  histories reach thousands of tokens, and prefill is what a step costs on CPU). Shortest first keeps a batch's
  prompts of similar lengths (each is padded to the batch's longest). With batch_size 1, trajectory order."""
  order = list(per_traj)
  if batch_size > 1:
    order.sort(key=lambda steps: _history_chars(steps[-1][3]) if steps else 0)
  pending = iter([s for s in order if s])
  active: list[list] = []  # the steps each row has left
  while True:
    active = [a for a in active if a]
    while len(active) < batch_size and (nxt := next(pending, None)) is not None:
      active.append(list(nxt))
    if not active:
      return
    yield [a.pop(0) for a in active]


def _score_step(totals, corpus, traj, i, m, ranked, candidates, k, text, log):
  is_finish = m.action is None
  allowed = None if candidates is None else set(candidates)
  top = ranked[0].tool if ranked else -1
  for c in (totals["overall"], totals[_group(traj)]):
    c.steps += 1
    c.correct += top == m.action
    c.in_top_k += any(r.tool == m.action for r in ranked[:k])
    c.refused += top is not None and (top < 0 or top >= len(corpus) or (allowed is not None and top not in allowed))
    if is_finish:
      c.finish_steps += 1
      c.finish_correct += top is None
    else:
      c.call_steps += 1
      c.call_correct += top == m.action
  if log is not None:
    log(f"{traj.id} step {i}: gold {'Finish' if is_finish else m.action} top {top}")
  if text is not None:
    tool = corpus[m.action]
    got, gold = _canonical(text, tool.parameters), _canonical(m.action_input, tool.parameters)
    for c in (totals["overall"], totals[_group(traj)]):
      c.args_steps += 1
      c.args_valid += got is not None
      c.args_exact += got is not None and got == gold
      c.gold_args_valid += gold is not None


def trained_trajectory_ids(workdir) -> set[str]:
  """Ids of the trajectories a workdir's `trajectory` stage trained on (`training.stages.training_trajectories` over its
  saved dataset and config); empty when it ran no trajectory stage."""
  import pathlib

  from toolgen_jax import artifact, data
  from toolgen_jax.training import stages
  config = artifact.load_config(workdir)
  if "trajectory" not in config.train.stages:
    return set()
  return {t.id for t in stages.training_trajectories(config, data.load_dataset(pathlib.Path(workdir) / "dataset"))}


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description="Per-step tool accuracy / argument validity on ToolBench trajectories.")
  ap.add_argument("--data", required=True, help="ToolBench data folder (e.g. ../shared/data/ToolBench/data_example)")
  ap.add_argument("--workdir", default="lexical", help="a trained workdir, or 'lexical' for the model-free baseline")
  ap.add_argument("--setting", default="gt_tools", choices=("gt_tools", "all"))
  ap.add_argument("--k", type=int, default=5)
  ap.add_argument("--arguments", action=argparse.BooleanOptionalAction, default=True,
                  help="also score the Action Input for the gold tool (the same for both settings)")
  ap.add_argument("--pad_multiple", type=int, default=128,
                  help="trained workdir: prompts are left-padded to a multiple of this (fewer compiled shapes)")
  ap.add_argument("--batch_size", type=int, default=8,
                  help="trajectories replayed together: a batch holds the next step of each (one prefill and search)")
  ap.add_argument("--reuse_cache", action=argparse.BooleanOptionalAction, default=True,
                  help="trained workdir: continue each step's prompts from the KV cache of the one before "
                       "(--no-reuse_cache --batch_size=1 is the one-step-at-a-time, re-prefilling path it replaced)")
  ap.add_argument("--groups", default="", help="comma-separated trajectory groups to score (e.g. I3); '' = all")
  ap.add_argument("--subset", default="all", choices=("all", "trained", "heldout"),
                  help="with a trained workdir: only the trajectories its trajectory stage trained on (training-set "
                       "fit) or only the others (held out by query split or data.trajectory_holdout_groups)")
  a = ap.parse_args(argv)
  from toolgen_jax.data.readers import load_source
  ds = load_source("toolbench", a.data, log=False)
  trajs, corpus = ds.trajectories, ds.corpus
  groups = {g.strip() for g in a.groups.split(",") if g.strip()}
  if groups:
    trajs = [t for t in trajs if _group(t) in groups]
  if a.subset != "all":
    if a.workdir == "lexical":
      raise SystemExit("--subset needs a trained workdir (the lexical baseline trains on nothing)")
    trained = trained_trajectory_ids(a.workdir)
    trajs = [t for t in trajs if (t.id in trained) == (a.subset == "trained")]
  if not trajs:
    raise SystemExit(f"no trajectory left to score (groups={sorted(groups)}, subset={a.subset})")
  if a.workdir == "lexical":
    from toolgen_jax.agent.policy import LexicalPolicy
    policy, name, unresolved = LexicalPolicy(corpus, max_calls=100), "lexical", 0
  else:
    from toolgen_jax.agent.loader import load_backend
    backend = load_backend(a.workdir, pad_multiple=a.pad_multiple, reuse_cache=a.reuse_cache)
    trajs, unresolved = remap(trajs, corpus, backend.corpus)
    policy, corpus, name = backend.policy, backend.corpus, backend.name
  t0 = time.perf_counter()
  out = evaluate(policy, trajs, corpus, setting=a.setting, k=a.k, arguments=a.arguments, batch_size=a.batch_size,
                 log=lambda s: print(f"[{time.perf_counter() - t0:.0f}s] {s}", file=sys.stderr, flush=True))
  out["seconds"] = round(time.perf_counter() - t0, 1)
  out |= {"policy": name, "data": a.data, "actions_unknown_to_model": unresolved, "groups": sorted(groups),
          "subset": a.subset, "batch_size": a.batch_size, "reuse_cache": a.reuse_cache}
  o = out["overall"]
  scope = a.subset + (" " + ",".join(sorted(groups)) if groups else "")
  print(f"{name} [{a.setting}, {scope}] {o['steps']} steps: tool acc {o['tool_accuracy']}, recall@{a.k} "
        f"{o['recall_at_k']}, "
        f"argument validity {o['argument_validity']} (gold {o['gold_argument_validity']})", file=sys.stderr)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
