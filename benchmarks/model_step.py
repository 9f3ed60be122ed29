"""SmolLM2-135M forward (B x T tokens) and one full-parameter AdamW step: our JAX port vs transformers/PyTorch.

Both sides hold the same weights (the embedded GGUF, dequantised by our loader and copied into a transformers
LlamaForCausalLM with its default SDPA attention), compute the same thing (float32 logits for all positions;
mean next-token cross-entropy, AdamW lr 1e-5, wd 0.01) and run alternately in one process, so a noisy shared
machine hurts both alike. Reported: medians after warm-up and the median of the per-pair ratios (JAX / PyTorch).

  python benchmarks/model_step.py            # batch 8 x 128, 5 timed pairs each
  python benchmarks/model_step.py --reps 9 --batch 8 --seq 128

Last stdout line: JSON with forward_ratio and train_step_ratio (< 1 means JAX is faster).
"""

from __future__ import annotations

import pathlib
import sys

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where sibling scripts (benchmarks/tokenizers.py)
# would shadow installed packages of the same name: drop it, and add the repo root so no install is needed.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from toolgen_jax.models import llama, weights


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def build_torch(params, config):
  import transformers  # pylint: disable=g-import-not-at-top
  hf = transformers.AutoConfig.for_model(**config.to_hf_config())
  model = transformers.AutoModelForCausalLM.from_config(hf, dtype=torch.float32, attn_implementation="sdpa")
  state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.to_hf_state_dict(params, config).items()}
  model.load_state_dict(state, strict=False)
  model.tie_weights()
  return model


def next_token_loss_jax(params, config, tokens):
  """Mean next-token cross-entropy, as the PyTorch side: the same values as log_softmax(forward(...)[:, :-1])
  gathered at tokens[:, 1:], but the head runs on the T-1 predicting positions only (slicing [B, T, D] hidden
  states rather than [B, T, V] logits) and the loss is `llama.softmax_cross_entropy` (closed-form backward)."""
  x, _ = llama.hidden_states(params, config, tokens)
  logits = llama.logits_from_hidden(params, config, x[:, :-1])
  return llama.softmax_cross_entropy(logits, tokens[:, 1:]).mean()


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=1)  # the first call compiles (JAX) and warms caches
  ap.add_argument("--skip_train", action="store_true")
  ap.add_argument("--torch_threads", type=int, default=0, help="0 = PyTorch's default (one per core)")
  args = ap.parse_args(argv)
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)

  config, params = weights.load_pretrained("smollm2")
  tokens_np = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq)).astype(np.int32)
  tokens = jnp.asarray(tokens_np)
  tt = torch.from_numpy(tokens_np).long()
  model = build_torch(params, config)

  # ---- forward ----
  fwd = jax.jit(lambda p, t: llama.forward(p, config, t)[0])
  model.eval()

  def jax_fwd():
    return fwd(params, tokens).block_until_ready()

  def torch_fwd():
    with torch.inference_mode():
      return model(tt).logits

  a, b = np.asarray(jax_fwd()), torch_fwd().numpy()
  fwd_err = float(np.abs(a - b).max() / np.abs(b).max())
  del a, b
  res = {"forward": ([], [])}
  for i in range(args.warmup + args.reps):
    tj, tp = _timed(jax_fwd), _timed(torch_fwd)
    if i >= args.warmup:
      res["forward"][0].append(tj)
      res["forward"][1].append(tp)

  # ---- train step ----
  if not args.skip_train:
    opt = optax.adamw(1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, t):
      loss, g = jax.value_and_grad(next_token_loss_jax)(p, config, t)
      upd, s = opt.update(g, s, p)
      return optax.apply_updates(p, upd), s, loss

    state = {"p": jax.tree.map(jnp.copy, params), "s": None}
    state["s"] = opt.init(state["p"])
    model.train()
    topt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = {}

    def jax_step():
      state["p"], state["s"], loss = step(state["p"], state["s"], tokens)
      losses.setdefault("jax", float(loss))
      jax.block_until_ready(state["p"])

    def torch_step():
      logits = model(tt).logits
      loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tt[:, 1:].reshape(-1))
      loss.backward()
      topt.step()
      topt.zero_grad(set_to_none=True)
      losses.setdefault("torch", float(loss.detach()))

    res["train_step"] = ([], [])
    for i in range(args.warmup + args.reps):
      tj, tp = _timed(jax_step), _timed(torch_step)
      if i >= args.warmup:
        res["train_step"][0].append(tj)
        res["train_step"][1].append(tp)

  out = {"batch": args.batch, "seq": args.seq, "reps": args.reps, "forward_rel_err": fwd_err,
         "machine": f"{platform.machine()} nproc={os.cpu_count()} load_avg={os.getloadavg()[0]:.1f}",
         "jax": jax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
  if not args.skip_train:
    out["first_loss_jax"], out["first_loss_torch"] = losses["jax"], losses["torch"]
  for name, (j, p) in res.items():
    ratios = [a / b for a, b in zip(j, p)]
    out[f"{name}_jax_s"] = round(statistics.median(j), 4)
    out[f"{name}_torch_s"] = round(statistics.median(p), 4)
    out[f"{name}_ratio"] = round(statistics.median(ratios), 3)
    out[f"{name}_ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    print(f"{name}: jax {out[f'{name}_jax_s']:.3f}s  torch {out[f'{name}_torch_s']:.3f}s  "
          f"ratio {out[f'{name}_ratio']:.3f} (pairs {out[f'{name}_ratio_range']})")
  if "train_step_ratio" not in out:
    out["train_step_ratio"] = None
  print(json.dumps(out))


if __name__ == "__main__":
  main()
