"""Orbax checkpoints of the train state, with the codebook, tokenizer and resolved config saved alongside.

Layout under `directory` (one per stage, e.g. WORKDIR/checkpoints/retrieval):
  latest/<step>/{state, extras}   periodic + final saves, the newest `keep` kept (resume reads these)
  best/<step>/{state, extras}     one copy of the best state by `best_metric` (when configured)
`extras` is one JSON item: {'config': resolved config, 'codebook': ..., 'tokenizer': tokenizer.json text, ...}, so
every checkpoint can be evaluated on its own (the codebook changes across Toolscaler refinement rounds).

Saves are asynchronous (orbax writes in a background thread; the next save or `close()` waits). A step directory
appears only once fully written, so a run killed mid-save resumes from the previous complete step (a leftover
`*.orbax-checkpoint-tmp-*` folder is not a step). A complete step that cannot be read back (a truncated data file,
deleted metadata, a missing item) is skipped on resume with a warning naming the step and why: the run resumes from
the newest readable step instead of stopping on an orbax error.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp


_LOG = logging.getLogger(__name__)
_ITEMS = ("state", "extras")


class UnreadableCheckpointError(RuntimeError):
  """Every kept step failed to restore; the message names each step and why."""


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


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0][:300] if text else ""


class Checkpointer:
  """Periodic/final saves (keep-N), an optional best-by-metric copy, and restore onto given shardings."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 2, save_every: int = 0,
               best_metric: str = "", best_mode: str = "max", async_save: bool = True):
    if best_mode not in ("max", "min"):
      raise ValueError(f"config.train.best_mode must be max | min, got {best_mode!r}")
    self.directory = pathlib.Path(directory).absolute()
    self.skipped: list[tuple[int, str]] = []  # (step, why) of every step skipped as unreadable
    self.restored_step: int | None = None
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
    """The newest step in latest/ whose items are all present (a step missing one is skipped, with a warning)."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      missing = [i for i in _ITEMS if not (self.latest.directory / str(step) / i).is_dir()]
      if not missing:
        return int(step)
      self._skip(step, self.latest.directory, f"item(s) {missing} missing")
    return None

  def _skip(self, step: int, directory: Any, why: str) -> None:
    if (int(step), why) not in self.skipped:  # said once, however often latest_step() is asked
      self.skipped.append((int(step), why))
      _LOG.warning("skipping checkpoint step %d under %s: %s", int(step), directory, why)

  def best_step(self) -> int | None:
    return None if self.best is None else self.best.best_step()

  def restore(self, abstract_state: Any, step: int | None = None, *, best: bool = False) -> tuple[Any, dict]:
    """(state, extras) of `step` (default: the latest, or the best with best=True).

    abstract_state: a pytree of jax.ShapeDtypeStruct with `.sharding` (e.g. `sharding.abstract_with_shardings`), so
    each host reads only its shards straight onto the target devices.

    Resuming (no step, or the newest step, in latest/): a step that fails to restore is skipped with a warning
    (`skipped` lists (step, why)) and the next older kept step is tried; `restored_step` says which one was read.
    An older step asked for by number, or the best copy, is read as asked or raises.
    """
    mgr = self.best if best else self.latest
    if mgr is None:
      raise ValueError("no best-checkpoint manager: config.train.best_metric is empty")
    newest = self.latest_step() if not best else mgr.best_step()
    if step is None:
      step = newest
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {mgr.directory}")
    candidates = [int(step)]
    if not best and int(step) == newest:
      candidates += sorted((int(s) for s in mgr.all_steps() if s < step), reverse=True)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), extras=ocp.args.JsonRestore())
    reasons = []
    for s in candidates:
      try:
        out = mgr.restore(s, args=args)
      except Exception as e:  # orbax/tensorstore/JSON errors differ by what broke; all mean "not this step"
        if len(candidates) == 1:
          raise UnreadableCheckpointError(f"checkpoint step {s} under {mgr.directory} cannot be read: "
                                          f"{type(e).__name__}: {_first_line(e)}") from e
        why = f"{type(e).__name__}: {_first_line(e)}"
        reasons.append(f"step {s}: {why}")
        self._skip(s, mgr.directory, why)
        continue
      self.restored_step = s
      return out["state"], dict(out["extras"] or {})
    raise UnreadableCheckpointError(f"no readable checkpoint under {mgr.directory}: " + "; ".join(reasons))

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    if self.best is not None:
      self.best.close()
