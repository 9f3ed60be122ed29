"""One prepared command that measures the framework on whatever JAX backend it finds (GPU, TPU or CPU) in < 10 min.

  bash launch/setup.sh --cuda                      # once, on a machine with only Python (JAX for the GPU, no torch)
  python benchmarks/accelerator.py                 # ~10 min on one H200; figures in workdirs/accelerator/
  python benchmarks/accelerator.py --dry-run       # every part on CPU at toy shapes (tests/test_accelerator.py)
  python benchmarks/accelerator.py --parts parity,beam --budget 200

Parts, each in its own subprocess with a wall-clock box (killed at its end; what it wrote so far is kept, and its
device memory is returned before the next part starts):
  parity  logits of the SmolLM2-135M port (embedded GGUF) against transformers/PyTorch reference values computed
          on CPU and stored in benchmarks/data/smollm2_reference_logits.npz (so no PyTorch on the device): the top-32
          logits and the log-partition at every position of 4 prompts. fp32 (matmul precision 'highest') must agree
          within 2e-4 x the largest reference logit; bf16 compute (fp32 weights, as in training) within 6e-2 x.
          Regenerate the file with `python benchmarks/accelerator.py --make-reference` (needs torch).
  train   one training step (`training.train.build_steps`: AdamW, clipping, NaN guard, FSDP mesh over all devices)
          of SmolLM2-135M and of a randomly initialised Llama-3.2-1B-shaped model, 32 x 1024 random tokens (the
          batch halves on out-of-memory), with the `:paper` variant's model settings (bf16 compute, fp32 master
          weights, its remat policy), 3 steps dispatched back to back per timing: tokens/s and model FLOPs
          utilisation (6 N + 12 L H Dh T FLOPs per token, N = matmul parameters with the LM head counted once,
          attention not halved for causality; remat recompute not counted) against the peak bf16 dense FLOP/s
          looked up by device kind in PEAK_BF16_FLOPS (the JSON names the entry used).
  beam    trie-constrained beam search (`decoding.constrained.retrieve`, prefill + search in one program) over a
          47k-tool trie with synthetic random codes (timing does not depend on which tool gets which code),
          batch 64 x beam 5, SmolLM2 + 2,048 code tokens; queries/s and the paired ratio to unconstrained beam
          search of the same length (`constrained.generate`), for ToolWeaver-style (L=2, K=1024) and
          Toolscaler-style (L=4, K=512) codes.
  real    the `:real` protocol (ToolLens + StableToolBench + Gorilla, 1,911 tools) at accelerator scale for
          ToolWeaver and ToolGen-atomic: full fine-tuning (no frozen layers, LM head on every position, whole
          documents), bf16 compute, batch 64 x up to 256 tokens, lr 1e-4, and the papers' epoch budgets
          (memorisation 8, retrieval 5) turned into steps from the dataset sizes; both pipelines run side by side
          (`python -m toolgen_jax.main`), each capped at a share of the GPU memory, and `benchmarks/real_table.py`
          writes the real-data table from whatever finished. Re-running with the same --out resumes the pipelines
          from their checkpoints. Skipped, with the reason, when the real data ($TOOLGEN_DATA or ../shared/data)
          is missing.

--dry-run: CPU (JAX_PLATFORMS=cpu, XLA's cheapest code generation), a random tiny model for parity (its own stored
transformers reference), train and beam (200 tools, 8 queries); the `real` part only resolves its two commands
against the locked configs (`--config.pipeline.dry_run=True`), which checks every override, and trains nothing.

Outputs (--out, default workdirs/accelerator): <part>.json per part, summary.json (rewritten after every part),
real_<method>/ workdirs with their logs, real_table.md. The last stdout line is the summary as one JSON object.
"""

from __future__ import annotations

