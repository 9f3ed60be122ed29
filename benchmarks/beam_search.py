"""Constrained beam search: ours (jitted, batched) vs transformers' generate(prefix_allowed_tokens_fn) with a Python
dict trie (the peers' way: ToolGen / Toolscaler, one query at a time), on the same SmolLM2-135M weights.

  python benchmarks/beam_search.py            # ~30 min on the shared 2-core CPU (most of it transformers)
  python benchmarks/beam_search.py --rounds 1 --big 100000   # a quicker look

Setup: the 1,417 distinct StableToolBench APIs (G1-G3 test api_lists) with *synthetic random* code assignments
(the timing does not depend on which tool gets which code): ToolWeaver-style (L=2, K=1024) and Toolscaler-style
(length 4, K=512). 2,048 new code tokens are appended to SmolLM2's vocabulary with random rows (same rows in both
models; the embeddings are tied so they are output rows too). 8 G1 queries in SmolLM2's chat template, beam 5.
Timings alternate between the contenders in every round (transformers once, ours `--repeats` times); ratios are
medians over rounds of the per-round ratios, after a warm-up call (jit compilation and torch's first call
excluded); `medians_s` holds the raw medians. The last line is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

# Python puts this script's folder first on sys.path, where benchmarks/tokenizers.py would shadow the
# `tokenizers` package that transformers imports: replace it by the repository root.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import struct  # noqa: E402

from toolgen_jax import assets  # noqa: E402
from toolgen_jax.decoding import beam_search as bs  # noqa: E402
from toolgen_jax.decoding import constrained  # noqa: E402
from toolgen_jax.decoding import trie as trie_lib  # noqa: E402

NEW_TOKENS = 2048


def log(*a):
  print(*a, file=sys.stderr, flush=True)


def stabletoolbench(data_dir: pathlib.Path, num_queries: int):
  apis, queries = {}, []
  for g in ("G1", "G2", "G3"):
    path = data_dir / "StableToolBench/solvable_queries/test_instruction" / f"{g}_instruction.json"
    for r in json.loads(path.read_text()):
      for a in r["api_list"]:
        apis.setdefault((a["tool_name"], a["api_name"]), len(apis))
      if len(queries) < num_queries:
        queries.append(r["query"])
  return apis, queries


def random_codes(rng, n, length, k):
  codes = np.unique(rng.integers(0, k, (int(n * 1.05) + 16, length)), axis=0)
  return codes[rng.permutation(len(codes))[:n]]


def dict_trie(token_seqs):
  root = {}
  for s in token_seqs:
    node = root
    for t in s:
      node = node.setdefault(int(t), {})
  return root


def timed(fn):
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


@struct.dataclass
class _ToyCache:
  h: jax.Array


def _toy_step(params, tokens, cache):  # a near-zero-cost "model" to time the search machinery alone
  h = (cache.h * 31 + tokens[:, 0] + 1) % params.shape[0]
  return params[h], _ToyCache(h)


def _toy_reorder(cache, index):
  return _ToyCache(cache.h[index])



@jax.jit
def _search_only(table, h0, trie):
  return bs.trie_beam_search(_toy_step, _toy_reorder, table, table[h0], _ToyCache(h0), trie, beam_size=5)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--queries", type=int, default=8)
  ap.add_argument("--beam", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=3, help="calls of each of our jobs per round")
  ap.add_argument("--big", type=int, default=1_000_000, help="synthetic code sequences for the growth figure")
  ap.add_argument("--torch_threads", type=int, default=os.cpu_count())
  args = ap.parse_args()

  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from toolgen_jax.models import weights
  torch.set_num_threads(args.torch_threads)
  data_dir = assets.shared_data_dir()
  if data_dir is None:
    raise SystemExit("real data not found: set TOOLGEN_DATA")
  apis, queries = stabletoolbench(data_dir, args.queries)
  n_tools = len(apis)
  log(f"{n_tools} APIs, {len(queries)} queries")

  # --- the same weights in both frameworks, 2,048 new tokens appended ----------------------------------------------
  gguf = assets.smollm2_gguf()
  cfg, params = weights.load_pretrained("smollm2")
  v0 = cfg.vocab_size
  rng = np.random.default_rng(0)
  emb = np.asarray(params["embed"]["embedding"])
  new_rows = (emb.mean(0) + rng.normal(size=(NEW_TOKENS, emb.shape[1])) * emb.std(0)).astype(np.float32)
  params = dict(params, embed={"embedding": jnp.asarray(np.concatenate([emb, new_rows]))})
  assert cfg.tie_embeddings, "the benchmark appends rows to the tied embedding only"
  cfg = cfg.replace(vocab_size=v0 + NEW_TOKENS)
  tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
  hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
  hf.resize_token_embeddings(v0 + NEW_TOKENS)
  with torch.no_grad():
    hf.get_input_embeddings().weight[v0:] = torch.from_numpy(new_rows)
  assert hf.get_output_embeddings().weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()

  prompts = [tok.apply_chat_template(
      [{"role": "system", "content": "You are a tool retriever: answer with the tool that solves the request."},
       {"role": "user", "content": q}], add_generation_prompt=True, tokenize=True) for q in queries]
  prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
  tokens, mask = constrained.left_pad(prompts, pad_id=tok.pad_token_id or 0, multiple=16)
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  log("prompt lengths", [len(p) for p in prompts], "padded to", tokens.shape[1])

  # --- tries ---------------------------------------------------------------------------------------------------------
  settings = {"toolweaver_L2_K1024": (2, 1024), "toolscaler_L4_K512": (4, 512)}
  tries = {}
  for name, (length, k) in settings.items():
    t = trie_lib.Trie.build(random_codes(rng, n_tools, length, k),
                            code_tokens=trie_lib.level_token_table(v0, length, k))
    tries[name] = (t, t.device(), dict_trie(t.tokens_of(np.arange(n_tools))))
  growth = {}
  for n in (1000, args.big):
    t0 = time.perf_counter()
    t = trie_lib.Trie.build(random_codes(rng, n, 4, 512), code_tokens=trie_lib.level_token_table(v0, 4, 512))
    growth[n] = (t, t.device(), time.perf_counter() - t0)
    log(f"trie of {n} sequences built in {growth[n][2]:.1f}s: {t.nbytes()}")
  t47 = trie_lib.Trie.build(random_codes(rng, 47_000, 4, 512), code_tokens=trie_lib.level_token_table(v0, 4, 512))
  bytes47 = t47.nbytes()

  # --- contenders ------------------------------------------------------------------------------------------------------
  def ours(dtrie):
    res = constrained.retrieve(params, cfg, tokens, mask, dtrie, beam_size=args.beam)
    return jax.block_until_ready(res)

  def ours_free(length):
    res = constrained.generate(params, cfg, tokens, mask, beam_size=args.beam, max_len=length, unroll=True)
    return jax.block_until_ready(res)

  table = jnp.asarray(rng.normal(size=(64, cfg.vocab_size)), jnp.float32)
  h0 = jnp.arange(args.queries, dtype=jnp.int32)

  def search_only(dtrie):
    return jax.block_until_ready(_search_only(table, h0, dtrie))

  def transformers_generate(name, num=None):
    trie, _, root = tries[name]
    out = []
    for p in prompts[:num]:
      ids = torch.tensor([p])
      n = len(p)

      def allowed(batch_id, sent, n=n):  # the peers' per-step Python walk over the generated prefix
        node = root
        for t in sent[n:].tolist():
          node = node.get(t, {})
        return list(node.keys()) or [tok.eos_token_id]

      with torch.no_grad():
        g = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=args.beam,
                        num_return_sequences=args.beam, max_new_tokens=trie.depth, do_sample=False,
                        prefix_allowed_tokens_fn=allowed, pad_token_id=tok.eos_token_id)
      out.append(trie.lookup(g[:, n:].numpy()))
    return np.stack(out)

  jobs = {}
  for name, (length, _) in settings.items():
    jobs[f"hf/{name}"] = lambda name=name: transformers_generate(name)
    jobs[f"ours/{name}"] = lambda name=name: ours(tries[name][1])
    jobs[f"ours_unconstrained/L{length}"] = lambda length=length: ours_free(length)
  for n, (_, dt, _) in growth.items():
    jobs[f"ours/synthetic_{n}"] = lambda dt=dt: ours(dt)
    jobs[f"search_only/synthetic_{n}"] = lambda dt=dt: search_only(dt)

  outputs, times = {}, {k: [] for k in jobs}
  for key, fn in jobs.items():  # warm-up (jit compilation; torch's first call on one query)
    if key.startswith("hf/"):
      fn = lambda name=key[3:]: transformers_generate(name, 1)
    sec, outputs[key] = timed(fn)
    log(f"warm-up {key}: {sec:.2f}s")
  # Each round: every transformers job once, every job of ours `repeats` times, in a fixed interleaved order;
  # ratios are medians of per-round (paired) ratios, which cancel most of the drift of a shared machine's load.
  for r in range(args.rounds):
    for key, fn in jobs.items():
      for _ in range(1 if key.startswith("hf/") else args.repeats):
        sec, outputs[key] = timed(fn)
        times[key].append(sec)
    log(f"round {r}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in times.items()))
  med = {k: statistics.median(v) for k, v in times.items()}

  def paired(a, b):  # median over rounds of (round mean of a) / (round mean of b)
    def per_round(k):
      n = len(times[k]) // args.rounds
      return [statistics.mean(times[k][i * n:(i + 1) * n]) for i in range(args.rounds)]
    return statistics.median(x / y for x, y in zip(per_round(a), per_round(b)))

  per_setting = {}
  for name, (length, _) in settings.items():
    ours_ids = np.asarray(outputs[f"ours/{name}"].tool_ids)
    hf_ids = outputs[f"hf/{name}"]
    per_setting[name] = {
        "hf_s": med[f"hf/{name}"], "ours_s": med[f"ours/{name}"],
        "ours_unconstrained_s": med[f"ours_unconstrained/L{length}"],
        "speedup_vs_transformers": paired(f"hf/{name}", f"ours/{name}"),
        "constrained_over_unconstrained": paired(f"ours/{name}", f"ours_unconstrained/L{length}"),
        "speedup_of_medians": med[f"hf/{name}"] / med[f"ours/{name}"],
        "top1_agreement_with_transformers": float(np.mean(ours_ids[:, 0] == hf_ids[:, 0])),
        "top5_set_agreement_with_transformers": float(np.mean(
            [set(a) == set(b) for a, b in zip(ours_ids.tolist(), hf_ids.tolist())])),
        "hf_invalid_sequences": int((hf_ids < 0).sum()),
    }
  (_, _, _), (tbig, _, build_big) = growth[1000], growth[args.big]
  summary = {
      "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "queries": args.queries, "beam": args.beam,
      "tools": n_tools, "rounds": args.rounds, "codes": "synthetic random assignments (timing only)",
      "speedup_vs_transformers": min(s["speedup_vs_transformers"] for s in per_setting.values()),
      "constrained_over_unconstrained": max(s["constrained_over_unconstrained"] for s in per_setting.values()),
      "latency_growth_1k_to_1m": paired(f"ours/synthetic_{args.big}", "ours/synthetic_1000"),
      "search_only_growth_1k_to_1m": paired(f"search_only/synthetic_{args.big}", "search_only/synthetic_1000"),
      "search_only_ms_1k": 1e3 * med["search_only/synthetic_1000"],
      f"search_only_ms_{args.big}": 1e3 * med[f"search_only/synthetic_{args.big}"],
      "trie_bytes_per_tool_47k": bytes47["bytes_per_tool"], "trie_mb_47k": bytes47["device_bytes"] / 2**20,
      "trie_bytes_per_tool_1m": tbig.nbytes()["bytes_per_tool"], "trie_mb_1m": tbig.nbytes()["device_bytes"] / 2**20,
      "big": args.big, "trie_build_s_big": build_big,
      "settings": per_setting, "medians_s": med,
  }
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
