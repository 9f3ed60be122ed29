"""Training examples per second: the code engine (feature cache + trainable top + code loss) vs the CPU recipe.

Same data, same model, same batch: the BFCL memorisation documents of `configs/default.py` (cut to
config.train.memorization_max_chars, chat-templated with config.train.system_prompt), SmolLM2-135M from
`weights.load_pretrained("smollm2")` with 2 x 256 code tokens appended (random rows; every tool a distinct random
code: throughput does not depend on which), batch config.train.batch_size.

  recipe   `train.build_steps` with config.train exactly as the demo trains (frozen_layers=24, target_positions=8,
           full-vocabulary loss, AdamW over the whole mask, 'bucket' padding through `InputPipeline`)
  engine   `feature_cache.build` once (layers [0, F) on every example), then `code_engine.make_step` steps from the
           cache: layers [F, 30) + final norm + the codes' own output rows, level-softmax code loss, Adam moments
           for those only. Variants F = --frozen (comma separated; 30 = code rows only). The headline is the first,
           F = 28 (top 2 layers + final norm + code rows, 7.4 M parameters); F = 24 trains as many layers as the
           recipe (its ratio is bounded by the 6 layers' forward + backward, which both do).

Steps alternate between the recipe and each engine variant (a noisy machine hurts all alike); the first step of
each padded shape compiles and is not timed. examples/s = batch / mean step seconds. The one-time cache pass is
timed on --examples documents (its compilation timed apart) and extrapolated to the whole corpus (compilation once +
seconds per example x tools) in `epoch_time_ratio` = recipe epoch / (cache pass + engine epoch), and
`epoch_time_ratio_8` for 8 epochs (ToolGen's memorisation count), where the one-time pass is amortised.

  python benchmarks/training_throughput.py                       # ~4 min on 2 cores
  python benchmarks/training_throughput.py --frozen 28,24,30 --reps 12

Last stdout line: JSON with examples/s of each, `examples_per_s_ratio` and `epoch_time_ratio` of the first variant.
"""

from __future__ import annotations

import pathlib
import sys

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.data import documents as docs_lib
from toolgen_jax.data import readers
from toolgen_jax.models import tokenizer as tok_lib
from toolgen_jax.models import vocab, weights
from toolgen_jax.training import code_engine as ce
from toolgen_jax.training import feature_cache as fc
from toolgen_jax.training import input_pipeline as ip
from toolgen_jax.training import optimizer as opt_lib
from toolgen_jax.training import sharding as shd
from toolgen_jax.training import stages
from toolgen_jax.training import train


class _Codes:
  """`stages.CodeText` over a [N, L] code array (`<T{l}_{c}>` tokens, as code_vocab spells them)."""

  def __init__(self, codes):
    self.codes = codes

  def tool_text(self, row: int) -> str:
    return "".join(f"<T{l}_{int(c)}>" for l, c in enumerate(self.codes[row]))