import pathlib
import sys

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/tokenizers.py would shadow the
# `tokenizers` package: drop that folder, put the repository root first.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = _HERE.parent
REFERENCE = _HERE / "data" / "smollm2_reference_logits.npz"
PARTS = ("parity", "train", "beam", "real")
# Wall-clock boxes (s) out of the default 570 s budget; `real` gets whatever is left.
BOXES = {"parity": 60, "train": 170, "beam": 110, "real": None}
DRY_BOXES = {"parity": 60, "train": 60, "beam": 60, "real": 60}
TOLERANCE = {"float32": 2e-4, "bfloat16": 6e-2}  # max |ours - reference| / max |reference| over stored logits
TOP_K = 32
# Peak dense bf16 FLOP/s per chip, by a lower-case substring of `jax.Device.device_kind` (first match wins; the
# more specific names first). Vendor datasheets, dense (no 2:4 sparsity).
PEAK_BF16_FLOPS = (
    ("h200", 989e12),        # NVIDIA H200 SXM
    ("h100 pcie", 756e12),   # NVIDIA H100 PCIe
    ("h100", 989e12),        # NVIDIA H100 SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("gh200", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10g", 70e12),
    ("v6 lite", 918e12),     # TPU v6e (Trillium)
    ("v6e", 918e12),
    ("v5p", 459e12),
    ("v5 lite", 197e12),     # TPU v5e
    ("v5e", 197e12),
    ("v4", 275e12),
)
REAL_EPOCHS = {"memorization": 8, "retrieval": 5}  # the papers' budgets (ToolGen / ToolWeaver)
REAL_METHODS = {"toolweaver": "configs/toolweaver.py:real", "toolgen_atomic": "configs/toolgen.py:real"}
REAL_BATCH = 64
GROUP = 3  # train steps per timing (dispatched back to back, one block at the end)


def log(*a) -> None:
  print(*a, file=sys.stderr, flush=True)


def peak_flops(device_kind: str) -> tuple[float | None, str]:
  """(peak bf16 dense FLOP/s, the table entry used) for a device kind; (None, reason) when it is not listed."""
  kind = device_kind.lower()
  for key, flops in PEAK_BF16_FLOPS:
    if key in kind:
      return flops, f"PEAK_BF16_FLOPS[{key!r}] = {flops / 1e12:g} TFLOP/s"
  return None, f"device kind {device_kind!r} not in PEAK_BF16_FLOPS: no MFU"


def matmul_params(config) -> int:
  """N of the 6N rule: every weight matrix, the LM head once (tied or not), no embedding lookup, no norms."""
  from toolgen_jax.models import llama
  shapes = llama.param_shapes(config)
  n = 0
  for path, s in jax_tree_paths(shapes):
    if len(s.shape) < 2 or "norm" in path or "scale" in path or "bias" in path:
      continue
    if path.startswith("embed") and not config.tie_embeddings:
      continue  # untied: the lookup table is not a matmul; lm_head is counted on its own
    n += int(np.prod(s.shape))
  return n


def jax_tree_paths(tree):
  import jax
  return [(jax.tree_util.keystr(p, simple=True, separator="/"), x) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]]


def flops_per_token(config, seq_len: int) -> float:
  """Training FLOPs per token (PaLM, appendix B): 6 N + 12 L H Dh T."""
  return 6.0 * matmul_params(config) + 12.0 * config.num_layers * config.num_heads * config.head_dim * seq_len


