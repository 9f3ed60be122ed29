"""Evaluators built from the config and handed to the training loop (as big_vision's `evaluators/common.py`).

`training.train.fit` knows nothing of retrieval: every `train.eval_every` steps it calls the `eval_fn(state)` it was
given and offers the returned metrics to the best-by-`train.best_metric` checkpoint. This module builds that
function: dev-split NDCG@k / Recall@k of the current params through trie-constrained beam search
(`decoding.generative.GenerativeRetriever` + `harness.evaluate`), all dev queries pooled.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from toolgen_jax.data.records import Query
from toolgen_jax.decoding.generative import GenerativeRetriever
from toolgen_jax.evaluation import harness

DEV_SPLIT = "dev"
EvalFn = Callable[[Any], dict]


def ndcg_eval_fn(model_config: Any, tokenizer: Any, trie: Any, queries: Sequence[Query], *, ks=(1, 3, 5),
                 setting: str = "multi-domain", beam_size: int = 5, batch_size: int = 8,
                 system_prompt: str | None = None, normalize: str = "full") -> EvalFn:
  """state (anything with `.params`) -> {'ndcg@k', 'recall@k'} over `queries`, decoded under `trie`."""

  def fn(state) -> dict:
    retriever = GenerativeRetriever(params=state.params, model_config=model_config, tokenizer=tokenizer, trie=trie,
                                    beam_size=max(beam_size, max(ks)), batch_size=batch_size, progress=False,
                                    system_prompt=system_prompt, normalize=normalize)
    res = harness.evaluate(retriever, queries, ks=ks, settings=(setting,))
    cell = res[setting][harness.ALL][harness.ALL]
    return {k: float(v) for k, v in cell.items() if k.startswith(("ndcg@", "recall@"))}

  return fn


def dev_queries(dataset: Any) -> list[Query]:
  return [q for q in dataset.queries if q.split == DEV_SPLIT]


def from_config(config: Any, dataset: Any, trie_fn: Callable[[Any, Any], Any]
                ) -> Callable[[Any, Any], EvalFn] | None:
  """The evaluator factory `training.stages.run_stages` calls per stage with the current (codebook, model):
  None when `train.eval_every` is 0. `trie_fn(codebook, tokenizer)` builds the decoding trie. Raises when
  evaluation is asked for but the dataset has no dev queries (`data.dev_fraction` > 0 makes them)."""
  if int(config.train.eval_every) <= 0:
    return None
  dev = dev_queries(dataset)
  if not dev:
    raise ValueError(f"config.train.eval_every={config.train.eval_every} scores the '{DEV_SPLIT}' split, but the "
                     "dataset has no dev queries: set config.data.dev_fraction > 0 (or eval_every=0)")
  if int(config.eval.max_queries) > 0:
    dev = dev[:int(config.eval.max_queries)]
  ks = tuple(int(k) for k in config.eval.ks)

  def make(codebook, model) -> EvalFn:
    return ndcg_eval_fn(model.config, model.tokenizer, trie_fn(codebook, model.tokenizer), dev, ks=ks,
                        beam_size=int(config.decode.beam_size), batch_size=int(config.eval.batch_size),
                        system_prompt=config.train.get("system_prompt"), normalize=config.decode.normalize)

  return make
