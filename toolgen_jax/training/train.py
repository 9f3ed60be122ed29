"""Sharded train / eval steps (jit with explicit in/out NamedShardings, the pjit way) and the training loop.

Loss: next-token cross-entropy averaged over target tokens only (weights = loss mask), exactly as the papers'
HF-Trainer runs with labels = -100 outside assistant/target spans. With gradient accumulation the step scans over
microbatches, summing per-token losses and gradients and dividing once by the total target count, so accumulation
changes memory, not the result. `loss_chunk` computes the LM head and cross-entropy over sequence chunks under
`jax.checkpoint`, so the [B, T, V] float32 logits (8.4 GB per 8 x 2048 rows of Llama-3) never exist at once.

NaN guard: a step whose loss or gradient norm is not finite applies no update (`lax.cond`) and records its index in
`state.nonfinite_step`; the loop checks it before every checkpoint and log line and stops with `NonFiniteError`
naming the step, so the last saved checkpoint is the last good one.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
import time
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from toolgen_jax.models import llama
from toolgen_jax.training import optimizer as opt_lib
from toolgen_jax.training import sharding as shd

BATCH_KEYS = ("tokens", "targets", "weights", "attention_mask")


class NonFiniteError(FloatingPointError):
  """Loss or gradients became NaN/inf; the message names the step. No checkpoint of that state was written."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array             # [] int32: optimizer steps taken (= the input pipeline position)
  params: Any
  opt_state: Any
  nonfinite_step: jax.Array   # [] int32: first step whose loss/grads were not finite, -1 if none


def init_train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    nonfinite_step=jnp.full((), -1, jnp.int32))


# ---- loss ----------------------------------------------------------------------------------------------------

def _ce_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of weighted CE, number of correct argmax predictions on weighted positions); logits float32."""
  nll = llama.softmax_cross_entropy(logits, targets)  # logsumexp - target logit, closed-form backward
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(correct * weights)


def target_gather(weights: jax.Array, m: int) -> jax.Array:
  """[B, m] indices of each row's first m target positions (weight > 0) in order, padded by non-target ones."""
  T = weights.shape[1]
  key = jnp.where(weights > 0, 0, T) + jnp.arange(T)[None, :]
  return jnp.argsort(key, axis=1)[:, :m]


