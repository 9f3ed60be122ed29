"""One place that turns `--workdir` into a `Backend`: "demo" (model-free) or a trained workdir (the model).

It sits above both `backend` (the model-free parts) and `model_policy` (the JAX model as a policy), which know
nothing of each other; JAX is imported only when a trained workdir is loaded.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

from toolgen_jax.agent.backend import Backend, demo_backend
from toolgen_jax.data.records import Tool


def load_backend(workdir: str | pathlib.Path, *, tool_cache_size: int = 256, **policy_kw) -> Backend:
  """"demo" -> `demo_backend()`; a trained workdir -> `load_model_backend` (params, tokenizer, codebook, trie);
  `policy_kw` go to its `ModelPolicy` (e.g. pad_multiple)."""
  if str(workdir) == "demo":
    return demo_backend(tool_cache_size=tool_cache_size)
  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"--workdir={workdir}: no such directory (use --workdir=demo for the model-free demo)")
  return load_model_backend(path, tool_cache_size=tool_cache_size, **policy_kw)


def load_model_backend(workdir: pathlib.Path, *, tool_cache_size: int = 256, **policy_kw) -> Backend:
  """The backend of a trained workdir (`artifact.load_trained`): its model, tokenizer, codebook, trie and corpus.

  Finish: a codebook `finish_id` row (agent-tuned models) is the Finish action; without one the model was not
  trained to finish, so episodes run to the step limit and the server always answers with a tool call. Unknown
  request tools are coded by `Trained.add_tools` (frozen encoder + quantiser) and join the trie; when the backend's
  tool cache evicts one, it leaves the trie and the codebook's active set (its corpus and codebook rows stay, as
  both are append-only: a few hundred bytes per evicted tool).
  """
  from toolgen_jax import artifact, prompts  # JAX and the model only when a trained workdir is used
  from toolgen_jax.agent import model_policy
  trained = artifact.load_trained(workdir)
  c, cb, m = trained.config, trained.codebook, trained.model
  trie = artifact.build_trie(c, cb, m.tokenizer, finish=True)  # tools keep corpus ids; Finish one past them
  finish_id = artifact.agent_finish_id(cb)
  corpus = trained.dataset.corpus
  kw = dict(beam_size=int(c.decode.beam_size), normalize=str(c.decode.normalize)) | (
      dict(think_max_tokens=int(c.agent.think_max_tokens), arguments_max_tokens=int(c.agent.arguments_max_tokens),
           constrained_arguments=bool(c.agent.constrained_arguments),
           draft_tokens=int(c.agent.get("draft_tokens", 1)),
           draft_memory=int(c.agent.get("draft_memory", 1024))) if "agent" in c else {}) | policy_kw
  eot = prompts.end_of_turn_id(m.tokenizer)
  policy = model_policy.ModelPolicy(m.params, m.config, model_policy.HFCodec(m.tokenizer, eos_id=eot), trie, corpus,
                                    finish_id=finish_id, **kw)

  def refresh():
    mm = trained.model  # `Trained.add_tools` may extend the vocabulary: refresh the model side
    policy.params, policy.config = mm.params, mm.config
    policy.codec = model_policy.HFCodec(mm.tokenizer, eos_id=eot)
    policy.set_trie(artifact.build_trie(c, cb, mm.tokenizer, finish=True), artifact.agent_finish_id(cb))

  def add_tools(tools: Sequence[Tool]) -> list[int]:
    if len(corpus) != cb.num_tools - (cb.finish_id is not None):
      raise RuntimeError(f"corpus ({len(corpus)}) and codebook ({cb.num_tools}) ids diverge; cannot add tools")
    report = trained.add_tools(tools)
    ids = [corpus.add(t) for t in tools]
    rows = cb.corpus_ids(report.ids).tolist()
    if rows != ids:
      raise RuntimeError(f"codebook ids {rows} != corpus ids {ids}")
    refresh()
    return ids

  def remove_tools(ids: Sequence[int]) -> None:
    fin = cb.finish_id  # the inverse of `Codebook.corpus_ids`: rows after Finish are one past their corpus id
    cb.remove_tools([int(i) + (fin is not None and i >= fin) for i in ids])
    refresh()

  return Backend(policy, corpus, None, name=f"toolgen-{c.codebook.method}", add_tools=add_tools,
                 remove_tools=remove_tools, tool_cache_size=tool_cache_size)
