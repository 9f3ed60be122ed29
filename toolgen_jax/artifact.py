"""The trained artifact: a workdir's layout, its resolved config, and the trained model loaded back for use.

  workdir/config.json            the resolved config of the latest run (`load_config`)
  workdir/status.json            one line per finished pipeline step (`Workdir.mark`, `Workdir.done`)
  workdir/dataset/               ToolDataset (tools, queries with splits, trajectories, co-occurrence, manifest)
  workdir/embeddings/            tool-document embeddings, keyed by corpus + encoder (embeddings/gist: the gist encoder)
  workdir/codebook/              the Codebook (tool id <-> codes, quantiser state, stats, plots)
  workdir/checkpoints/<stage>/   orbax checkpoints of each training stage; metrics_<stage>.jsonl; tensorboard/
  workdir/checkpoints/<stage>/engine.npz   the code engine's trained slices of a stage (`train.engine='code'`)
  workdir/feature_cache/<stage>/ the frozen bottom's states per training example (code engine; fingerprinted .npy)
  workdir/model/                 the trained model: LlamaConfig, tokenizer with the tool tokens, params (`save_trained`)
  workdir/report.json, report.md, plots/   evaluation of the trained model next to the baselines
  workdir/dense/<key>/           the fine-tuned dense baseline (`eval.baselines` with 'dense'), keyed by pairs + settings

Evaluation (`toolgen_jax.evaluate`), chat, serving and the agent load a finished workdir through `load_trained`;
the pipeline writes it. Nothing here trains.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from toolgen_jax.code_vocab import CodeVocabulary
from toolgen_jax.models.vocab import Model

STEPS = ("corpus", "embeddings", "codebook", "model", "train", "evaluate", "report")
MODEL_DIR = "model"      # what marks a workdir as trained
DATASET_DIR = "dataset"  # ToolDataset.save() folder of the corpus the model was trained on


@dataclasses.dataclass
class Workdir:
  """A run's folder and its step bookkeeping (status.json): a finished step is loaded, not redone."""
  root: pathlib.Path

  def __post_init__(self):
    self.root = pathlib.Path(self.root)
    self.root.mkdir(parents=True, exist_ok=True)

  def __truediv__(self, name: str) -> pathlib.Path:
    return self.root / name

  @property
  def status_path(self) -> pathlib.Path:
    return self.root / "status.json"

  def status(self) -> dict:
    return json.loads(self.status_path.read_text()) if self.status_path.exists() else {}

  def done(self, step: str, redo=()) -> bool:
    return step not in tuple(redo) and bool(self.status().get(step, {}).get("done"))

  def mark(self, step: str, **info) -> None:
    s = self.status()
    s[step] = {"done": True, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
    tmp = self.status_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(s, indent=2, sort_keys=True, default=str))
    tmp.replace(self.status_path)

  def invalidate_after(self, step: str) -> None:
    """A redone step makes every later step stale."""
    s = self.status()
    for k in STEPS[STEPS.index(step) + 1:]:
      s.pop(k, None)
    self.status_path.write_text(json.dumps(s, indent=2, sort_keys=True, default=str))


# ---- the resolved config --------------------------------------------------------------------------------------