def loss_sums(params: Any, config: llama.LlamaConfig, batch: Mapping[str, jax.Array], *, loss_chunk: int = 0,
              dropout_rng: jax.Array | None = None, frozen_layers: int = 0, target_positions: int = 0
              ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Sum over target tokens of -log p(target), plus (target-token count, correct count).

  batch: tokens/targets [B, T] int32, weights [B, T] float32 (1 on target tokens), attention_mask [B, T].
  frozen_layers: no gradient below this layer (see `llama.hidden_states`).
  target_positions = m > 0: the LM head and cross-entropy run on each row's first m target positions only
    ([B, m, V] logits instead of [B, T, V]); the caller guarantees no row has more (`fit` checks every batch).
  """
  x, _ = llama.hidden_states(params, config, batch["tokens"], attention_mask=batch["attention_mask"],
                             positions=batch.get("positions"), dropout_rng=dropout_rng, frozen_layers=frozen_layers)
  weights = batch["weights"].astype(jnp.float32)
  targets = batch["targets"]
  if target_positions and target_positions < x.shape[1]:
    idx = target_gather(weights, target_positions)
    x = jnp.take_along_axis(x, idx[..., None], axis=1)
    weights = jnp.take_along_axis(weights, idx, axis=1)
    targets = jnp.take_along_axis(targets, idx, axis=1)
  T = x.shape[1]
  if not loss_chunk or loss_chunk >= T:
    logits = llama.logits_from_hidden(params, config, x)
    logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
    ce, correct = _ce_sums(logits, targets, weights)
  else:
    if T % loss_chunk:
      raise ValueError(f"config.train.loss_chunk={loss_chunk} must divide seq_len={T}")
    n = T // loss_chunk

    def split(a):  # [B, T, ...] -> [n, B, C, ...]
      return jnp.moveaxis(a.reshape(a.shape[0], n, loss_chunk, *a.shape[2:]), 1, 0)

    @jax.checkpoint
    def chunk(carry, xs):
      xc, tc, wc = xs
      logits = llama.logits_from_hidden(params, config, xc)
      logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
      ce, correct = _ce_sums(logits, tc, wc)
      return (carry[0] + ce, carry[1] + correct), None

    (ce, correct), _ = jax.lax.scan(chunk, (jnp.zeros(()), jnp.zeros(())),
                                    (split(x), split(targets), split(weights)))
  return ce, (jnp.sum(weights), correct)


# ---- steps ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static knobs of a compiled step."""
  grad_accum: int = 1
  loss_chunk: int = 0
  frozen_layers: int = 0
  target_positions: int = 0

  def loss_kw(self) -> dict:
    return dict(loss_chunk=self.loss_chunk, frozen_layers=self.frozen_layers, target_positions=self.target_positions)


def step_config_from(train_config: Mapping[str, Any]) -> StepConfig:
  return StepConfig(grad_accum=int(train_config.get("grad_accum", 1)), loss_chunk=int(train_config.get("loss_chunk", 0)),
                    frozen_layers=int(train_config.get("frozen_layers", 0)),
                    target_positions=int(train_config.get("target_positions", 0)))


def _microbatches(batch: Mapping[str, jax.Array], k: int) -> dict:
  """[B, ...] -> [k, B/k, ...] taking rows with stride k, so each microbatch keeps rows from every data shard."""
  def split(a):
    B = a.shape[0]
    if B % k:
      raise ValueError(f"batch size {B} is not divisible by config.train.grad_accum={k}")
    return jnp.swapaxes(a.reshape(B // k, k, *a.shape[1:]), 0, 1)
  return {key: split(v) for key, v in batch.items()}


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *,
               config: llama.LlamaConfig, tx: optax.GradientTransformation, schedule: Callable,
               step_config: StepConfig, grad_mask: Any = None, logical_axes: Any = None,
               param_shardings: Any = None) -> tuple[TrainState, dict]:
  """One optimizer step: (accumulated) gradients of mean target-token CE, clipped AdamW update, NaN guard."""
  sc = step_config
  use_dropout = config.lora_rank > 0 and config.lora_dropout > 0
  step_rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(
      lambda p, b, r: loss_sums(p, config, b, dropout_rng=r if use_dropout else None, **sc.loss_kw()),
      has_aux=True)

  def constrain(tree):
    if param_shardings is None:
      return tree
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, param_shardings)

  if sc.grad_accum == 1:
    (ce, (count, correct)), grads = grad_fn(state.params, batch, step_rng)
  else:
    mbs = _microbatches(batch, sc.grad_accum)

    def body(carry, xs):
      g_acc, ce_acc, n_acc, c_acc = carry
      mb, i = xs
      (ce, (n, c)), g = grad_fn(state.params, mb, jax.random.fold_in(step_rng, i))
      return (constrain(jax.tree.map(jnp.add, g_acc, g)), ce_acc + ce, n_acc + n, c_acc + c), None

    zeros = constrain(jax.tree.map(jnp.zeros_like, state.params))
    (grads, ce, count, correct), _ = jax.lax.scan(
        body, (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(())), (mbs, jnp.arange(sc.grad_accum)))
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  if grad_mask is not None:
    grads = opt_lib.apply_mask(grads, grad_mask, logical_axes)
  loss = ce / denom
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def apply(s):
    updates, opt_state = tx.update(grads, s.opt_state, s.params)
    return s.replace(params=optax.apply_updates(s.params, updates), opt_state=opt_state)

  def skip(s):
    return s.replace(nonfinite_step=jnp.where(s.nonfinite_step < 0, s.step, s.nonfinite_step))

  new_state = jax.lax.cond(finite, apply, skip, state)
  new_state = new_state.replace(step=state.step + 1)
  metrics = {"loss": loss, "accuracy": correct / denom, "grad_norm": grad_norm, "lr": schedule(state.step),
             "target_tokens": count, "finite": finite}
  return new_state, metrics


def eval_step(params: Any, batch: Mapping[str, jax.Array], *, config: llama.LlamaConfig,
              step_config: StepConfig) -> dict:
  """Sums (not means) so that the loop can average exactly over a whole dev set."""
  ce, (count, correct) = loss_sums(params, config, batch, **step_config.loss_kw())
  return {"ce_sum": ce, "target_tokens": count, "correct": correct}


# ---- shardings + compilation ---------------------------------------------------------------------------------

def _path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def opt_state_shardings(opt_state: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Optimizer-state leaves that mirror a parameter (Adam mu/nu) get its sharding; the rest are replicated.

  Matching is by the longest parameter path that is a suffix of the state leaf's path, with equal shapes.
  """
  table = {}
  for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings)):
    table[_path_names(path)] = (tuple(np.shape(x)), s)
  replicated = NamedSharding(mesh, P())

  def pick(path, x):
    names = _path_names(path)
    for k in range(len(names)):
      hit = table.get(names[k:])
      if hit is not None and hit[0] == tuple(np.shape(x)):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, opt_state)


@dataclasses.dataclass
class CompiledSteps:
  """What `build_steps` returns: jitted callables (they enter the activation-rule context themselves)."""
  train: Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]
  eval: Callable[[Any, dict], dict]
  init: Callable[[Any], TrainState]
  state_shardings: TrainState
  batch_shardings: dict
  tx: optax.GradientTransformation
  schedule: Callable
  train_jit: Any = None  # the raw jax.jit objects, for .lower() (AOT)
  eval_jit: Any = None
  mesh: Mesh | None = None
  rules: tuple = ()

  def lower_train(self, state, batch, rng):
    with shd.activation_rules(self.mesh, self.rules):
      return self.train_jit.lower(state, batch, rng)


def build_steps(config: llama.LlamaConfig, train_config: Mapping[str, Any], mesh: Mesh, rules: shd.Rules, *,
                total_steps: int, new_token_start: int | None = None, donate: bool = True) -> CompiledSteps:
  """Optimizer, shardings and jitted train/eval/init functions for one stage.

  Parameters and optimizer state are sharded by `config.mesh.logical_axis_rules` (FSDP over 'embed' by default);
  batches over ('data', 'fsdp'). All three functions are compiled with explicit in/out shardings.
  """
  rules = shd.rules_from_config(rules)
  logical_axes = llama.param_logical_axes(config)
  shapes = llama.param_shapes(config)
  tx, schedule = opt_lib.make_optimizer(train_config, shapes, logical_axes, total_steps,
                                        new_token_start=new_token_start)
  grad_mask = None
  if train_config.get("trainable", "all") != "all":
    grad_mask = opt_lib.trainable_mask(shapes, logical_axes, train_config["trainable"], new_token_start)
  param_shardings = shd.tree_shardings(logical_axes, shapes, mesh, rules)
  abstract_state = jax.eval_shape(lambda p: init_train_state(p, tx), shapes)
  replicated = NamedSharding(mesh, P())
  state_shardings = TrainState(step=replicated, params=param_shardings,
                               opt_state=opt_state_shardings(abstract_state.opt_state, shapes, param_shardings, mesh),
                               nonfinite_step=replicated)
  batch_shardings = {k: shd.batch_sharding(mesh, rules) for k in BATCH_KEYS}
  sc = step_config_from(train_config)
  if sc.grad_accum < 1:
    raise ValueError(f"config.train.grad_accum must be >= 1, got {sc.grad_accum}")
  if not 0 <= sc.frozen_layers <= config.num_layers:
    raise ValueError(f"config.train.frozen_layers={sc.frozen_layers} outside [0, {config.num_layers}] layers")
  step = functools.partial(train_step, config=config, tx=tx, schedule=schedule, step_config=sc, grad_mask=grad_mask,
                           logical_axes=logical_axes, param_shardings=param_shardings)
  train_jit = jax.jit(step, in_shardings=(state_shardings, batch_shardings, replicated),
                      out_shardings=(state_shardings, replicated), donate_argnums=(0,) if donate else ())
  eval_jit = jax.jit(functools.partial(eval_step, config=config, step_config=sc),
                     in_shardings=(param_shardings, batch_shardings), out_shardings=replicated)
  init_jit = jax.jit(lambda p: init_train_state(p, tx), in_shardings=(param_shardings,), out_shardings=state_shardings)

  def in_rules(fn):
    @functools.wraps(fn)
    def wrapped(*a):
      with shd.activation_rules(mesh, rules):
        return fn(*a)
    return wrapped

  return CompiledSteps(train=in_rules(train_jit), eval=in_rules(eval_jit), init=in_rules(init_jit),
                       state_shardings=state_shardings, batch_shardings=batch_shardings, tx=tx, schedule=schedule,
                       train_jit=train_jit, eval_jit=eval_jit, mesh=mesh, rules=rules)


# ---- the loop ------------------------------------------------------------------------------------------------

def check_target_positions(host_batch: Mapping[str, np.ndarray], m: int, stage: str, step: int) -> None:
  """With config.train.target_positions = m, a row with more target tokens would lose some from the loss: refuse."""
  if not m:
    return
  per_row = (np.asarray(host_batch["weights"]) > 0).sum(axis=1)
  if per_row.max(initial=0) > m:
    r = int(per_row.argmax())
    raise ValueError(f"[{stage}] step {step}: batch row {r} has {int(per_row[r])} target tokens but "
                     f"config.train.target_positions={m}; raise it (or 0 = every position)")


@dataclasses.dataclass
class FitResult:
  state: TrainState
  history: list[dict]        # per-step metrics of this process's run (a resumed run starts after the checkpoint)
  resumed_from: int | None   # checkpoint step the run continued from, None for a fresh start
  eval_history: list[dict]


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(x).item() if np.ndim(x) == 0 else np.asarray(x), jax.device_get(tree))


def evaluate_loss(steps: CompiledSteps, params: Any, pipeline, mesh: Mesh, rules) -> dict:
  """Mean target-token CE and accuracy over one pass of `pipeline` (a dev set), exact over its examples."""
  n_batches = -(-len(pipeline) // pipeline.batch_size)
  tot = {"ce_sum": 0.0, "target_tokens": 0.0, "correct": 0.0}
  for b in range(n_batches):
    batch = pipeline.batch(b, drop_wrapped=True)
    out = _host(steps.eval(params, shd.host_local_batch_to_global(batch, mesh, rules)))
    for k in tot:
      tot[k] += float(out[k])
  denom = max(tot["target_tokens"], 1.0)
  return {"loss": tot["ce_sum"] / denom, "accuracy": tot["correct"] / denom}


def fit(*, model_config: llama.LlamaConfig, params: Any, train_config: Mapping[str, Any], mesh: Mesh,
        rules: shd.Rules, pipeline, workdir: str | pathlib.Path, stage: str = "train", total_steps: int | None = None,
        seed: int = 0, new_token_start: int | None = None, extras: Mapping[str, Any] | None = None,
        dev_pipeline=None, eval_fn: Callable[[TrainState], Mapping[str, float]] | None = None,
        checkpointer=None) -> FitResult:
  """Trains one stage to `total_steps` (default config.train.steps), resuming from the stage's latest checkpoint.

  Re-running the same call with the same workdir continues where a killed run stopped: the state (params, optimizer,
  step) comes from the last complete checkpoint and the input position is that step. Every `log_every` steps the
  metrics are fetched, checked for NaN/inf (-> NonFiniteError naming the step), printed, written to TensorBoard and
  to metrics_<stage>.jsonl. Every `eval_every` steps (and at the end) the dev loss and `eval_fn(state)` (e.g. dev
  NDCG through constrained decoding) are computed and offered to the best-by-metric checkpoint.
  """
  from tqdm.auto import tqdm

  from toolgen_jax.training import checkpoint as ckpt_lib
  from toolgen_jax.training import metrics as metrics_lib

  tc = train_config
  total = int(total_steps if total_steps is not None else tc["steps"])
  workdir = pathlib.Path(workdir)
  rules = shd.rules_from_config(rules)
  steps = build_steps(model_config, tc, mesh, rules, total_steps=total, new_token_start=new_token_start)
  own_ckpt = checkpointer is None
  if own_ckpt:
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints" / stage, keep=int(tc["keep_checkpoints"]),
                                         save_every=int(tc["checkpoint_every"]), best_metric=tc.get("best_metric", ""),
                                         best_mode=tc.get("best_mode", "max"),
                                         async_save=bool(tc.get("async_checkpoint", True)))
  writer = metrics_lib.MetricWriter(workdir, stage, tensorboard=bool(tc.get("tensorboard", True)))
  abstract_state = shd.abstract_with_shardings(
      jax.eval_shape(lambda p: init_train_state(p, steps.tx), llama.param_shapes(model_config)),
      steps.state_shardings)
  resumed_from = checkpointer.latest_step()
  if resumed_from is not None:
    state, _ = checkpointer.restore(abstract_state, resumed_from)
    # an unreadable newest step is skipped (and logged) by the checkpointer: report the one actually read
    resumed_from = getattr(checkpointer, "restored_step", None) or resumed_from
    writer.line(f"[{stage}] resumed from step {resumed_from} ({checkpointer.directory})")
  else:
    state = steps.init(jax.device_put(params, steps.state_shardings.params))
  start = int(jax.device_get(state.step))
  m_targets = int(tc.get("target_positions", 0))
  rng = jax.random.PRNGKey(seed)
  log_every, eval_every = max(1, int(tc["log_every"])), int(tc.get("eval_every", 0))
  history: list[dict] = []
  eval_history: list[dict] = []
  pending: list[tuple[int, dict, int, int]] = []
  t_last, tokens_since, positions_since = time.perf_counter(), 0, 0
  bar = tqdm(total=total, initial=start, desc=stage, disable=not tc.get("progress_bar", True) or
             jax.process_index() != 0, file=sys.stderr, dynamic_ncols=True)

  def flush(step_now: int) -> dict | None:
    """Fetches pending metrics, stops on the first non-finite step, logs; returns the last row."""
    nonlocal t_last, tokens_since, positions_since
    if not pending:
      return None
    rows = []
    for s, m, real, seq in pending:
      row = {"step": s, **_host(m), "real_tokens": real, "seq_len": seq}
      rows.append(row)
      if not row["finite"]:
        checkpointer.wait()
        writer.record([r for r in rows if r["finite"]])
        raise NonFiniteError(
            f"[{stage}] step {s} (input batch {s - 1}): loss={row['loss']} grad_norm={row['grad_norm']} is not "
            f"finite; the update was not applied and training stopped. Last good checkpoint: step "
            f"{checkpointer.latest_step()} under {checkpointer.directory}")
    pending.clear()
    dt = time.perf_counter() - t_last
    last = dict(rows[-1])
    last["tokens_per_s"] = positions_since / dt if dt > 0 else None
    last["real_tokens_per_s"] = tokens_since / dt if dt > 0 else None
    last["mfu"] = (metrics_lib.mfu(model_config, last["tokens_per_s"], last["seq_len"], mesh.devices.size)
                   if last["tokens_per_s"] else None)
    t_last, tokens_since, positions_since = time.perf_counter(), 0, 0
    for r in rows:
      r.pop("finite", None)
    writer.record(rows)
    history.extend(rows)
    writer.scalars(step_now, {k: last[k] for k in ("loss", "accuracy", "lr", "grad_norm", "tokens_per_s", "mfu")})
    writer.line(metrics_lib.format_line(stage, step_now, total, last), bar)
    return last

  try:
    for s in range(start, total):
      host_batch = pipeline.batch(s)
      check_target_positions(host_batch, m_targets, stage, s)
      batch = shd.host_local_batch_to_global(host_batch, mesh, rules)
      if s == start:
        t0 = time.perf_counter()
      state, m = steps.train(state, batch, rng)
      if s == start:
        jax.block_until_ready(m["loss"])
        writer.line(f"[{stage}] first step (compile + run) {time.perf_counter() - t0:.1f}s", bar)
        t_last = time.perf_counter()
      else:
        real = int(host_batch["attention_mask"].sum()) * jax.process_count()
        tokens_since += real
        positions_since += host_batch["tokens"].size * jax.process_count()
      pending.append((s + 1, m, int(host_batch["attention_mask"].sum()), host_batch["tokens"].shape[1]))
      bar.update(1)
      done = s + 1
      if done % log_every == 0 or done == total or checkpointer.should_save(done, total) or (
          eval_every and done % eval_every == 0):
        flush(done)
      if eval_every and (done % eval_every == 0 or done == total):
        ev = {}
        if dev_pipeline is not None:
          ev.update({f"dev_{k}": v for k, v in evaluate_loss(steps, state.params, dev_pipeline, mesh, rules).items()})
        if eval_fn is not None:
          ev.update(eval_fn(state))
        if ev:
          eval_history.append({"step": done, **ev})
          writer.scalars(done, ev, prefix="eval")
          writer.line(f"[{stage}] eval @ {done}: " + "  ".join(f"{k} {v:.4f}" for k, v in ev.items()), bar)
          if checkpointer.best is not None:
            checkpointer.save_best(done, state, ev, extras)
      if checkpointer.should_save(done, total):
        checkpointer.save(done, state, extras)
    flush(total)
  finally:
    bar.close()
    if own_ckpt:
      checkpointer.close()
    writer.close()
  writer.line(f"[{stage}] input: {pipeline.summary()}")
  return FitResult(state=state, history=history, resumed_from=resumed_from, eval_history=eval_history)