class Recorder:
  """A part's figures, rewritten to disk (atomically) after every `put`, so a part killed at its box keeps them."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.data: dict = {}

  def put(self, key: str, value) -> None:
    self.data[key] = value
    tmp = self.path.with_suffix(".tmp")
    tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
    os.replace(tmp, self.path)
    log(f"[{self.path.stem}] {key}: {json.dumps(value, default=_jsonable)[:400]}")


def _jsonable(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


def device_info() -> dict:
  import jax
  d = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": d.device_kind, "devices": jax.device_count(),
          "jax": jax.__version__}


# ---- part 1: logit parity against stored CPU references ---------------------------------------------------------

def tiny_reference_model():
  """A deterministic random tiny Llama (NumPy seed, so the same weights on any JAX version and device)."""
  from toolgen_jax.models import llama
  config = llama.LlamaConfig.tiny(tie_embeddings=True, vocab_size=384)
  rng = np.random.default_rng(0)
  out = []
  import jax
  leaves, tree = jax.tree.flatten_with_path(llama.param_shapes(config))
  for path, s in leaves:
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      out.append((1.0 + 0.2 * rng.standard_normal(s.shape)).astype(np.float32))
    else:
      out.append((0.1 * rng.standard_normal(s.shape)).astype(np.float32))
  return config, jax.tree.unflatten(tree, out)


def make_reference(path: pathlib.Path = REFERENCE) -> None:
  """Writes the reference file from transformers/PyTorch on CPU (the same references as tests/test_llama.py)."""
  import torch
  import transformers
  sys.path.insert(0, str(ROOT / "tests"))
  import _model_refs  # pylint: disable=g-import-not-at-top
  from toolgen_jax.models import tokenizer as tok_lib
  tok = tok_lib.load_tokenizer("smollm2")
  texts = [
      "The capital of France is",
      tok.apply_chat_template([{"role": "system", "content": "You are a tool retriever."},
                               {"role": "user", "content": "Which API gives me tomorrow's weather in Lyon?"}]),
      "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n",
      "Gradient checkpointing trades compute for memory: activations are recomputed in the backward pass "
      "instead of being stored, so longer sequences fit on the same accelerator.",
  ]
  prompts = [tok.encode(t) for t in texts]
  arrays = {}

  def store(prefix, model, prompts, vocab):
    T = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), T), np.int32)
    ids = np.zeros((len(prompts), T, TOP_K), np.int32)
    vals = np.zeros((len(prompts), T, TOP_K), np.float32)
    lse = np.zeros((len(prompts), T), np.float32)
    for i, p in enumerate(prompts):
      tokens[i, :len(p)] = p
      with torch.no_grad():  # one prompt at a time, unpadded: the reference sees no padding at all
        logits = model(input_ids=torch.tensor([p]).long()).logits[0].double()
      top = torch.topk(logits, TOP_K, dim=-1)
      ids[i, :len(p)] = top.indices.numpy()
      vals[i, :len(p)] = top.values.numpy()
      lse[i, :len(p)] = torch.logsumexp(logits, -1).numpy()
    arrays.update({f"{prefix}/tokens": tokens, f"{prefix}/lengths": np.array([len(p) for p in prompts], np.int32),
                   f"{prefix}/top_ids": ids, f"{prefix}/top_logits": vals, f"{prefix}/logsumexp": lse})
    assert vals.shape[-1] <= vocab

  store("smollm2", _model_refs.smollm2_torch(), prompts, 49152)
  tcfg, tparams = tiny_reference_model()
  rng = np.random.default_rng(1)
  tiny_prompts = [rng.integers(0, tcfg.vocab_size, n).tolist() for n in (7, 16, 11)]
  store("tiny", _model_refs.torch_model_from_ours(tparams, tcfg), tiny_prompts, tcfg.vocab_size)
  from toolgen_jax import assets
  gguf = assets.smollm2_gguf()
  arrays["meta"] = np.array(json.dumps({
      "reference": "transformers GGUF loader + PyTorch float32 eager attention, CPU, one prompt at a time",
      "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "torch": torch.__version__,
      "transformers": transformers.__version__, "top_k": TOP_K, "texts": texts}))
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **arrays)
  log(f"wrote {path} ({path.stat().st_size} bytes)")


def compare_logits(logits: np.ndarray, ref: dict, tol: float) -> dict:
  """Our logits [P, T, V] against the stored top-k reference at every real position (right padding ignored)."""
  P, T = ref["tokens"].shape
  valid = np.arange(T)[None, :] < ref["lengths"][:, None]
  logits = np.asarray(logits[:, :T], np.float64)
  got = np.take_along_axis(logits, ref["top_ids"], axis=-1)
  want = ref["top_logits"].astype(np.float64)
  scale = float(np.abs(want[valid]).max())
  err = float(np.abs(got - want)[valid].max())
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  lse_err = float(np.abs(lse - ref["logsumexp"])[valid].max())
  logp_err = float(np.abs((got - lse[..., None]) - (want - ref["logsumexp"][..., None]))[valid].max())
  # Top-1 is compared where the reference's top-2 margin exceeds twice the tolerance (elsewhere a tie may flip).
  clear = valid & (want[..., 0] - want[..., 1] > 2 * tol * scale)
  top1 = logits.argmax(-1) == ref["top_ids"][..., 0]
  agree = float(top1[clear].mean()) if clear.any() else 1.0
  return {"max_abs_err": err, "scale": scale, "rel_err": err / scale, "tolerance": tol,
          "logsumexp_max_abs_err": lse_err, "logprob_max_abs_err": logp_err,
          "top1_agreement": agree, "top1_positions": int(clear.sum()), "positions": int(valid.sum()),
          "top1_agreement_all_positions": float(top1[valid].mean()),
          "pass": bool(err <= tol * scale and agree == 1.0)}


def part_parity(rec: Recorder, dry: bool, deadline: float) -> None:
  del deadline
  import jax
  import jax.numpy as jnp
  from toolgen_jax.models import llama
  rec.put("device", device_info())
  if not REFERENCE.exists():
    rec.put("skipped", f"{REFERENCE} missing: run `python benchmarks/accelerator.py --make-reference` on a CPU")
    return
  npz = np.load(REFERENCE)
  prefix = "tiny" if dry else "smollm2"
  ref = {k.split("/", 1)[1]: npz[k] for k in npz.files if k.startswith(prefix + "/")}
  t0 = time.perf_counter()
  if dry:
    config, params = tiny_reference_model()
  else:
    from toolgen_jax.models import weights
    config, params = weights.load_pretrained("smollm2")
  rec.put("model", {"name": prefix, "load_s": round(time.perf_counter() - t0, 1),
                    "meta": json.loads(str(npz["meta"]))})
  params = jax.device_put(params)
  tokens = jnp.asarray(ref["tokens"])
  # Gated: fp32 at 'highest' and bf16 compute. Reported only: fp32 at the backend's default matmul precision
  # (TF32-like passes on recent GPUs, bf16 passes on TPU), i.e. what a float32 config actually computes there.
  for key, dtype, precision in (("float32", "float32", "highest"), ("bfloat16", "bfloat16", "default"),
                                ("float32_default_precision", "float32", "default")):
    cfg = config.replace(dtype=dtype)  # fp32 weights, compute in `dtype` (the training set-up)
    with jax.default_matmul_precision(precision):
      t0 = time.perf_counter()
      logits, _ = jax.jit(llama.forward, static_argnums=1)(params, cfg, tokens)
      logits = np.asarray(jax.device_get(logits), np.float32)
    res = compare_logits(logits, ref, TOLERANCE[dtype])
    res.update(matmul_precision=precision, seconds=round(time.perf_counter() - t0, 2))
    rec.put(key, res)
    if key == "bfloat16":
      rec.put("pass", bool(rec.data["float32"]["pass"] and rec.data["bfloat16"]["pass"]))


# ---- part 2: training step throughput and MFU --------------------------------------------------------------------

def _is_oom(e: Exception) -> bool:
  s = str(e)
  return "RESOURCE_EXHAUSTED" in s or "Out of memory" in s or "out of memory" in s


def measure_train(config, params_fn, batch: int, seq: int, deadline: float, reps: int, peak: float | None) -> dict:
  """Compile + time `reps` steps of build_steps' train step (or until `deadline`); halves the batch on OOM."""
  import jax
  from toolgen_jax import config as config_lib
  from toolgen_jax.training import sharding as shd
  from toolgen_jax.training import train
  paper = config_lib.apply_scale(config_lib.base_config(), "paper")
  tc = paper.train
  tc.batch_size, tc.seq_len = batch, seq
  mesh = shd.make_mesh(paper.mesh)
  rules = paper.mesh.logical_axis_rules
  steps = train.build_steps(config, tc, mesh, rules, total_steps=10_000)
  t0 = time.perf_counter()
  state = steps.init(params_fn())
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  seqs = rng.integers(0, config.vocab_size, (batch, seq + 1)).astype(np.int32)
  host = {"tokens": seqs[:, :-1], "targets": seqs[:, 1:], "weights": np.ones((batch, seq), np.float32),
          "attention_mask": np.ones((batch, seq), np.int32)}
  gbatch = shd.host_local_batch_to_global(host, mesh, rules)
  key = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  state, m = steps.train(state, gbatch, key)
  jax.block_until_ready(state)
  first_s = time.perf_counter() - t0
  first_loss = float(m["loss"])
  times = []  # seconds per step, one figure per group of GROUP steps dispatched back to back (as the loop does)
  while len(times) < reps and time.perf_counter() < deadline:
    t0 = time.perf_counter()
    for _ in range(GROUP):
      state, m = steps.train(state, gbatch, key)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t0) / GROUP)
  last_loss = float(m["loss"])
  if not times:
    return {"batch": batch, "seq_len": seq, "init_s": init_s, "compile_and_first_step_s": first_s,
            "timed_steps": 0, "note": "no timed step before the part's deadline"}
  step_s = statistics.median(times)
  tok_s = batch * seq / step_s / jax.device_count()
  fpt = flops_per_token(config, seq)
  return {"batch": batch, "seq_len": seq, "params": int(sum(int(np.prod(x.shape)) for x in
                                                           jax.tree.leaves(state.params))),
          "matmul_params": matmul_params(config), "dtype": config.dtype, "param_dtype": config.param_dtype,
          "remat": config.remat, "init_s": round(init_s, 2), "compile_and_first_step_s": round(first_s, 2),
          "timed_steps": GROUP * len(times), "step_s_median": step_s, "step_s_min": min(times),
          "tokens_per_s_per_device": tok_s, "model_flops_per_token": fpt,
          "model_tflops_per_s_per_device": tok_s * fpt / 1e12,
          "mfu": None if peak is None else tok_s * fpt / peak, "first_loss": first_loss, "last_loss": last_loss}