def _default_config():
  spec = importlib.util.spec_from_file_location("default_config", _HERE.parent / "configs" / "default.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--examples", type=int, default=256, help="documents used for timing (the cache pass included)")
  ap.add_argument("--frozen", default="28,24,30", help="engine variants: frozen bottom layers F (first = headline)")
  ap.add_argument("--reps", type=int, default=6, help="timed steps per variant")
  args = ap.parse_args()
  t_start = time.perf_counter()
  cfg = _default_config()
  tc = cfg.train
  L, K = int(cfg.codebook.levels), int(cfg.codebook.size)
  B, T = int(tc.batch_size), int(tc.seq_len)

  corpus = readers.load_source(cfg.data.source).corpus
  mc, params = weights.load_pretrained(cfg.model.checkpoint)
  tok = tok_lib.load_tokenizer(cfg.model.checkpoint)
  start = mc.vocab_size
  strings = [f"<T{l}_{k}>" for l in range(L) for k in range(K)]
  params, mc, tok = vocab.extend_vocab(params, mc, tok, strings, init="random", verbose=False)
  table = np.asarray([[tok.token_to_id(f"<T{l}_{k}>") for k in range(K)] for l in range(L)], np.int32)
  rng = np.random.default_rng(0)
  n_all = len(corpus)
  flat = rng.choice(K ** L, n_all, replace=False)
  codes = np.stack([(flat // K ** (L - 1 - l)) % K for l in range(L)], 1).astype(np.int32)
  examples = stages.memorization_examples(corpus, _Codes(codes), tok, template=docs_lib.DEFAULT_TEMPLATE,
                                          max_chars=int(tc.memorization_max_chars),
                                          system_prompt=tc.get("system_prompt"))
  sub = rng.permutation(n_all)[:args.examples]
  examples = [examples[i] for i in sub]
  print(f"{n_all} BFCL tools; timing on {len(examples)} memorisation documents, batch {B}, seq_len {T}, "
        f"vocab {mc.vocab_size} (+{L * K} code tokens)", flush=True)

  # The recipe, exactly as the demo's fit builds it.
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  rules = shd.rules_from_config(cfg.mesh.logical_axis_rules)
  pipe = ip.InputPipeline(examples, tok, batch_size=B, seq_len=T, seed=0, pad_id=tok.pad_id or 0, mode=tc.packing)
  steps = train.build_steps(mc, tc, mesh, rules, total_steps=1000, new_token_start=start, donate=True)
  state = steps.init(jax.device_put(params, steps.state_shardings.params))
  recipe = {"i": 0, "seen": set(), "times": []}
  key = jax.random.PRNGKey(0)

  def recipe_step():
    nonlocal state
    b = pipe.batch(recipe["i"])
    recipe["i"] += 1
    width = b["tokens"].shape[1]
    t = time.perf_counter()
    state, m = steps.train(state, shd.host_local_batch_to_global(b, mesh, rules), key)
    jax.block_until_ready(m["loss"])
    if width in recipe["seen"]:
      recipe["times"].append(time.perf_counter() - t)
    recipe["seen"].add(width)

  # The engine: one cache per variant, then steps from it.
  encoded = [ip.encode_example(tok, ex)[0] for ex in examples]
  cx = fc.code_examples(encoded, table, T)
  engines = {}
  for f in (int(v) for v in args.frozen.split(",") if v):
    cache = fc.build(params, mc, cx, frozen_layers=f, batch_size=32)
    part = opt_lib.Partition(new_token_start=start, frozen_layers=f, code_head=True, final_norm=f < mc.num_layers)
    trainable = opt_lib.split(params, mc, part)
    tx, _ = opt_lib.make_group_optimizer(trainable, {"rows": 2e-3, "layers": 1e-4}, 1000)
    engines[f] = {"cache": cache, "part": part, "trainable": trainable, "opt": tx.init(trainable),
                  "step": ce.make_step(mc, part, tx, mode="level", cached=True),
                  "order": ce.batch_order(len(cache), B, 10 * args.reps + 10, 0), "i": 0, "times": [],
                  "trainable_params": sum(x.size for x in jax.tree.leaves(trainable))}
    print(f"engine F={f}: cache {cache.kind} {cache.states.shape} "
          f"({fc.cache_nbytes(len(cache), T, mc.hidden_size, L, top_layers=f < mc.num_layers) / 2**20:.0f} MiB) "
          f"in {cache.seconds:.1f} s; {engines[f]['trainable_params'] / 1e6:.2f} M trainable", flush=True)
  table_j = jnp.asarray(table)

  def engine_step(e, timed=True):
    batch = e["cache"].batch(e["order"][e["i"]])
    e["i"] += 1
    t = time.perf_counter()
    e["trainable"], e["opt"], m = e["step"](e["trainable"], e["opt"], params, table_j, batch)
    jax.block_until_ready(m["loss"])
    if timed:
      e["times"].append(time.perf_counter() - t)

  for e in engines.values():
    engine_step(e, timed=False)  # compile
  while len(recipe["times"]) < args.reps or any(len(e["times"]) < args.reps for e in engines.values()):
    if len(recipe["times"]) < args.reps:
      recipe_step()
    for e in engines.values():
      if len(e["times"]) < args.reps:
        engine_step(e)

  recipe_s = statistics.mean(recipe["times"])
  recipe_eps = B / recipe_s
  out = {"benchmark": "training_throughput", "batch": B, "seq_len": T, "examples_timed": len(examples),
         "corpus_tools": n_all, "reps": args.reps,
         "recipe": {"seconds_per_step": round(recipe_s, 4), "examples_per_s": round(recipe_eps, 2),
                    "median_step_s": round(statistics.median(recipe["times"]), 4)},
         "engine": {}}
  for f, e in engines.items():
    s = statistics.mean(e["times"])
    eps = B / s
    cache = e["cache"]
    cache_per_example = (cache.seconds - cache.compile_seconds) / len(cache)
    cache_all = cache.compile_seconds + n_all * cache_per_example  # the pass over the whole corpus
    epoch_recipe = n_all / recipe_eps
    epoch_engine = cache_all + n_all / eps
    out["engine"][f"frozen-{f}"] = {
        "seconds_per_step": round(s, 4), "examples_per_s": round(eps, 2),
        "median_step_s": round(statistics.median(e["times"]), 4),
        "cache_seconds": round(cache.seconds, 2), "cache_compile_s": round(cache.compile_seconds, 2),
        "cache_s_per_example": round(cache_per_example, 4), "trainable_params": e["trainable_params"],
        "examples_per_s_ratio": round(eps / recipe_eps, 2), "epoch_time_ratio": round(epoch_recipe / epoch_engine, 2),
        "epoch_time_ratio_8": round(8 * epoch_recipe / (cache_all + 8 * n_all / eps), 2),
        "epoch_s": {"recipe": round(epoch_recipe, 1), "engine": round(epoch_engine, 1)}}
  for k, v in out["engine"].items():
    print(f"{k:10s} {v['examples_per_s']:8.1f} ex/s  x{v['examples_per_s_ratio']:<7} epoch x{v['epoch_time_ratio']}"
          f"  8 epochs x{v['epoch_time_ratio_8']}  (cache {v['cache_s_per_example'] * 1e3:.1f} ms/example + "
          f"{v['cache_compile_s']:.0f} s compile)")
  print(f"recipe     {recipe_eps:8.1f} ex/s")
  head = next(iter(out["engine"].values()))
  out.update(examples_per_s_ratio=head["examples_per_s_ratio"], epoch_time_ratio=head["epoch_time_ratio"],
             headline=next(iter(out["engine"])), wall_s=round(time.perf_counter() - t_start, 1),
             load=os.getloadavg()[0], machine=f"{platform.machine()} {os.cpu_count()} cpus, {jax.devices()[0].platform}")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
