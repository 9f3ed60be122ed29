"""The `Codebook` artifact: tool id <-> code sequence, the frozen quantiser, the encoder identity and the config.

    cb = codebook.build(config.codebook, embeddings, tool_names, cooccurrence=graph, encoder_info=enc_info)
    cb.codes            # [N, L] int32, -1 padded (variable length: suffix level, hierarchical/semantic codes)
    cb.codes[cb.active] # what the trie is built from: retired tools can never be generated
    cb.add_tools(embeddings=new_x)   # Toolscaler Algorithm 1: frozen encoder + quantiser, collisions reported
    cb.remove_tools([3, 17])
    cb.add_finish(embeddings=finish_x)  # agent tuning: the Finish action as one more code sequence (cb.finish_id)
    cb.tool_rows()      # active rows that are tools of the corpus (Finish excluded): what retrieval decodes
    cb.save(workdir / "codebook"); codebook.load(workdir / "codebook")

The codebook holds codes only; the tokens the LLM spells them with are `toolgen_jax.code_vocab`'s (the one owner of
the code -> token mapping).

Codes are never reassigned once the artifact exists (a trained model depends on them): `add_tools` only moves
*new* tools away from occupied codes, and retired tools keep their codes reserved.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax.codebook import baselines, collisions
from toolgen_jax.codebook import kmeans as km
from toolgen_jax.codebook import residual_kmeans as rkm
from toolgen_jax.codebook import rqvae
from toolgen_jax.codebook import pca as pca_lib
from toolgen_jax.data.records import DataError

FORMAT_VERSION = 3  # 2: RQ-VAE input standardisation stored with the quantiser ('q/norm/...'); 3: finish_id
READABLE_VERSIONS = (2, 3)  # a version-2 codebook reads as one without a Finish entry (finish_id None)
FINISH_NAME = "Finish"
METHODS = ("rqvae", "residual_kmeans", "atomic", "numerical", "hierarchical", "semantic")
TOKEN_KINDS = {"rqvae": "codes", "residual_kmeans": "codes", "numerical": "codes", "hierarchical": "codes",
               "atomic": "atomic", "semantic": "vocab"}


@dataclasses.dataclass(frozen=True)
class AddReport:
  ids: np.ndarray        # [M] new tool ids
  collided: np.ndarray   # [M] bool: the frozen quantiser's code was already taken
  moved: np.ndarray      # [M] bool: the tool was moved to a free code (always == collided)
  codes: np.ndarray      # [M, L] final codes

  @property
  def collision_rate(self) -> float:
    return float(self.collided.mean()) if len(self.collided) else 0.0


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}/"))
  else:
    out[prefix[:-1]] = np.asarray(tree)
  return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  out: dict = {}
  for k, v in flat.items():
    node = out
    parts = k.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out


class Codebook:
  """See the module docstring. Mutating methods (`add_tools`, `remove_tools`) bump `revision`."""

  def __init__(self, method: str, codes: np.ndarray, level_sizes: Sequence[int], *, active: np.ndarray | None = None,
               tool_names: Sequence[str] | None = None, quantizer: Mapping[str, np.ndarray] | None = None,
               quantizer_config: Mapping[str, Any] | None = None, encoder: Mapping[str, Any] | None = None,
               config: Mapping[str, Any] | None = None, revision: int = 0,
               collision_report: Mapping[str, Any] | None = None, finish_id: int | None = None):
    if method not in METHODS:
      raise ValueError(f"unknown codebook method {method!r}; supported: {METHODS}")
    codes = np.asarray(codes, np.int32)
    if codes.ndim != 2:
      raise ValueError(f"codes must be [N, L], got {codes.shape}")
    self.method = method
    self.codes = codes
    self.level_sizes = [int(k) for k in level_sizes]
    self.active = np.ones(len(codes), bool) if active is None else np.asarray(active, bool).copy()
    self.tool_names = list(tool_names) if tool_names is not None else [str(i) for i in range(len(codes))]
    self.quantizer = dict(quantizer or {})
    self.quantizer_config = dict(quantizer_config or {})
    self.encoder = dict(encoder or {})
    self.config = dict(config or {})
    self.revision = int(revision)
    self.collision_report = dict(collision_report or {})
    if len(self.tool_names) != len(codes) or len(self.active) != len(codes):
      raise ValueError("codes, active and tool_names must have one row per tool")
    if finish_id is not None and not 0 <= int(finish_id) < len(codes):
      raise ValueError(f"finish_id={finish_id} is not a row of the {len(codes)}-row codebook")
    # The Finish action's row (agent tuning, ToolGen stage 3): a code sequence like a tool's, so the trie can decode
    # it, but no tool of the corpus; retrieval never returns it (`tool_rows`). None: not agent-tuned.
    self.finish_id = None if finish_id is None else int(finish_id)

  # --- lookups ---------------------------------------------------------------------------------------------
  @property
  def num_tools(self) -> int:
    return len(self.codes)

  @property
  def num_levels(self) -> int:
    return self.codes.shape[1]

  @property
  def token_kind(self) -> str:
    return TOKEN_KINDS[self.method]

  @property
  def collision_policy(self) -> str:
    """How this codebook handles tools with equal codes (`collisions.POLICIES`): 'unique' guarantees one tool per
    code sequence; 'sinkhorn' (ToolWeaver) and 'report' (Toolscaler) may leave tools sharing one. A codebook saved
    before the setting existed reads as its `resolve` flag said."""
    return str(self.config.get("collisions", "unique" if self.config.get("resolve", True) else "report"))

  @property
  def shares_codes(self) -> bool:
    """Whether several tools may share one code sequence (the trie then gives a leaf to all of them)."""
    return self.collision_policy != "unique"

  def tool_rows(self) -> np.ndarray:
    """[M] the active rows that are tools of the corpus: every active row except Finish (what retrieval decodes)."""
    keep = self.active.copy()
    if self.finish_id is not None:
      keep[self.finish_id] = False
    return np.nonzero(keep)[0]

  def corpus_ids(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """Corpus tool ids of codebook rows. Finish is a row but not a tool, so rows after it (tools added later through
    `add_tools`) shift down by one and keep the corpus's numbering; the Finish row itself has no corpus id."""
    rows = np.asarray(rows, np.int64)
    if self.finish_id is None:
      return rows
    if (rows == self.finish_id).any():
      raise ValueError(f"row {self.finish_id} is the Finish entry, not a corpus tool")
    return np.where(rows > self.finish_id, rows - 1, rows)

  def code_of(self, tool: int) -> tuple[int, ...]:
    return tuple(int(c) for c in self.codes[tool] if c >= 0)

  def tool_of(self, code: Sequence[int]) -> int | None:
    """The tool with exactly this code sequence (active or retired), or None."""
    key = tuple(int(c) for c in code)
    table = getattr(self, "_lookup", None)
    if table is None or getattr(self, "_lookup_rev", -1) != (self.revision, self.num_tools):
      table = {self.code_of(i): i for i in range(self.num_tools)}
      self._lookup, self._lookup_rev = table, (self.revision, self.num_tools)
    return table.get(key)

  def members(self, level: int, code: int, active_only: bool = True) -> np.ndarray:
    """Tool ids whose code at `level` is `code` (the tools a code token stands for)."""
    m = self.codes[:, level] == code
    if active_only:
      m &= self.active
    return np.nonzero(m)[0]

  # --- lifecycle -------------------------------------------------------------------------------------------
  def remove_tools(self, ids: Sequence[int]) -> None:
    """Retires tools: they leave `codes[active]` (so the trie can never generate them); codes stay reserved."""
    ids = np.asarray(ids, np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= self.num_tools):
      raise ValueError(f"remove_tools: ids must be in [0, {self.num_tools})")
    self.active[ids] = False
    self.revision += 1

  def add_tools(self, embeddings: np.ndarray | None = None, *, docs: Sequence[str] | None = None,
                names: Sequence[str] | None = None, own_code: bool = False) -> AddReport:
    """Codes new tools with the frozen encoder and quantiser (no retraining; Toolscaler Algorithm 1).

    Give `embeddings` [M, D] (same encoder as the corpus) or `docs` (encoded here with the recorded encoder).
    `AddReport.collided` says which new tools got a code that was already taken. Under the 'report' policy
    (Toolscaler) such a tool keeps its code and shares it (`moved` False); otherwise, or with `own_code` (the
    Finish action, which must never share), it is moved to the nearest free last-level code under its prefix,
    else under its next-best code of the level before.
    """
    if embeddings is None:
      if docs is None:
        raise ValueError("add_tools: give embeddings or docs")
      embeddings = self._encode_docs(docs)
    x = np.asarray(embeddings, np.float32)
    m = len(x)
    names = list(names) if names is not None else [f"new_{self.num_tools + i}" for i in range(m)]
    if len(names) != m:
      raise ValueError(f"add_tools: {m} embeddings but {len(names)} names")
    start = self.num_tools
    if self.method == "atomic":
      new = np.arange(start, start + m, dtype=np.int32)[:, None]
      self.level_sizes[0] += m
      collided = np.zeros(m, bool)
    elif self.method == "numerical":
      base = int(self.config.get("base", 10))
      if start + m > base ** self.num_levels:
        raise ValueError(f"add_tools: a {self.num_levels}-digit numerical codebook holds {base ** self.num_levels} "
                         "tools; rebuild it wider")
      new = baselines.numerical(start + m, base)[start:, -self.num_levels:]
      collided = np.zeros(m, bool)
    elif self.method in ("rqvae", "residual_kmeans"):
      new, collided = self._code_new(x, share=self.collision_policy == "report" and not own_code)
    else:
      raise ValueError(f"add_tools is not supported for the {self.method!r} baseline (it has no frozen quantiser); "
                       "rebuild the codebook")
    width = max(self.num_levels, new.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1)
    self.codes = np.concatenate([pad(self.codes), pad(new.astype(np.int32))])
    if self.token_kind == "codes":  # a new suffix level or suffix value needs its token
      self.level_sizes += [0] * (width - len(self.level_sizes))
      self.level_sizes = [max(k, int(self.codes[:, l].max()) + 1) for l, k in enumerate(self.level_sizes)]
    self.active = np.concatenate([self.active, np.ones(m, bool)])
    self.tool_names += names
    self.revision += 1
    ids = np.arange(start, start + m)
    moved = collided & (self.collision_policy != "report" or own_code)
    return AddReport(ids, collided, moved, self.codes[ids])

  def add_finish(self, embeddings: np.ndarray | None = None, *, doc: str | None = None) -> AddReport:
    """Gives the Finish action its own code sequence: the Finish document (`embeddings` [1, D] from the corpus's
    encoder, or `doc`) is coded by `add_tools` like a new tool (frozen quantiser, moved off taken codes), and its row
    is remembered as `finish_id`. The row is appended after the corpus's tools, so tool ids stay corpus ids."""
    if self.finish_id is not None:
      raise ValueError(f"the codebook already has a Finish entry (row {self.finish_id})")
    if self.token_kind == "vocab":
      raise ValueError("the semantic baseline's codes are the tool name's own tokens; it has no Finish entry")
    if self.method == "hierarchical":
      raise ValueError("the hierarchical baseline has no frozen quantiser to code the Finish action with; use "
                       "rqvae, residual_kmeans, atomic or numerical for agent tuning")
    report = self.add_tools(embeddings, docs=None if doc is None else [doc], names=[FINISH_NAME], own_code=True)
    self.finish_id = int(report.ids[0])
    return report

  def _encode_docs(self, docs: Sequence[str]) -> np.ndarray:
    from toolgen_jax.codebook import embed
    spec = self.encoder.get("path") or self.encoder.get("kind") or "minilm"
    if spec == "gist":
      raise ValueError("add_tools(docs=...) with gist embeddings: compute them with the gist model, pass embeddings")
    enc = embed.load_encoder(spec)
    if self.encoder.get("encoder_id") and enc.encoder_id != self.encoder["encoder_id"]:
      raise ValueError(f"add_tools: encoder {spec} is {enc.encoder_id}, the codebook was built with "
                       f"{self.encoder['encoder_id']}")
    return enc.encode(list(docs), max_len=int(self.encoder.get("max_len", 128)))

  def _quantizer_levels(self, x: np.ndarray):
    """(codes [M, L], level inputs [L, M, e], codebook(level) -> [K, e], same_group(l1, l2) -> bool)."""
    q = _unflatten(self.quantizer)
    if self.method == "rqvae":
      cfg = rqvae.RQVAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.quantizer_config.items()})
      params = jax.tree.map(jnp.asarray, q["params"])
      a = rqvae.replay_codes(cfg, params, x, jnp.asarray(q["duals"]), jnp.asarray(q["mids"]), jnp.asarray(q["amps"]))
      return (np.asarray(a.codes), np.asarray(a.level_inputs), lambda l: np.asarray(params["codebooks"][l]),
              lambda a_, b_: True)
    st = self.rkm_state()
    codes, inputs = rkm.encode(st, x.reshape(len(x), len(st.pca), -1))
    per = st.centroids.shape[1]
    return codes, inputs, lambda l: np.asarray(rkm.level_codebook(st, l)), lambda a_, b_: a_ // per == b_ // per

  def _code_new(self, x: np.ndarray, share: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(codes [M, L(+1)], collided [M]). share=True: a taken code is kept (reported, not moved), except the
    Finish action's, which is never shared with."""
    codes, inputs, codebook_at, same_group = self._quantizer_levels(x)
    codes = np.array(codes, np.int32, copy=True)
    L = codes.shape[1]
    used = {tuple(int(c) for c in row[:L]) for row in self.codes}  # retired tools' codes stay reserved
    if share:
      collided = np.array([tuple(int(c) for c in row) in used for row in codes], bool)
      finish = None if self.finish_id is None else self.code_of(self.finish_id)
      on_finish = np.array([tuple(int(c) for c in row) == finish for row in codes], bool)
      if on_finish.any():  # nothing shares the Finish action's code: those tools move as under 'unique'
        own, _ = self._code_new(x[on_finish], share=False)
        if own.shape[1] != L:
          raise ValueError("add_tools: no free code under the Finish action's prefix; rebuild with a larger size")
        codes[on_finish] = own
      return codes, collided
    # Base codes held by a suffixed group (all holders carry a suffix): a newcomer can join with the next suffix.
    suffixed: dict[tuple[int, ...], int] = {}
    if self.codes.shape[1] > L:
      for row in self.codes[self.codes[:, L] >= 0]:
        key = tuple(int(c) for c in row[:L])
        suffixed[key] = max(suffixed.get(key, -1), int(row[L]))
    collided = np.zeros(len(codes), bool)
    suffix = np.full(len(codes), -1, np.int32)
    d = lambda inp, cb: ((inp[None, :] - cb) ** 2).sum(-1)
    for j in range(len(codes)):
      code = tuple(int(c) for c in codes[j])
      if code not in used:
        used.add(code)
        continue
      collided[j] = True
      last_cb = codebook_at(L - 1)
      free = [int(k) for k in np.argsort(d(inputs[L - 1, j], last_cb), kind="stable")
              if code[:-1] + (int(k),) not in used]
      if free:  # 1. nearest free last-level code under the same prefix
        code = code[:-1] + (free[0],)
      elif code in suffixed:  # 2. join the suffixed group holding this code
        suffixed[code] += 1
        suffix[j] = suffixed[code]
      else:  # 3. the next-best code of the level before, then its nearest free last-level code
        for alt in (np.argsort(d(inputs[L - 2, j], codebook_at(L - 2)), kind="stable") if L >= 2 else []):
          if int(alt) == code[L - 2]:
            continue
          last_in = (inputs[L - 2, j] - codebook_at(L - 2)[alt] if same_group(L - 2, L - 1) else inputs[L - 1, j])
          prefix = code[:-2] + (int(alt),)
          free = [int(k) for k in np.argsort(d(last_in, last_cb), kind="stable") if prefix + (int(k),) not in used]
          if free:
            code = prefix + (free[0],)
            break
        else:
          raise ValueError("add_tools: no free code left for a new tool; rebuild with a larger codebook.size")
      codes[j] = code
      used.add(code)
    if (suffix >= 0).any():
      codes = np.concatenate([codes, suffix[:, None]], axis=1)
    return codes, collided

  def rkm_state(self) -> rkm.ResidualKMeansState:
    q = _unflatten(self.quantizer)
    pcas = tuple(pca_lib.PCAState(jnp.asarray(p["mean"]), jnp.asarray(p["components"]),
                                  jnp.asarray(p["explained_variance"]))
                 for _, p in sorted(q["pca"].items(), key=lambda kv: int(kv[0])))
    return rkm.ResidualKMeansState(pcas, jnp.asarray(q["centroids"]))

  # --- persistence -----------------------------------------------------------------------------------------
  def save(self, directory: str | os.PathLike) -> pathlib.Path:
    """Writes manifest.json + arrays.npz into `directory` (atomically replaced files)."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"codes": self.codes, "active": self.active} | {f"q/{k}": v for k, v in self.quantizer.items()}
    tmp = d / "arrays.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, d / "arrays.npz")
    manifest = {"format_version": FORMAT_VERSION, "method": self.method, "revision": self.revision,
                "num_tools": self.num_tools, "num_active": int(self.active.sum()), "level_sizes": self.level_sizes,
                "token_kind": self.token_kind, "encoder": self.encoder, "config": self.config,
                "quantizer_config": self.quantizer_config, "collision_report": self.collision_report,
                "tool_names": self.tool_names, "finish_id": self.finish_id}
    tmp = d / "manifest.tmp.json"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, default=_json_default))
    os.replace(tmp, d / "manifest.json")
    return d


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, (np.ndarray, tuple)):
    return list(o)
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load(directory: str | os.PathLike) -> Codebook:
  d = pathlib.Path(directory)
  mpath = d / "manifest.json"
  try:
    m = json.loads(mpath.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(str(mpath), None, None, f"cannot read codebook manifest: {e}") from e
  if m.get("format_version") not in READABLE_VERSIONS:
    raise DataError(str(mpath), None, "format_version",
                    f"codebook format {m.get('format_version')} is not one of the supported {READABLE_VERSIONS}; "
                    "rebuild it "
                    f"(python -m toolgen_jax.main ... --config.pipeline.redo='(\"codebook\",)')")
  with np.load(d / "arrays.npz") as z:
    arrays = {k: z[k] for k in z.files}
  q = {k[2:]: v for k, v in arrays.items() if k.startswith("q/")}
  return Codebook(m["method"], arrays["codes"], m["level_sizes"], active=arrays["active"], tool_names=m["tool_names"],
                  quantizer=q, quantizer_config=m["quantizer_config"], encoder=m["encoder"], config=m["config"],
                  revision=m["revision"], collision_report=m["collision_report"], finish_id=m.get("finish_id"))


# --- builders --------------------------------------------------------------------------------------------------
def from_rqvae(config: rqvae.RQVAEConfig, x: np.ndarray, edges: np.ndarray | None = None,
               edge_weights: np.ndarray | None = None, *, tool_names: Sequence[str] | None = None,
               encoder: Mapping[str, Any] | None = None, resolve: bool = True, progress: bool = False,
               state: rqvae.RQVAEState | None = None, collisions_policy: str | None = None) -> Codebook:
  """Trains the RQ-VAE (unless `state` is given), assigns balanced codes, handles collisions as
  `collisions_policy` says (`collisions.POLICIES`; None: 'unique' if `resolve` else 'report')."""
  policy = _policy(collisions_policy, resolve)
  if state is None:
    state, _ = rqvae.train(config, x, edges, edge_weights, progress=progress)
  a = rqvae.assign_codes(config, state.params, jnp.asarray(x, jnp.float32))
  codes = np.asarray(a.codes)
  last_in = np.asarray(a.level_inputs[-1])
  costs = lambda ids: rqvae.level_costs(config, state.params, config.num_levels - 1, last_in[ids])
  codes, report = collisions.apply_policy(policy, codes, costs, config.codebook_size)
  quant = _flatten({"params": jax.tree.map(np.asarray, state.params), "duals": a.duals, "mids": a.mids,
                    "amps": a.amps})
  sizes = [config.codebook_size] * config.num_levels + _suffix_size(codes, config.num_levels)
  return Codebook("rqvae", codes, sizes, tool_names=tool_names, quantizer=quant,
                  quantizer_config=dataclasses.asdict(config), encoder=encoder,
                  config={"resolve": policy == "unique", "collisions": policy}, collision_report=report.to_json())


def from_residual_kmeans(config: rkm.ResidualKMeansConfig, x: np.ndarray, *, tool_names=None, encoder=None,
                         resolve: bool = True, collisions_policy: str | None = None) -> Codebook:
  """Fits PCA + residual k-means (Toolscaler section 4.2) and handles collisions as `collisions_policy` says
  (None: 'unique' if `resolve` else 'report'; Toolscaler's own is 'report')."""
  policy = _policy(collisions_policy, resolve)
  state, codes = rkm.fit(config, x)
  _, inputs = rkm.encode(state, x)
  last = len(inputs) - 1
  cb_last = rkm.level_codebook(state, last)
  costs = lambda ids: np.asarray(km.sq_distances(jnp.asarray(inputs[last][ids]), cb_last))
  codes, report = collisions.apply_policy(policy, codes, costs, config.codebook_size)
  quant = _flatten({"pca": {str(i): dataclasses.asdict(p) for i, p in enumerate(state.pca)},
                    "centroids": state.centroids})
  n_levels = state.centroids.shape[0] * state.centroids.shape[1]
  sizes = [config.codebook_size] * n_levels + _suffix_size(codes, n_levels)
  return Codebook("residual_kmeans", codes, sizes, tool_names=tool_names, quantizer=quant,
                  quantizer_config=dataclasses.asdict(config), encoder=encoder,
                  config={"resolve": policy == "unique", "collisions": policy}, collision_report=report.to_json())


def from_baseline(method: str, num_tools: int, *, tool_names: Sequence[str] | None = None,
                  embeddings: np.ndarray | None = None, tokenize: Callable[[str], Sequence[int]] | None = None,
                  end_id: int | None = None, branching: int = 10, base: int = 10, seed: int = 0,
                  encoder=None) -> Codebook:
  if method == "atomic":
    codes, sizes, cfg = baselines.atomic(num_tools), [num_tools], {}
  elif method == "numerical":
    codes = baselines.numerical(num_tools, base)
    sizes, cfg = [base] * codes.shape[1], {"base": base}
  elif method == "hierarchical":
    if embeddings is None:
      raise ValueError("hierarchical codebook needs tool embeddings")
    codes = baselines.hierarchical(embeddings, branching, seed)
    sizes, cfg = [int(max(branching, codes[:, l].max() + 1)) for l in range(codes.shape[1])], {"branching": branching}
  elif method == "semantic":
    if tokenize is None or end_id is None or tool_names is None:
      raise ValueError("semantic codebook needs tool_names, the LLM tokenize function and an end id")
    codes, sizes, cfg = baselines.semantic(tool_names, tokenize, end_id), [], {"end_id": int(end_id)}
  else:
    raise ValueError(f"unknown baseline {method!r}")
  # The baselines' codes are used as built (atomic and numerical ids are unique by construction; hierarchical and
  # semantic codes are made prefix-free/unique by their builders): the trie refuses a shared code for them.
  return Codebook(method, codes, sizes, tool_names=tool_names, encoder=encoder, config=cfg | {"collisions": "unique"},
                  collision_report={"rate_before": collisions.collision_rate(codes),
                                    "rate_after": collisions.collision_rate(codes), "policy": "unique",
                                    **collisions.shared_counts(codes)})


def build(codebook_config, embeddings: np.ndarray | None, tool_names: Sequence[str], *, cooccurrence=None,
          encoder: Mapping[str, Any] | None = None, tokenize=None, end_id=None, progress: bool = False,
          cooccurrence_normalization: str = "sym") -> Codebook:
  """The codebook a pipeline run uses, from the `codebook` section of the config (toolgen_jax/config.py);
  `cooccurrence_normalization` is `config.data.cooccurrence_normalization` (A of ToolWeaver Eq. 6)."""
  c = codebook_config
  n = len(tool_names)
  if c.method == "rqvae":
    cfg = rqvae.RQVAEConfig(
        hidden=tuple(c.rqvae_hidden), code_dim=c.code_dim, num_levels=c.levels, codebook_size=min(c.size, n),
        beta=c.beta, sinkhorn_epsilon=c.sinkhorn_epsilon, sinkhorn_iters=c.sinkhorn_iters,
        collab_lambda=float(c.collab_lambda), learning_rate=c.learning_rate,
        collab_form=c.get("collab_form", "latent_contrast"), collab_adjacency=cooccurrence_normalization,
        batch_size=c.batch_size, steps=rqvae_steps(c, n), seed=c.seed)
    edges = weights = None
    if cooccurrence is not None and cfg.collab_lambda > 0:
      edges, weights = cooccurrence.edges()
    return from_rqvae(cfg, embeddings, edges, weights, tool_names=tool_names, encoder=encoder,
                      collisions_policy=c.get("collisions", "unique"), progress=progress)
  if c.method == "residual_kmeans":
    cfg = rkm.ResidualKMeansConfig(pca_dim=c.pca_dim, num_levels=c.levels, codebook_size=min(c.size, n),
                                   seed=c.seed)
    return from_residual_kmeans(cfg, embeddings, tool_names=tool_names, encoder=encoder,
                                collisions_policy=c.get("collisions", "unique"))
  return from_baseline(c.method, n, tool_names=tool_names, embeddings=embeddings, tokenize=tokenize, end_id=end_id,
                       branching=c.branching, seed=c.seed, encoder=encoder)


def rqvae_steps(codebook_config, num_tools: int) -> int:
  """RQ-VAE optimizer steps: `codebook.epochs` passes over the tools in batches of `codebook.batch_size` when set
  (> 0; ToolWeaver's released `index/main.py` counts epochs: 5000 of batch 5096), else `codebook.steps`."""
  epochs = int(codebook_config.get("epochs", 0) or 0)
  if epochs > 0:
    return epochs * max(1, -(-int(num_tools) // int(codebook_config.batch_size)))
  return int(codebook_config.steps)


def _policy(policy: str | None, resolve: bool) -> str:
  policy = policy if policy is not None else ("unique" if resolve else "report")
  if policy not in collisions.POLICIES:
    raise ValueError(f"collision policy must be one of {collisions.POLICIES}, got {policy!r}")
  return policy


def _suffix_size(codes: np.ndarray, base_levels: int) -> list[int]:
  if codes.shape[1] == base_levels:
    return []
  return [int(codes[:, l].max()) + 1 for l in range(base_levels, codes.shape[1])]