def part_train(rec: Recorder, dry: bool, deadline: float) -> None:
  import jax
  from toolgen_jax import config as config_lib
  from toolgen_jax.models import llama, weights
  info = device_info()
  rec.put("device", info)
  peak, source = peak_flops(info["device_kind"])
  rec.put("peak_bf16_flops", peak)
  rec.put("peak_source", source)
  paper = config_lib.apply_scale(config_lib.base_config(), "paper")
  over = weights.config_overrides(paper.model)  # bf16 compute, fp32 master weights, remat as the paper config
  rec.put("model_overrides", {k: v for k, v in over.items()})
  if dry:
    models = [("tiny_random", llama.LlamaConfig.tiny(tie_embeddings=True, **over), None, 4, 32, 2)]
  else:
    models = [("smollm2_135m", llama.LlamaConfig.smollm2_135m(**over), "smollm2", 32, 1024, 6),
              ("llama32_1b_random", llama.LlamaConfig.llama32_1b(**over), None, 32, 1024, 6)]
  start = time.perf_counter()
  for i, (name, config, ckpt, batch, seq, reps) in enumerate(models):
    share = (deadline - time.perf_counter()) / (len(models) - i)  # this model's slice of what is left
    model_deadline = time.perf_counter() + share
    if ckpt:
      params_fn = lambda k=ckpt: weights.load_pretrained(k, **over)[1]
    else:
      params_fn = lambda c=config: llama.init_params(c, jax.random.PRNGKey(0))
    while True:
      try:
        res = measure_train(config, params_fn, batch, seq, model_deadline, reps, peak)
        break
      except Exception as e:  # pylint: disable=broad-except
        if _is_oom(e) and batch > 1:
          log(f"[train] {name}: out of memory at batch {batch}, retrying at {batch // 2}")
          batch //= 2
          gc.collect()  # the failed attempt's arrays go before the retry allocates
          continue
        res = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        break
    res["checkpoint"] = ckpt or "random init"
    rec.put(name, res)
  rec.put("seconds", round(time.perf_counter() - start, 1))


