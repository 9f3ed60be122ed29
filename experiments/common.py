"""What every script in `experiments/` shares: the configuration of one experiment point, running it through the
pipeline (or reading back a finished run), the figures of its report, and writing a Markdown table + a PNG.

The scale (why it is this small): the code engine (`configs/default.py`: SmolLM2-135M frozen, feature cache, trie
loss, mixed schedule, text term) is the training that learns on this 2-core CPU, and its cost is the cache pass, one
SmolLM2 forward per training example per codebook (a level-2 position reads the level-1 code token). A point here
is the first `tools` BFCL tools (200 by default; `data.max_tools` keeps tool ids below it and the queries whose
tools all are) with their questions (242 training, 68 test at 200 tools), one view per tool, 40 epochs, K = 32 codes
per level, L = 2 (K^L = 5x the tools; ToolWeaver uses 1024^2 for 47k tools): about 3-5 minutes per point here.
Points are keyed by their whole resolved config, so experiments that share a point (ToolWeaver at lambda = 1, K = 32,
L = 2 is the lambda sweep's, the K/L sweep's and the tokenization table's) train it once, in `--runs`.

`--smoke` swaps SmolLM2 for `configs/tiny.py`'s random 2-layer Llama on 48 tools (tests; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import pathlib
import shlex
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# Tokenizer name (the papers' words) -> the config file that sets its codebook and code-token init.
METHOD_CONFIGS = {"atomic": "toolgen", "numerical": "numerical", "hierarchical": "hierarchical",
                  "semantic": "semantic", "toolweaver": "toolweaver", "toolscaler": "toolscaler"}
# What makes `configs/default.py` the code engine (its values are read from that file, not repeated here).
ENGINE_FIELDS = ("train.engine", "train.frozen_layers", "train.code_loss", "train.schedule", "train.text_weight",
                 "train.batch_size", "decode.normalize", "eval.perplexity_tokens")
SMOKE_TOOLS = 48


def load_config_file(name: str, arg: str | None = None):
  """configs/NAME.py's get_config(arg) (arg None: the file's default variant)."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config() if arg is None else mod.get_config(arg)


def _get(c, dotted: str):
  for part in dotted.split("."):
    c = c[part]
  return c


def _set(c, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  for part in parents:
    c = c[part]
  c[leaf] = value


def point_config(method: str, *, smoke: bool = False, tools: int = 200, size: int = 32, levels: int = 2,
                 epochs: float = 40.0, overrides: dict | None = None):
  """The config of one experiment point: the code engine of `configs/default.py` (smoke: `configs/tiny.py` with
  the engine on its 2 layers) with `method`'s codebook section and code-token init (`METHOD_CONFIGS`), the first
  `tools` BFCL tools, K = `size`, L = `levels`, one view per tool, `epochs` epochs of the mixed schedule, scored
  multi-domain (every tool a candidate) on the test split plus 20 training queries and 20 own documents.
  `overrides`: {dotted field: value} applied last (ToolWeaver is given Eq. 6, `collab_form='paper'`, Fig. 2's loss)."""
  from toolgen_jax import config as config_lib
  engine = load_config_file("default")
  c = load_config_file("tiny") if smoke else engine
  m = load_config_file(METHOD_CONFIGS[method], "small")
  c.unlock()
  kept = {k: c.codebook[k] for k in ("rqvae_hidden", "code_dim", "steps", "batch_size")}
  c.codebook = m.codebook.copy_and_resolve_references()
  c.vocab.init = m.vocab.init
  for f in ENGINE_FIELDS:
    _set(c, f, _get(engine, f))
  if smoke:  # tiny's small RQ-VAE, and the engine on every layer of its random 2-layer model
    for k, v in kept.items():
      c.codebook[k] = v
    c.train.frozen_layers = int(c.model.random.num_layers)
    c.eval.perplexity_tokens = 256
  c.data.max_tools = int(tools)
  c.data.max_queries = -1
  c.codebook.size = int(size)
  c.codebook.levels = int(levels)
  if method == "toolweaver":
    c.codebook.collab_form = "paper"
  c.train.memorization_views = ("name_description",)
  c.train.stage_epochs.mixed = float(epochs)
  c.train.progress_bar = False
  c.train.tensorboard = False
  c.train.async_checkpoint = False
  c.eval.settings = ("multi-domain",)
  c.eval.max_queries = -1
  c.eval.train_queries = 20
  c.eval.memorization_tools = 20
  for k, v in (overrides or {}).items():
    _set(c, k, v)
  c.lock()
  return config_lib.validate(c)


def point_key(method: str, config) -> str:
  """A readable, unique workdir name: method, tools, K, L and a hash of the whole resolved config (a changed field
  never resumes another point's artifacts; experiments asking for the same config share the point)."""
  digest = hashlib.sha1(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:8]
  c = config.codebook
  return f"{method}-n{config.data.max_tools}-k{c.size}-l{c.levels}-{digest}"


def cli_command(method: str, config, workdir: pathlib.Path, smoke: bool) -> str:
  """The `toolgen_jax.main` command that trains the same point (what a reader reruns)."""
  base = load_config_file("tiny" if smoke else "default")
  diffs = []

  def walk(a, b, prefix=""):
    for k in a.keys():
      va, vb = a[k], (b[k] if k in b else None)
      if hasattr(va, "keys"):
        walk(va, vb, f"{prefix}{k}.")
      elif va != vb:  # ml_collections parses a tuple from its Python literal, a string as written
        diffs.append(f"--config.{prefix}{k}=" + (_tuple_literal(va) if isinstance(va, tuple) else shlex.quote(str(va))))
  walk(config, base)
  cfg = "configs/tiny.py" if smoke else "configs/default.py"
  return f"python -m toolgen_jax.main --config={cfg} --workdir={workdir} " + " ".join(diffs)


def _tuple_literal(t: tuple) -> str:
  items = ", ".join(json.dumps(x) for x in t) + ("," if len(t) == 1 else "")
  return f"'({items})'"


def run_point(method: str, config, runs, *, smoke: bool = False) -> dict:
  """Trains and evaluates one point with `pipeline.run` in its own workdir under `runs` (resumed: a finished point
  is read back from its report.json). Returns {"report", "workdir", "command", "seconds", "config"}."""
  wd = pathlib.Path(runs) / point_key(method, config)
  meta = wd / "point.json"
  with point_lock(wd):
    if not (meta.exists() and (wd / "report.json").exists()):
      from toolgen_jax import pipeline
      print(f"[experiments] {wd.name}: training", flush=True)
      t0 = time.perf_counter()
      pipeline.run(config, str(wd))
      meta.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1),
                                  "command": cli_command(method, config, wd, smoke)}))
  info = json.loads(meta.read_text())
  return {"report": json.loads((wd / "report.json").read_text()), "workdir": wd, "config": config, **info}