def write_config(config: ml_collections.ConfigDict, root: pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(root) / "config.json"
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  return path


def load_config(workdir, *, missing_ok: bool = False) -> ml_collections.ConfigDict:
  """The config a workdir was run with (its config.json) over today's defaults: fields the file lacks keep their
  defaults, fields today's config lacks are ignored, values are coerced to the default's type (JSON has no tuples).
  `missing_ok`: a folder without config.json gives the defaults (scoring baselines on a fresh folder).
  A config.json that is not JSON, holds a value of the wrong kind (`eval.ks: 5` for a list) or fails
  `config.validate` raises DataError naming the file (and the field)."""
  from toolgen_jax import config as config_lib
  from toolgen_jax.data._common import parse_json, read_text, value_type
  from toolgen_jax.data.records import DataError
  from toolgen_jax.data.report import LoadReport
  c = config_lib.base_config()
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists() and missing_ok:
    return c
  if not path.is_file():
    raise DataError(str(path), None, None, "no config.json here: is this a workdir of `toolgen_jax.main`?")
  saved = parse_json(read_text(path, LoadReport()), path)
  if not isinstance(saved, dict):
    raise DataError(str(path), None, None, f"expected a JSON object, got {value_type(saved)}")

  def fill(node, d, prefix=""):
    for k, v in d.items():
      if k not in node:
        continue
      default, field = node[k], prefix + k
      try:
        if isinstance(default, ml_collections.ConfigDict):
          if not isinstance(v, dict):
            raise TypeError(f"expected an object, got {value_type(v)}")
          fill(default, v, field + ".")
        elif isinstance(default, tuple) and not isinstance(v, list):
          raise TypeError(f"expected a list, got {value_type(v)}")
        elif isinstance(default, tuple):
          node[k] = tuple(v)
        elif isinstance(default, (bool, int, float, str)) and v is not None and not isinstance(v, type(default)):
          if isinstance(v, (dict, list)) or (isinstance(default, bool) and not isinstance(v, bool)):
            raise TypeError(f"expected {value_type(default)}, got {value_type(v)}")
          node[k] = type(default)(v)
        else:
          node[k] = v
      except (TypeError, ValueError) as e:
        if isinstance(e, DataError):
          raise
        raise DataError(str(path), None, field, str(e)) from None

  fill(c, saved)
  try:
    config_lib.validate(c)
  except config_lib.ConfigError as e:
    raise DataError(str(path), None, None, str(e)) from None
  return c


# ---- the trained model ----------------------------------------------------------------------------------------

def has_trained_model(workdir) -> bool:
  return (pathlib.Path(workdir) / MODEL_DIR / "params").is_dir()


def _jsonable(o):
  return dict(o) if isinstance(o, dict) else str(o)


def save_trained(root, model: Model, params) -> pathlib.Path:
  """workdir/model/: the extended model's LlamaConfig, its tokenizer (with the tool tokens) and the final params, so
  evaluation, chat and serving load the trained model without the pretrained checkpoint."""
  import orbax.checkpoint as ocp
  out = pathlib.Path(root) / MODEL_DIR
  out.mkdir(exist_ok=True)
  (out / "llama_config.json").write_text(json.dumps(dataclasses.asdict(model.config), indent=2, default=_jsonable))
  (out / "model.json").write_text(json.dumps({"new_token_start": model.new_token_start}))
  model.tokenizer.save(out / "tokenizer")
  ckpt = ocp.StandardCheckpointer()
  ckpt.save((out / "params").absolute(), jax.device_get(params), force=True)
  ckpt.wait_until_finished()
  return out


def agent_finish_id(codebook) -> int | None:
  """The Finish action's id in an agent trie (`Trained.trie(finish=True)`): one past the corpus's tool ids."""
  return None if codebook.finish_id is None else codebook.num_tools - 1


def build_trie(config, codebook, tokenizer, *, finish: bool = False):
  """The trie over the active corpus tools' codes (`CodeVocabulary.trie`); trie ids are corpus tool ids.

  The codebook's Finish row is not a tool: retrieval (finish=False) never decodes it; the agent (finish=True) gets
  it as tool id `agent_finish_id(codebook)`, one past the corpus's ids (codebook rows added after Finish shift
  down by one, so they stay corpus ids)."""
  vocab = CodeVocabulary(codebook, tokenizer)
  rows = codebook.tool_rows()
  ids = codebook.corpus_ids(rows)
  fin = codebook.finish_id
  if finish and fin is not None and codebook.active[fin]:
    rows, ids = np.append(rows, fin), np.append(ids, agent_finish_id(codebook))
  return vocab.trie(rows, ids, dense_budget_bytes=int(config.decode.dense_budget_bytes))


def tool_embedder(config, root: pathlib.Path | None, kind: str | None, model: Model | None):
  """(tools, docs) -> [M, ...] embeddings in the space a frozen quantiser reads, by the codebook's encoder kind
  (`Codebook.encoder['kind']`): 'llm_mean' the trained LLM's mean hidden states (post-guided codes), 'gist' the
  workdir's gist encoder, 'gist_tuned' that encoder on the trained LLM (post-guided gist codes), else the sentence
  encoder of `config.encoder`."""
  if kind == "llm_mean":
    from toolgen_jax.codebook import embed
    return lambda tools, docs: embed.llm_tool_embeddings(model.params, model.config, model.tokenizer, docs,
                                                         max_len=int(config.encoder.max_len))
  if kind == "gist_tuned":  # post-guided rounds of a gist codebook: the stored gist encoder on the tuned model
    from toolgen_jax.codebook import gist
    if root is None or model is None:
      raise ValueError("coding new tools with a refined gist codebook needs the workdir and its trained model")
    gcfg = gist.config_from(config.encoder, int(config.seed))
    return lambda tools, docs: gist.embed_with_backbone(pathlib.Path(root) / "embeddings" / "gist", model.params,
                                                        model.config, model.tokenizer, tools, gcfg)
  if kind == "gist":
    from toolgen_jax.codebook import gist
    from toolgen_jax.models import tokenizer as tok_lib
    from toolgen_jax.models import weights
    if root is None:
      raise ValueError("coding new tools with a gist codebook needs the workdir (its stored gist encoder)")
    tok = tok_lib.tokenizer_from_config(config.model)
    mcfg, params = weights.load_backbone(config.model, tok, int(config.seed))
    gcfg = gist.config_from(config.encoder, int(config.seed))
    gp, gm, ids, tokenize = gist.load_encoder(pathlib.Path(root) / "embeddings" / "gist", params, mcfg, tok, gcfg)
    return lambda tools, docs: gist.embed_tools(gp, gm, [gist.tool_fields(t) for t in tools], tokenize, ids, gcfg)
  from toolgen_jax.codebook import embed
  enc = embed.load_encoder(config.encoder.path or config.encoder.kind)
  return lambda tools, docs: enc.encode(docs, batch_size=int(config.encoder.batch_size),
                                        max_len=int(config.encoder.max_len))


@dataclasses.dataclass
class Trained:
  """A finished workdir in memory: its config, dataset, codebook and trained model (`model.params`)."""
  config: ml_collections.ConfigDict
  dataset: Any
  codebook: Any
  model: Model
  root: pathlib.Path | None = None  # the workdir (gist codebooks code new tools with its stored gist encoder)

  @property
  def code_vocab(self) -> CodeVocabulary:
    return CodeVocabulary(self.codebook, self.model.tokenizer)

  def trie(self, *, finish: bool = False):
    return build_trie(self.config, self.codebook, self.model.tokenizer, finish=finish)

  def retriever(self, **kw):
    from toolgen_jax.decoding.generative import GenerativeRetriever
    c = self.config
    kw = dict(beam_size=int(c.decode.beam_size), batch_size=int(c.eval.batch_size),
              alpha=float(c.decode.length_normalization), name=c.codebook.method,
              system_prompt=c.train.get("system_prompt"), normalize=c.decode.normalize) | kw
    return GenerativeRetriever(self.model.params, self.model.config, self.model.tokenizer, self.trie(), **kw)

  def add_tools(self, tools) -> Any:
    """Codes tools the model has never seen from their documents alone (frozen encoder + quantiser; Toolscaler
    Algorithm 1) and adds any new code tokens to the model. Returns the codebook's AddReport."""
    from toolgen_jax.data.documents import tool_document
    from toolgen_jax.models import vocab as vocab_lib
    tools = list(tools)
    docs = [tool_document(t, self.config.data.doc_template, self.config.data.doc_max_chars) for t in tools]
    x = tool_embedder(self.config, self.root, self.codebook.encoder.get("kind"), self.model)(tools, docs)
    report = self.codebook.add_tools(embeddings=x, names=[t.name for t in tools])
    missing = CodeVocabulary.missing_tokens(self.codebook, self.model.tokenizer)
    if missing:
      params, mcfg, tok = vocab_lib.extend_vocab(self.model.params, self.model.config, self.model.tokenizer, missing,
                                                 "random", rng=int(self.config.seed))
      self.model = dataclasses.replace(self.model, params=params, config=mcfg, tokenizer=tok)
    return report


def load_trained(workdir) -> Trained:
  """Config, dataset, codebook and trained model of a finished workdir (raises FileNotFoundError otherwise)."""
  import orbax.checkpoint as ocp
  from toolgen_jax import data
  from toolgen_jax.codebook import codebook as cb_lib
  from toolgen_jax.models import llama
  from toolgen_jax.models import tokenizer as tok_lib
  root = pathlib.Path(workdir)
  mdir = root / MODEL_DIR
  if not (mdir / "params").exists():
    raise FileNotFoundError(f"{root} holds no trained model ({mdir}/params is missing): run "
                            f"`python -m toolgen_jax.main --config=... --workdir={root}` first")
  config = load_config(root)
  raw = json.loads((mdir / "llama_config.json").read_text())
  mcfg = llama.LlamaConfig(**{k: (tuple(v) if k == "lora_targets" else v) for k, v in raw.items()})
  # Restored onto the default device as jax Arrays: without a sharding orbax returns NumPy arrays, which every
  # jitted call would copy to the device again (538 MB, ~0.15 s a call for SmolLM2-135M on CPU).
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          jax.eval_shape(lambda: llama.init_params(mcfg, jax.random.PRNGKey(0))))
  params = ocp.StandardCheckpointer().restore((mdir / "params").absolute(), abstract)
  tok = tok_lib.load_tokenizer(mdir / "tokenizer")
  start = json.loads((mdir / "model.json").read_text())["new_token_start"]
  return Trained(config=config, dataset=data.load_dataset(root / DATASET_DIR), codebook=cb_lib.load(root / "codebook"),
                 model=Model(config=mcfg, params=params, tokenizer=tok, new_token_start=start), root=root)