# ---- part 3: constrained beam search ---------------------------------------------------------------------------

def random_codes(rng, n: int, length: int, k: int) -> np.ndarray:
  """[n, length] distinct random code tuples over a K-code alphabet."""
  if k ** length < n:
    raise ValueError(f"{k}^{length} codes cannot hold {n} tools")
  codes = np.zeros((0, length), np.int64)
  while len(codes) < n:
    codes = np.unique(np.concatenate([codes, rng.integers(0, k, (n, length))]), axis=0)
  return codes[rng.permutation(len(codes))[:n]]


def part_beam(rec: Recorder, dry: bool, deadline: float) -> None:
  import jax
  import jax.numpy as jnp
  from toolgen_jax.decoding import constrained
  from toolgen_jax.decoding import trie as trie_lib
  from toolgen_jax.models import llama, weights
  rec.put("device", device_info())
  rng = np.random.default_rng(0)
  if dry:
    config = llama.LlamaConfig.tiny(tie_embeddings=True)
    params = llama.init_params(config, jax.random.PRNGKey(0))
    settings = {"toolweaver_L2_K32": (2, 32)}
    n_tools, queries, prompt_len, new_tokens, rounds = 200, 8, 16, 64, 2
  else:
    config, params = weights.load_pretrained("smollm2")
    settings = {"toolweaver_L2_K1024": (2, 1024), "toolscaler_L4_K512": (4, 512)}
    n_tools, queries, prompt_len, new_tokens, rounds = 47_000, 64, 64, 2048, 5
  beam = 5
  v0 = config.vocab_size
  emb = np.asarray(params["embed"]["embedding"])
  assert config.tie_embeddings, "new code rows are appended to the tied embedding only"
  rows = (emb.mean(0) + rng.standard_normal((new_tokens, emb.shape[1])) * emb.std(0)).astype(emb.dtype)
  params = dict(params, embed={"embedding": jnp.asarray(np.concatenate([emb, rows]))})
  config = config.replace(vocab_size=v0 + new_tokens)
  tokens = jnp.asarray(rng.integers(0, v0, (queries, prompt_len)).astype(np.int32))
  mask = jnp.ones((queries, prompt_len), jnp.int32)
  rec.put("setup", {"tools": n_tools, "queries": queries, "beam": beam, "prompt_len": prompt_len,
                    "new_tokens": new_tokens, "model": "tiny random" if dry else "smollm2",
                    "codes": "synthetic random assignments (timing only)"})
  for name, (length, k) in settings.items():
    t0 = time.perf_counter()
    trie = trie_lib.Trie.build(random_codes(rng, n_tools, length, k),
                               code_tokens=trie_lib.level_token_table(v0, length, k))
    dtrie = trie.device()
    build_s = time.perf_counter() - t0
    jobs = {
        "constrained": lambda dtrie=dtrie: constrained.retrieve(params, config, tokens, mask, dtrie, beam_size=beam),
        "unconstrained": lambda length=length: constrained.generate(params, config, tokens, mask, beam_size=beam,
                                                                     max_len=length, unroll=True),
    }
    compile_s = {}
    for key, fn in jobs.items():  # warm-up: compilation
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      compile_s[key] = round(time.perf_counter() - t0, 2)
    out = {"levels": length, "codebook": k, "trie_build_s": round(build_s, 2),
           "trie_mb": trie.nbytes()["device_bytes"] / 2**20, "compile_s": compile_s, "rounds": 0}
    rec.put(name, out)  # a part cut during the timed rounds still shows how far it got
    times = {k: [] for k in jobs}
    pairs = []
    for _ in range(rounds):  # alternate, paired: each round times both once per repeat
      if time.perf_counter() > deadline - 5:
        break
      rt = {}
      for key, fn in jobs.items():
        reps = []
        for _ in range(3):
          t0 = time.perf_counter()
          jax.block_until_ready(fn())
          reps.append(time.perf_counter() - t0)
        rt[key] = statistics.median(reps)
        times[key].extend(reps)
      pairs.append(rt["constrained"] / rt["unconstrained"])
    out["rounds"] = len(pairs)
    if pairs:
      med = {k: statistics.median(v) for k, v in times.items()}
      out.update({"constrained_s": med["constrained"], "unconstrained_s": med["unconstrained"],
                  "queries_per_s_constrained": queries / med["constrained"],
                  "queries_per_s_unconstrained": queries / med["unconstrained"],
                  "constrained_over_unconstrained": statistics.median(pairs)})
    rec.put(name, out)