# Tokenizers the code engine cannot train: it trains the new tokens' own rows on a frozen backbone, and semantic ids
# are the LLM's own sub-words (no new token; the engine stops on an empty code table). The recipe engine
# (`configs/semantic.py:small`) trains it, but differently from every other point here, so it is not mixed in.
NOT_ON_ENGINE = {"semantic": "not run: no new tokens, and the code engine trains only new rows"}


@contextlib.contextmanager
def point_lock(wd: pathlib.Path):
  """Two experiment scripts asking for one point at once: the second waits for the first (lock file = its pid)
  rather than training in the same workdir; a lock whose process is gone is taken over."""
  wd.mkdir(parents=True, exist_ok=True)
  lock = wd / "point.lock"
  while True:
    try:
      fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      break
    except FileExistsError:
      try:
        os.kill(int(lock.read_text() or 0), 0)
      except (ProcessLookupError, ValueError):
        lock.unlink(missing_ok=True)
        continue
      print(f"[experiments] {wd.name}: another script is training it, waiting", flush=True)
      time.sleep(30)
  os.write(fd, str(os.getpid()).encode())
  os.close(fd)
  try:
    yield
  finally:
    lock.unlink(missing_ok=True)


def reuse_embeddings(wd: pathlib.Path) -> None:
  """Copies a sibling point's tool embeddings (same corpus cut: `-n{tools}-` in the name) into `wd` before its
  pipeline runs: MiniLM over 2,555 documents is minutes here, and `embed.cached_encode` re-encodes anyway when the
  copied cache's key (documents + encoder) does not match."""
  import shutil
  if (wd / "embeddings").exists():
    return
  tools = wd.name.split("-")[1]
  for other in sorted(wd.parent.glob(f"*-{tools}-*/embeddings")):
    if other.parent != wd and any(other.iterdir()):
      shutil.copytree(other, wd / "embeddings")
      return


def point_row(method: str, config, args, /, **row) -> dict:
  """`row` + the point's `figures` and command; a point that fails is a row with its error (the table says so)."""
  if method in NOT_ON_ENGINE:
    return {**row, "error": NOT_ON_ENGINE[method]}
  try:
    p = run_point(method, config, args.runs, smoke=args.smoke)
  except Exception as e:  # pylint: disable=broad-except  (one failed point must not lose the others)
    print(f"[experiments] {method}: {type(e).__name__}: {e}", flush=True)
    return {**row, "error": f"{type(e).__name__}: {str(e)[:160]}"}
  return {**row, **figures(p), "command": p["command"]}


