"""The supervised dense baseline on the demo's data, next to BM25 and zero-shot MiniLM (issue #15).

  nice -n 15 python benchmarks/dense_baseline.py --workdir=/tmp/tg_dense [--steps=300 --batch_size=32 --max_len=128]

Loads the README demo's data exactly as `configs/default.py` does (BFCL, 2,555 tools, seeded 80/20 split: 1,999
training queries), builds the three baselines the pipeline builds (`evaluation.baseline_retrievers.from_config`:
the dense one fine-tuned on the training split only, cached in WORKDIR/dense, so a re-run only scores) and scores
the demo's test queries (`probes.evaluation_queries` without the probes: the first `eval.max_queries` = 160 test
queries) multi-domain, every tool a candidate, with the harness. Prints NDCG@1/3/5 x100 per method, the dense
training time (wall and process CPU seconds) and the load average, and a last JSON line with every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/tokenizers.py would shadow the
# `tokenizers` package: drop that folder, put the repo root first.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def demo_config(**dense):
  spec = importlib.util.spec_from_file_location("default_config", ROOT / "configs" / "default.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  with c.unlocked():
    for k, v in dense.items():
      if v is not None:
        c.eval[f"dense_{k}"] = v
  return c


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="/tmp/toolgen_jax_dense_baseline")
  p.add_argument("--steps", type=int, default=None, help="eval.dense_steps (default: the config's)")
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--max_len", type=int, default=None)
  p.add_argument("--methods", default="bm25,embedding,dense")
  a = p.parse_args(argv)
  from toolgen_jax import data
  from toolgen_jax.data.documents import documents_from_config
  from toolgen_jax.evaluation import baseline_retrievers, harness

  t0 = time.time()
  load0 = os.getloadavg()
  c = demo_config(steps=a.steps, batch_size=a.batch_size, max_len=a.max_len)
  ds = data.from_config(c.data, seed=int(c.seed))
  docs = documents_from_config(ds.corpus, c.data)
  test = [q for q in harness.select_split(ds.queries, str(c.eval.split), "bfcl") if q.split != "train"]
  test = test[:int(c.eval.max_queries)]
  out = {"tools": len(ds.corpus), "train_queries": sum(q.split == "train" for q in ds.queries),
         "test_queries": len(test), "dense": {k: c.eval[f"dense_{k}"] for k in
                                              ("steps", "batch_size", "learning_rate", "temperature", "max_len")},
         "methods": {}, "seconds": {}}
  for m in a.methods.split(","):
    t, cpu = time.time(), time.process_time()
    r = baseline_retrievers.from_config([m], docs, c, a.workdir, queries=ds.queries, log=print)[m]
    out["seconds"][f"{m}_build"] = round(time.time() - t, 1)
    out["seconds"][f"{m}_build_cpu"] = round(time.process_time() - cpu, 1)
    t = time.time()
    res = harness.evaluate(r, test, ks=tuple(c.eval.ks), settings=("multi-domain",), depth=int(c.eval.depth))
    out["seconds"][f"{m}_score"] = round(time.time() - t, 1)
    cell = res["multi-domain"][harness.ALL][harness.ALL]
    out["methods"][m] = {k: round(100 * cell[k], 1) for k in ("ndcg@1", "ndcg@3", "ndcg@5")}
    if m == "dense":  # the cache entry this run used: its training time and losses
      key = r.encoder.encoder_id.rsplit("-", 1)[-1]
      out["dense_meta"] = json.loads((pathlib.Path(a.workdir) / "dense" / key / "meta.json").read_text())
    print(f"{m:10s} " + "  ".join(f"{k} {v:5.1f}" for k, v in out["methods"][m].items()), flush=True)
  out["seconds"]["total"] = round(time.time() - t0, 1)
  out["loadavg_start"], out["loadavg_end"] = [round(x, 2) for x in load0], [round(x, 2) for x in os.getloadavg()]
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