# ---- part 4: the :real protocol at accelerator scale ---------------------------------------------------------------

def real_sizes(dry: bool) -> tuple[dict, str]:
  """(examples per stage, where the counts come from): tool documents to memorise, (query, tool) retrieval pairs."""
  from toolgen_jax import assets
  data = assets.shared_data_dir()
  if data is None:
    if not dry:
      return {}, "real data not found: set TOOLGEN_DATA or place it at ../shared/data"
    return {"memorization": 1911, "retrieval": 46190}, "data missing: the sizes of BENCHMARKS.md (dry run)"
  from toolgen_jax.data import protocol
  ds = protocol.load_real_protocol(data)
  train_q = [q for q in ds.queries if q.split == "train"]
  # multi_target="separate" (the default): one retrieval example per (training query, relevant tool).
  return {"memorization": len(ds.corpus), "retrieval": sum(len(q.relevant) for q in train_q)}, str(data)


def real_overrides(sizes: dict, batch: int = REAL_BATCH) -> tuple[list[str], dict]:
  """The command-line overrides that turn a `:real` config into full fine-tuning at the papers' epoch budgets."""
  steps = {s: math.ceil(REAL_EPOCHS[s] * n / batch) for s, n in sizes.items()}
  over = [
      "--config.model.dtype=bfloat16", "--config.model.param_dtype=float32",
      "--config.train.frozen_layers=0",            # full fine-tuning (the CPU recipe trains the top 6 of 30 layers)
      "--config.train.target_positions=0",         # LM head + CE on every position
      "--config.train.memorization_max_chars=0",   # whole documents (data.doc_max_chars)
      f"--config.train.batch_size={batch}", "--config.train.seq_len=256", "--config.train.packing=bucket",
      "--config.train.learning_rate=0.0001", "--config.train.warmup_fraction=0.03",
      # sized in epochs: the pipeline turns them into ceil(epochs * examples / batch) steps (`steps` below)
      f"--config.train.stage_epochs.memorization={REAL_EPOCHS['memorization']}",
      f"--config.train.stage_epochs.retrieval={REAL_EPOCHS['retrieval']}",
      "--config.train.checkpoint_every=500",       # a cut run resumes close to where it stopped
      "--config.train.log_every=100", "--config.train.progress_bar=False",
      "--config.eval.batch_size=64", "--config.encoder.batch_size=256",
  ]
  return over, steps


