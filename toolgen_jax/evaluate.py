"""Scores a workdir's retriever and the baselines on any query file of a supported format.

  python -m toolgen_jax.evaluate --workdir=DIR --queries=FILE [--queries=FILE ...] [--add-tools-from=FILE ...]
      [--setting=multi-domain|in-domain|both] [--methods=bm25,embedding[,dense][,model]] [--split=auto|test|...]
      [--corpus=pooled|per-file] [--perplexity]

A query spec is `PATH` (format detected) or `SOURCE:PATH` with SOURCE one of the `toolgen_jax.data` readers
(stabletoolbench, beir, bfcl, gorilla, toolbench, ...). The corpus scored against is the union of the workdir's
own tools (when it has a saved dataset), the tools documented in `--add-tools-from` files and the tools of every
query file. In the multi-domain setting every one of them is a candidate (`--corpus=pooled`, the model's view), or
only the file's own tools plus the added ones (`--corpus=per-file`, each benchmark on its own corpus as the papers
report it; a tool whose key two files share keeps the first file's doc). The `dense` baseline (MiniLM fine-tuned on
training queries) trains on the workdir dataset's training split when the workdir has one, else on the query files'
training splits, never on a text that is scored here; its weights are cached in DIR/dense. Writes
`DIR/evaluate/report.json`, `report.md` and `plots/`. Kept thin: `run(...)` is what a notebook calls.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

import ml_collections

from toolgen_jax import artifact
from toolgen_jax.data.records import DataError
from toolgen_jax.evaluation import baseline_retrievers, bm25
from toolgen_jax.evaluation.harness import select_split

WORKDIR_DATASET = artifact.DATASET_DIR
WORKDIR_MODEL = artifact.MODEL_DIR
BASELINES = baseline_retrievers.BASELINES


class NoTrainedModelError(FileNotFoundError):
  pass


def detect_source(path: pathlib.Path) -> str:
  """The reader for `path`, from its layout; raises ValueError asking for `SOURCE:PATH` when unsure."""
  if path.is_dir():
    if (path / "manifest.json").exists():
      return "saved"
    if (path / "corpus.jsonl").exists():
      return "beir"
    if list(path.glob("BFCL_v4_*.json")):
      return "bfcl"
    if list(path.glob("api/*_api.jsonl")) or list(path.glob("data/api/*_api.jsonl")):
      return "gorilla"
    if list(path.glob("G*_instruction.json")) or (path / "test_instruction").is_dir() or \
        (path / "solvable_queries").is_dir():
      return "stabletoolbench"
  elif path.is_file():
    if path.name.startswith("BFCL_v4_"):
      return "bfcl"
    if path.name.endswith("_api.jsonl"):
      return "gorilla"
    if path.suffix == ".json":
      with open(path, encoding="utf-8") as f:
        head = f.read(4096)
      if head.lstrip().startswith("[") and '"api_list"' in head:
        return "stabletoolbench"
  raise ValueError(f"cannot tell the format of {path}; write SOURCE:PATH (e.g. stabletoolbench:{path})")


def load_spec(spec: str):
  """`[SOURCE:]PATH` -> (label, ToolDataset)."""
  from toolgen_jax.data import dataset as dataset_lib
  from toolgen_jax.data.readers import READERS, load_source

  source, _, rest = spec.partition(":")
  if rest and (source in READERS or source == "saved"):
    path = pathlib.Path(rest)
  else:
    source, path = "", pathlib.Path(spec)
  if not path.exists():
    raise DataError(str(path), None, None, "no such file or folder")
  source = source or detect_source(path)
  ds = dataset_lib.load(path) if source == "saved" else load_source(source, path)
  return f"{source}:{path.name}", ds


def load_model_retriever(workdir: pathlib.Path, corpus, config: ml_collections.ConfigDict):
  """The trained generative retriever of `workdir` over `corpus` (a `Retriever`).

  Tools of `corpus` the model does not know must first get codes through the codebook's `add_tools` (no training
  on queries). Raises NoTrainedModelError when the workdir holds no trained model.
  """
  if not artifact.has_trained_model(workdir):
    raise NoTrainedModelError(
        f"{workdir} has no trained model ({WORKDIR_MODEL}/ is missing or empty): run `python -m toolgen_jax.main "
        f"--config=... --workdir={workdir}` first, or evaluate the baselines only with --methods=bm25,embedding")
  trained = artifact.load_trained(workdir)
  known = len(trained.codebook.codes)
  new = [t for t in corpus if t.id >= known]  # workdir tools come first in the merged corpus, keeping their ids
  if new:
    rep = trained.add_tools(new)
    print(f"[evaluate] coded {len(new)} new tools with the frozen encoder + quantiser "
          f"(collision rate {rep.collision_rate:.3f}, moved {int(rep.moved.sum())})")
  return trained.retriever()


def build_corpus(workdir: pathlib.Path, query_specs: Sequence[str], add_tools_from: Sequence[str]):
  """Merges workdir dataset + --add-tools-from + query files (workdir tools keep their ids: they come first).

  Returns (merged dataset, {label: queries of that file}, {label: merged ids of that file's tools},
  merged ids of the added tools, the workdir dataset's queries in merged ids (None without one))."""
  from toolgen_jax.data import dataset as dataset_lib

  parts = []
  if (workdir / WORKDIR_DATASET / "manifest.json").exists():
    parts.append(("workdir", dataset_lib.load(workdir / WORKDIR_DATASET), False))
  parts += [(*load_spec(s), False) for s in add_tools_from]
  parts += [(*load_spec(s), True) for s in query_specs]
  merged = dataset_lib.merge([ds for _, ds, _ in parts]) if len(parts) > 1 else parts[0][1]
  per_file, file_tools, added, start, own = {}, {}, set(), 0, None
  for label, ds, is_query_file in parts:  # merge keeps each dataset's queries contiguous and in order
    ids = {merged.corpus.id_of(*t.key) for t in ds.corpus}
    if is_query_file:
      name, i = label, 2
      while name in per_file:
        name, i = f"{label}#{i}", i + 1
      per_file[name] = merged.queries[start:start + len(ds.queries)]
      file_tools[name] = ids
    else:
      added |= ids
      if label == "workdir":
        own = merged.queries[start:start + len(ds.queries)]
    start += len(ds.queries)
  return merged, per_file, file_tools, added, own


def make_baselines(methods: Sequence[str], documents: list[str], config: ml_collections.ConfigDict,
                   workdir: pathlib.Path, *, train_queries=(), scored=()) -> dict:
  """The baselines of `methods` (`baseline_retrievers.from_config`); `dense` trains on the training split of
  `train_queries` minus any text of a `scored` query outside the training split."""
  from toolgen_jax.data.dataset import TRAIN_SPLITS
  held_out = [q.text for q in scored if q.split not in TRAIN_SPLITS]
  return baseline_retrievers.from_config(methods, documents, config, workdir, queries=train_queries,
                                         held_out_texts=held_out)


def run(workdir: str, queries: Sequence[str], *, add_tools_from: Sequence[str] = (), settings: Sequence[str] = (),
        methods: Sequence[str] | None = None, split: str | None = None, out_dir: str | None = None,
        corpus: str = "pooled", perplexity: bool = False) -> dict:
  """Evaluates and writes the report; returns the report dict (layout in `toolgen_jax.evaluation.report`)."""
  from toolgen_jax.data.documents import documents_from_config
  from toolgen_jax.evaluation import harness, report as report_lib

  wd = pathlib.Path(workdir)
  if not queries:
    raise ValueError("give at least one --queries file")
  config = artifact.load_config(wd, missing_ok=True)
  if not methods and not artifact.has_trained_model(wd):  # a mistyped workdir must not pass as a baseline run
    raise NoTrainedModelError(
        f"{wd} holds no trained model ({artifact.MODEL_DIR}/params is missing): check the path, or score the "
        f"baselines alone with --methods={','.join(BASELINES)}")
  methods = list(methods) if methods else list(config.eval.baselines) + ["model"]  # dense only where configured
  unknown = set(methods) - set(BASELINES) - {"model"}
  if unknown:
    raise ValueError(f"unknown methods {sorted(unknown)}; available: {', '.join(BASELINES)}, model")
  settings = tuple(settings) or tuple(config.eval.settings)
  split = config.eval.split if split is None else split
  if corpus not in ("pooled", "per-file"):
    raise ValueError(f"corpus must be 'pooled' or 'per-file', got {corpus!r}")
  dataset, per_file, file_tools, added, own = build_corpus(wd, queries, add_tools_from)
  scored = {label: select_split(qs, split, label) for label, qs in per_file.items()}
  retrievers = {}
  if "model" in methods:
    retrievers["model"] = load_model_retriever(wd, dataset.corpus, config)
  documents = documents_from_config(dataset.corpus, config.data)
  retrievers.update(make_baselines([m for m in methods if m != "model"], documents, config, wd,
                                   train_queries=dataset.queries if own is None else own,
                                   scored=[q for qs in scored.values() for q in qs]))
  files = {}
  for label, qs in scored.items():
    universe = None if corpus == "pooled" else tuple(sorted(file_tools[label] | added))
    results = {}
    for name, r in retrievers.items():
      if name == "bm25" and universe is not None:
        r = bm25.from_config(documents, config.eval, universe)
      baseline = name in BASELINES  # cheap per query: one call (the encoder batches itself)
      results[name] = harness.evaluate(r, qs, ks=tuple(config.eval.ks),
                                       recall_ks=tuple(config.eval.ks) + tuple(config.eval.recall_ks),
                                       settings=settings, depth=config.eval.depth if baseline else None,
                                       batch_size=None if baseline else config.eval.batch_size,
                                       progress=f"{label} {name}", universe=universe)
    files[label] = {"n_queries": len(qs), "n_tools": len(dataset.corpus) if universe is None else len(universe),
                    "methods": results}
  report = {"files": files}
  if perplexity:  # language preservation: the base checkpoint here; tuned models through the pipeline's hook
    from toolgen_jax.evaluation import perplexity as ppl_lib
    report["perplexity"] = {f"base ({config.model.checkpoint})": ppl_lib.checkpoint_perplexity(
        config.model.checkpoint, config.eval)}
  report["meta"] = {"workdir": str(wd), "queries": list(queries), "add_tools_from": list(add_tools_from),
                    "num_tools": len(dataset.corpus), "settings": list(settings), "methods": list(retrievers),
                    "split": split, "corpus": corpus, "doc_template": config.data.doc_template}
  paths = report_lib.write_report(report, pathlib.Path(out_dir) if out_dir else wd / "evaluate")
  report["paths"] = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in paths.items()}
  return report


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m toolgen_jax.evaluate", description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--queries", action="append", default=[], metavar="[SOURCE:]PATH", required=True)
  p.add_argument("--add-tools-from", "--add_tools_from", action="append", default=[], metavar="[SOURCE:]PATH")
  p.add_argument("--setting", choices=("multi-domain", "in-domain", "candidates", "both"), default=None,
                 help="in-domain: the query group's tools (the papers'); candidates: the query's own api_list; "
                      "both: the workdir config's eval.settings")
  p.add_argument("--methods", default=None,
                 help="comma list of bm25, embedding, dense, model (default: the workdir config's "
                      "eval.baselines and model)")
  p.add_argument("--split", default=None, help="auto (test, else eval, else all) | '' (all) | a split name")
  p.add_argument("--corpus", choices=("pooled", "per-file"), default="pooled",
                 help="multi-domain candidates: every loaded tool (pooled) or the file's own + added tools")
  p.add_argument("--perplexity", action="store_true",
                 help="also score the base checkpoint's held-out perplexity (pydoc_data prose; minutes on CPU)")
  p.add_argument("--out", default=None, help="output folder (default WORKDIR/evaluate)")
  a = p.parse_args(argv)
  settings = () if a.setting in (None, "both") else (a.setting,)
  methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else None
  try:
    rep = run(a.workdir, a.queries, add_tools_from=a.add_tools_from, settings=settings, methods=methods,
              split=a.split, out_dir=a.out, corpus=a.corpus, perplexity=a.perplexity)
  except (NoTrainedModelError, DataError, ValueError, NotImplementedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(pathlib.Path(rep["paths"]["markdown"]).read_text())
  print(f"report: {rep['paths']['json']}  plots: {', '.join(rep['paths']['plots'])}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