def figures(point: dict) -> dict:
  """The point's figures (x100, multi-domain, every tool a candidate): the model's NDCG@1/@5 on the test queries,
  NDCG@1 on training queries and own documents, BM25 and MiniLM NDCG@1 on the same test queries, tuned / base
  perplexity (full vocabulary and tool tokens masked), the codebook's collision rate after its policy, wall time."""
  rep, cfg = point["report"], point["config"]
  methods = rep["files"][cfg.data.source]["methods"]
  md = lambda name, split, k: pct(methods.get(name, {}).get("multi-domain", {}).get(split, {}).get("all", {}), k)
  me = cfg.codebook.method
  ppl = rep.get("perplexity") or {}
  ratio = lambda key: (round(ppl[key]["perplexity"] / ppl["base"]["perplexity"], 3)
                       if key in ppl and "base" in ppl else None)
  cb = rep.get("meta", {}).get("codebook", {})
  sharing = rep.get("codebook", {}).get(me, {}).get("cooccurring_prefix_sharing")
  test = methods.get(me, {}).get("multi-domain", {}).get("test", {}).get("all", {})
  return {"test_ndcg@1": md(me, "test", "ndcg@1"), "test_ndcg@5": md(me, "test", "ndcg@5"),
          "train_ndcg@1": md(me, "train", "ndcg@1"), "docs_ndcg@1": md(me, "memorisation", "ndcg@1"),
          "bm25_ndcg@1": md("bm25", "test", "ndcg@1"), "minilm_ndcg@1": md("embedding", "test", "ndcg@1"),
          "test_queries": test.get("n"), "ppl_base": (ppl.get("base") or {}).get("perplexity"),
          "ppl_tuned": (ppl.get("tuned") or {}).get("perplexity"), "ppl_ratio": ratio("tuned"), "ppl_ratio_masked":
          ratio("tuned (tool tokens masked)"), "collision_rate": cb.get("rate_after"),
          "new_tokens": cb.get("new_tokens"), "edges_sharing_level1": None if not sharing else round(sharing[0], 3),
          "seconds": point["seconds"]}


def pct(cell: dict, k: str):
  return None if k not in cell else round(100 * float(cell[k]), 1)


# ---- outputs -----------------------------------------------------------------------------------------------------

def parser(name: str, doc: str) -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default=str(ROOT / "workdirs" / "experiments" / name), help="table + PNG go here")
  ap.add_argument("--runs", default=str(ROOT / "workdirs" / "experiments" / "runs"),
                  help="the points' workdirs (shared by every experiment: a point trains once)")
  ap.add_argument("--smoke", action="store_true", help="configs/tiny.py's random 2-layer model, 48 tools (tests)")
  ap.add_argument("--tools", type=int, default=200, help="first N BFCL tools (smoke: 48)")
  ap.add_argument("--size", type=int, default=32, help="K, codes per level (smoke: 8)")
  ap.add_argument("--epochs", type=float, default=40.0, help="epochs of the mixed schedule (smoke: 2)")
  return ap


def scale(args) -> dict:
  """point_config's scale keywords from the common flags (smoke shrinks them)."""
  if args.smoke:
    return dict(smoke=True, tools=min(args.tools, SMOKE_TOOLS), size=min(args.size, 8), epochs=min(args.epochs, 2.0))
  return dict(smoke=False, tools=args.tools, size=args.size, epochs=args.epochs)


def fmt(v, spec: str = ".1f") -> str:
  if v is None:
    return "—"
  return format(v, spec) if isinstance(v, float) else str(v)


def markdown_table(columns, rows: list[dict]) -> str:
  """columns: (row key, header[, format spec of floats, default '.1f']) tuples."""
  lines = ["| " + " | ".join(c[1] for c in columns) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
  lines += ["| " + " | ".join(fmt(r.get(c[0]), *c[2:]) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def write(name: str, args, *, title: str, columns, rows, plot, notes: str = "", t0: float) -> dict:
  """Writes OUT/NAME.md (title, scale, table, notes, each point's command) and OUT/NAME.png (`plot(ax)` draws it),
  prints the final JSON line and returns it."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  plot(ax)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  png = out / f"{name}.png"
  fig.savefig(png, dpi=110)
  plt.close(fig)
  if any(r.get("error") for r in rows):
    columns = list(columns) + [("error", "error")]
  table = markdown_table(columns, rows)
  commands = sorted({r["command"] for r in rows if r.get("command")})
  md = out / f"{name}.md"
  md.write_text(f"# {title}\n\nScale: {json.dumps(scale(args))}\n\n{table}\n\n{notes}\n\n" +
                ("Points (each resumable):\n\n" + "\n".join(f"    {c}" for c in commands) + "\n" if commands else ""))
  print(table, flush=True)
  line = {"experiment": name, "table": str(md), "png": str(png), "seconds": round(time.perf_counter() - t0, 1),
          "rows": [{k: v for k, v in r.items() if k != "command"} for r in rows]}
  print(json.dumps(line, default=str), flush=True)
  return line


def line_plot(xs, series: dict, *, xlabel: str, ylabel: str = "NDCG@1 x100", logx: bool = False):
  """plot(ax) for write(): one line per series {label: ys} (None = not measured)."""
  def draw(ax):
    for label, ys in series.items():
      pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if logx:
      ax.set_xscale("symlog", linthresh=min([x for x in xs if x > 0] or [1]))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
  return draw


def bar_plot(labels, series: dict, *, ylabel: str = "NDCG@1 x100"):
  """plot(ax) for write(): grouped bars, one group per label, one bar per series {name: values}."""
  def draw(ax):
    width = 0.8 / max(len(series), 1)
    for i, (name, ys) in enumerate(series.items()):
      ax.bar([j + i * width for j in range(len(labels))], [y or 0 for y in ys], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
  return draw