_STAGE_LINE = re.compile(r"\[train:(\w+)\] (\d+) examples, (\d+) steps of (\d+) \(([\d.]+) epochs\)")


def _read_log(path: pathlib.Path) -> dict:
  text = path.read_text(errors="replace") if path.exists() else ""
  stages = {m.group(1): {"examples": int(m.group(2)), "steps": int(m.group(3)), "epochs": float(m.group(5))}
            for m in _STAGE_LINE.finditer(text)}
  done = re.findall(r"\[done\] (\d+)s", text)  # the log is appended to by every (resumed) run: the last one
  return {"stages": stages, "done_s": int(done[-1]) if done else None,
          "last_lines": text.strip().splitlines()[-3:]}


def part_real(rec: Recorder, dry: bool, deadline: float, out: pathlib.Path) -> None:
  sizes, source = real_sizes(dry)
  if not sizes:
    rec.put("skipped", source)
    return
  over, steps = real_overrides(sizes)
  rec.put("sizes", {"examples": sizes, "source": source, "epochs": REAL_EPOCHS, "batch": REAL_BATCH,
                    "steps": steps})
  rec.put("overrides", over)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  if not dry:  # both pipelines share the device: cap each one's preallocation
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
  procs = {}
  for method, cfg in REAL_METHODS.items():
    wd = out / f"real_{method}"
    wd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "toolgen_jax.main", f"--config={cfg}", f"--workdir={wd}", *over]
    if dry:  # resolve + write config.json only: every override is checked against the locked config
      cmd.append("--config.pipeline.dry_run=True")
    logf = open(wd / "accelerator.log", "a")  # pylint: disable=consider-using-with
    logf.write(f"\n$ {' '.join(cmd)}\n")
    logf.flush()
    procs[method] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                      start_new_session=True), logf, wd, time.perf_counter())
  rec.put("commands", {m: f"python -m toolgen_jax.main --config={REAL_METHODS[m]} --workdir={p[2]} "
                          + " ".join(over) for m, p in procs.items()})
  results = {}
  while procs:
    for method, (p, logf, wd, t0) in list(procs.items()):
      rc = p.poll()
      if rc is None and time.perf_counter() < deadline - 15:
        continue
      if rc is None:  # the box is up: stop it (the workdir keeps its checkpoints for a re-run)
        os.killpg(p.pid, signal.SIGTERM)
        try:
          p.wait(10)
        except subprocess.TimeoutExpired:
          os.killpg(p.pid, signal.SIGKILL)
          p.wait()
      logf.close()
      res = {"rc": rc, "status": "ok" if rc == 0 else ("timed out" if rc is None else "failed"),
             "seconds": round(time.perf_counter() - t0, 1), "workdir": str(wd)} | _read_log(wd / "accelerator.log")
      if dry:
        cfg = json.loads((wd / "config.json").read_text()) if (wd / "config.json").exists() else {}
        res["resolved_stage_epochs"] = cfg.get("train", {}).get("stage_epochs")
      results[method] = res
      rec.put(method, res)
      del procs[method]
    time.sleep(1)
  finished = [str(out / f"real_{m}") for m in REAL_METHODS if (out / f"real_{m}" / "report.json").exists()]
  if dry:
    rec.put("table", "dry run: the pipelines were resolved (pipeline.dry_run), not trained")
    return
  if not finished:
    rec.put("table", "no pipeline reached its report before the deadline; re-run with the same --out to resume")
    return
  t = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_table.py"), *finished], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  (out / "real_table.md").write_text(t.stdout)
  lines = t.stdout.strip().splitlines()
  rec.put("table", json.loads(lines[-1]) if t.returncode == 0 and lines else {"error": t.stderr[-800:]})


