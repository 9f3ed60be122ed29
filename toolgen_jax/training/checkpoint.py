"""Orbax checkpoints of the train state, with the codebook, tokenizer and resolved config saved alongside.

Layout under `directory` (one per stage, e.g. WORKDIR/checkpoints/retrieval):
  latest/<step>/{state, extras}   periodic + final saves, the newest `keep` kept (resume reads these)
  best/<step>/{state, extras}     one copy of the best state by `best_metric` (when configured)
`extras` is one JSON item: {'config': resolved config, 'codebook': ..., 'tokenizer': tokenizer.json text, ...}, so
every checkpoint can be evaluated on its own (the codebook changes across Toolscaler refinement rounds).

Saves are asynchronous (orbax writes in a background thread; the next save or `close()` waits). A step directory
appears only once fully written, so a run killed mid-save resumes from the previous complete step.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  return x


def tokenizer_json(tokenizer: Any) -> str | None:
  """tokenizer.json text of a HF fast tokenizer (or our wrapper around one); None when not available."""
  for obj in (getattr(tokenizer, "hf", None), tokenizer, getattr(tokenizer, "tokenizer", None),
              getattr(tokenizer, "tok", None)):
    if obj is None:
      continue
    backend = getattr(obj, "backend_tokenizer", obj)
    to_str = getattr(backend, "to_str", None)
    if callable(to_str):
      return to_str()
  return None


def codebook_json(codebook: Any) -> Any:
  """A JSON view of a codebook: a mapping id -> token strings, or an object's `codes` array (+ its metadata)."""
  if codebook is None:
    return None
  if isinstance(codebook, Mapping):
    return {str(k): list(v) for k, v in codebook.items()}
  to_json = getattr(codebook, "to_json", None)
  if callable(to_json):
    return _jsonable(to_json())
  return {"codes": np.asarray(codebook.codes).tolist()}


class Checkpointer:
  """Periodic/final saves (keep-N), an optional best-by-metric copy, and restore onto given shardings."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 2, save_every: int = 0,
               best_metric: str = "", best_mode: str = "max", async_save: bool = True):
    if best_mode not in ("max", "min"):
      raise ValueError(f"config.train.best_mode must be max | min, got {best_mode!r}")
    self.directory = pathlib.Path(directory).absolute()
    self.save_every, self.best_metric = int(save_every), best_metric
    opts = dict(enable_async_checkpointing=async_save, create=True)
    self.latest = ocp.CheckpointManager(self.directory / "latest", item_names=("state", "extras"),
                                        options=ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), **opts))
    self.best = None
    if best_metric:
      self.best = ocp.CheckpointManager(
          self.directory / "best", item_names=("state", "extras"),
          options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: float(m[best_metric]),
                                               best_mode=best_mode, keep_checkpoints_without_metrics=False, **opts))

  # -- save ------------------------------------------------------------------------------------------------------

  def should_save(self, step: int, last_step: int) -> bool:
    return step == last_step or (self.save_every > 0 and step % self.save_every == 0)

  def save(self, step: int, state: Any, extras: Mapping[str, Any] | None = None) -> None:
    """Saves `state` (any pytree of arrays, sharded or not) at `step` in latest/ (async)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), extras=ocp.args.JsonSave(_jsonable(extras or {})))
    self.latest.save(int(step), args=args, force=True)

  def save_best(self, step: int, state: Any, metrics: Mapping[str, float],
                extras: Mapping[str, Any] | None = None) -> None:
    """Offers `state` to best/ with its eval metrics; orbax keeps it only if it beats the stored one."""
    if self.best is None:
      return
    if self.best_metric not in metrics:
      raise KeyError(f"config.train.best_metric={self.best_metric!r} is not among the eval metrics {sorted(metrics)}")
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), extras=ocp.args.JsonSave(_jsonable(extras or {})))
    self.best.save(int(step), args=args, metrics={k: float(v) for k, v in metrics.items()}, force=True)

  # -- restore -----------------------------------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return None if self.best is None else self.best.best_step()

  def restore(self, abstract_state: Any, step: int | None = None, *, best: bool = False) -> tuple[Any, dict]:
    """(state, extras) of `step` (default: the latest, or the best with best=True).

    abstract_state: a pytree of jax.ShapeDtypeStruct with `.sharding` (e.g. `sharding.abstract_with_shardings`), so
    each host reads only its shards straight onto the target devices.
    """
    mgr = self.best if best else self.latest
    if mgr is None:
      raise ValueError("no best-checkpoint manager: config.train.best_metric is empty")
    if step is None:
      step = mgr.best_step() if best else mgr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {mgr.directory}")
    out = mgr.restore(int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                         extras=ocp.args.JsonRestore()))
    return out["state"], dict(out["extras"] or {})

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    if self.best is not None:
      self.best.close()