# ---- driver -------------------------------------------------------------------------------------------------------

def run_part(part: str, out: pathlib.Path, dry: bool, deadline: float) -> None:
  rec = Recorder(out / f"{part}.json")
  rec.put("part", part)
  if part == "real":
    part_real(rec, dry, deadline, out)
  else:
    {"parity": part_parity, "train": part_train, "beam": part_beam}[part](rec, dry, deadline)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dry-run", action="store_true", help="every part on CPU at toy shapes, in seconds")
  ap.add_argument("--out", default=str(ROOT / "workdirs" / "accelerator"))
  ap.add_argument("--parts", default=",".join(PARTS))
  ap.add_argument("--budget", type=float, default=570.0, help="wall-clock seconds for all parts together")
  ap.add_argument("--box", action="append", default=[], metavar="PART=SECONDS",
                  help="override a part's wall-clock box, e.g. --box beam=200 (real: what is left by default)")
  ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
  ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # internal: time.time() at which it stops
  ap.add_argument("--make-reference", action="store_true", help="write the reference logits (needs torch)")
  args = ap.parse_args(argv)
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  if args.make_reference:
    make_reference()
    return {}
  if args.part:
    # time.time() crosses the process boundary; perf_counter() does not.
    run_part(args.part, out, args.dry_run, time.perf_counter() + (args.deadline - time.time()))
    return {}

  parts = [p for p in args.parts.split(",") if p]
  unknown = set(parts) - set(PARTS)
  if unknown:
    ap.error(f"unknown parts {sorted(unknown)}; expected some of {PARTS}")
  env = dict(os.environ)
  if args.dry_run:  # CPU, and XLA's cheapest code generation: toy shapes compile in a fraction of the time
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  boxes = dict(DRY_BOXES if args.dry_run else BOXES)
  for item in args.box:
    part, _, sec = item.partition("=")
    if part not in PARTS:
      ap.error(f"--box {item}: unknown part {part!r}")
    boxes[part] = float(sec)
  start = time.time()
  summary = {"command": " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
             "dry_run": args.dry_run, "budget_s": args.budget, "out": str(out), "parts": {}}
  for i, part in enumerate(parts):
    left = args.budget - (time.time() - start)
    later = sum(boxes[p] or 0 for p in parts[i + 1:])
    box = max(10.0, left - later if boxes[part] is None else min(boxes[part], left - later))
    t0 = time.time()
    cmd = [sys.executable, __file__, "--part", part, "--out", str(out), "--deadline", str(t0 + box - 5)]
    if args.dry_run:
      cmd.append("--dry-run")
    (out / f"{part}.json").unlink(missing_ok=True)
    log(f"== {part}: box {box:.0f}s")
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sys.stderr, stderr=sys.stderr, start_new_session=True)
    try:
      rc = p.wait(timeout=box)
    except subprocess.TimeoutExpired:
      os.killpg(p.pid, signal.SIGKILL)  # a compile that hangs cannot overrun the budget
      p.wait()
      rc = None
    f = out / f"{part}.json"
    res = json.loads(f.read_text()) if f.exists() else {}
    res["status"] = "ok" if rc == 0 else ("cut at its box" if rc is None else f"failed (rc {rc})")
    res["wall_s"] = round(time.time() - t0, 1)
    summary["parts"][part] = res
    summary["wall_s"] = round(time.time() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
  print(json.dumps(summary))
  return summary


if __name__ == "__main__":
  main()
