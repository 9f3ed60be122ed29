"""`ToolDataset`: what every reader returns (corpus, queries, trajectories, co-occurrence graph, load report),
with save/load to a folder, a content hash other parts key caches on, `merge` of several sources and a
deterministic `split_queries`.

The co-occurrence graph is a training signal (ToolWeaver's collaborative codes, section 3.2): it is fitted on the
training part of the dataset only (`fit_cooccurrence`): queries of a training split (or of no split yet: a source
that holds nothing out), the trajectories of those queries, trajectories of queries not loaded, and the text-less
co-use groups a reader found in training qrels. A query id that any record puts in another split (dev, test, eval)
is held out with its trajectories. Every step that changes split labels (`from_config`'s re-split, the real
protocol, `merge`) refits, so removing or adding held-out queries never changes the graph.

On-disk layout of `save(dir)`: tools.jsonl, queries.jsonl, trajectories.jsonl, cooccurrence.npz, manifest.json
(format version, source, counts, report, and `content_hash` = sha256 over the four data files' canonical bytes).
cooccurrence.npz also holds the text-less training groups (`group_indptr`, `group_tools`) when there are any.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pathlib
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from toolgen_jax.data import cooccurrence as cooc_lib
from toolgen_jax.data.records import DataError, Query, ToolCorpus, Trajectory
from toolgen_jax.data.report import LoadReport

FORMAT_VERSION = 1
FILES = ("tools.jsonl", "queries.jsonl", "trajectories.jsonl", "cooccurrence.npz")
TRAIN_SPLITS = ("train",)          # queries the model and every fitted statistic may learn from
EVAL_SPLITS = ("test", "eval")     # queries reported as results (Gorilla names its test split 'eval')
UNSPLIT = ""                       # a source without splits: training until `split_queries` says otherwise


@dataclasses.dataclass
class ToolDataset:
  corpus: ToolCorpus
  queries: list[Query]
  trajectories: list[Trajectory]
  cooccurrence: cooc_lib.Cooccurrence
  report: LoadReport
  source: str = ""
  # Co-use groups without query text (COLT ToolBench-G3 qrels), from training qrels only; they feed the graph.
  extra_groups: tuple[tuple[int, ...], ...] = ()

  @property
  def content_hash(self) -> str:
    return _content_hash(self._payload())

  def _payload(self) -> dict[str, bytes]:
    return {
        "tools.jsonl": self.corpus.to_jsonl().encode("utf-8"),
        "queries.jsonl": _jsonl(q.to_json() for q in self.queries),
        "trajectories.jsonl": _jsonl(t.to_json() for t in self.trajectories),
        "cooccurrence.npz": _npz_bytes(self.cooccurrence, self.extra_groups),
    }

  def queries_by_split(self) -> dict[str, list[Query]]:
    out: dict[str, list[Query]] = {}
    for q in self.queries:
      out.setdefault(q.split, []).append(q)
    return out

  def save(self, directory: str | pathlib.Path) -> str:
    """Writes the dataset into `directory` (created); returns the content hash."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    payload = self._payload()
    for name, data in payload.items():
      (d / name).write_bytes(data)
    h = _content_hash(payload)
    manifest = {"format_version": FORMAT_VERSION, "source": self.source, "content_hash": h,
                "num_tools": len(self.corpus), "num_queries": len(self.queries),
                "num_trajectories": len(self.trajectories), "num_edges": self.cooccurrence.num_edges,
                "report": self.report.to_json()}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return h


def load(directory: str | pathlib.Path, verify: bool = True) -> ToolDataset:
  """Reads a folder written by `ToolDataset.save`; with `verify`, a content-hash mismatch raises DataError."""
  d = pathlib.Path(directory)
  mpath = d / "manifest.json"
  if not mpath.exists():
    raise DataError(str(mpath), None, None, "not a saved ToolDataset (manifest.json missing)")
  manifest = json.loads(mpath.read_text(encoding="utf-8"))
  if manifest.get("format_version") != FORMAT_VERSION:
    raise DataError(str(mpath), None, "format_version", f"unsupported version {manifest.get('format_version')}")
  payload = {}
  for name in FILES:
    if not (d / name).exists():
      raise DataError(str(d / name), None, None, "file of a saved ToolDataset is missing")
    payload[name] = (d / name).read_bytes()
  if verify and _content_hash(payload) != manifest.get("content_hash"):
    raise DataError(str(d), None, "content_hash", "files do not match the manifest's content hash (edited?)")
  corpus = ToolCorpus.from_records(_read_jsonl(payload["tools.jsonl"], d / "tools.jsonl"))
  queries = [Query.from_json(r) for r in _read_jsonl(payload["queries.jsonl"], d / "queries.jsonl")]
  trajs = [Trajectory.from_json(r) for r in _read_jsonl(payload["trajectories.jsonl"], d / "trajectories.jsonl")]
  with np.load(io.BytesIO(payload["cooccurrence.npz"])) as z:
    cooc = cooc_lib.Cooccurrence.from_arrays({k: z[k] for k in z.files})
    extra = _unpack_groups(z["group_indptr"], z["group_tools"]) if "group_indptr" in z.files else ()
  if cooc.num_tools != len(corpus):
    raise DataError(str(d / "cooccurrence.npz"), None, "shape", f"graph over {cooc.num_tools} tools, corpus has {len(corpus)}")
  return ToolDataset(corpus, queries, trajs, cooc, LoadReport.from_json(manifest.get("report", {})),
                     source=manifest.get("source", ""), extra_groups=extra)


def training_episodes(queries: Sequence[Query], trajectories: Sequence[Trajectory] = ()
                      ) -> tuple[list[Query], list[Trajectory]]:
  """The queries and trajectories a fitted statistic may see: queries in TRAIN_SPLITS or UNSPLIT whose id no record
  puts in another split, and the trajectories of every query id that is not held out (a trajectory of a query that
  was not loaded counts as training, as `training.stages.training_trajectories` does)."""
  allowed = set(TRAIN_SPLITS) | {UNSPLIT}
  held_out = {q.id for q in queries if q.split not in allowed}
  return ([q for q in queries if q.id not in held_out],
          [t for t in trajectories if t.query_id not in held_out])


def fit_cooccurrence(ds: ToolDataset) -> ToolDataset:
  """`ds` with its co-occurrence graph rebuilt from its training episodes (`training_episodes` + `extra_groups`)."""
  queries, trajs = training_episodes(ds.queries, ds.trajectories)
  cooc = cooc_lib.build(len(ds.corpus), queries, trajs, ds.extra_groups)
  ds.report.stats.update(cooccurrence_edges=cooc.num_edges, cooccurrence_queries=len(queries),
                         cooccurrence_held_out_queries=len(ds.queries) - len(queries))
  return dataclasses.replace(ds, cooccurrence=cooc)


def finalize(corpus: ToolCorpus, queries: list[Query], trajectories: list[Trajectory], report: LoadReport,
             source: str, extra_groups: Iterable[Iterable[int]] | Mapping[str, Iterable[Iterable[int]]] = (),
             log: bool = True) -> ToolDataset:
  """Fits the co-occurrence graph on the training episodes, records the headline stats, logs the summary line.

  extra_groups: text-less co-use groups, either {split: groups} (only TRAIN_SPLITS / UNSPLIT are kept; the others
  are counted `cooccurrence_groups_held_out`) or a plain list, which the reader vouches is training data.
  """
  if isinstance(extra_groups, Mapping):
    allowed = set(TRAIN_SPLITS) | {UNSPLIT}
    kept = [g for split, gs in extra_groups.items() if split in allowed for g in gs]
    dropped = sum(len(list(gs)) for split, gs in extra_groups.items() if split not in allowed)
    if dropped:
      report.stat("cooccurrence_groups_held_out", dropped)
    extra_groups = kept
  groups = tuple(tuple(sorted(set(int(t) for t in g))) for g in extra_groups)
  ds = ToolDataset(corpus, queries, trajectories, cooc_lib.empty(len(corpus)), report, source=source,
                   extra_groups=groups)
  ds = fit_cooccurrence(ds)
  report.stats.update(tools=len(corpus), queries=len(queries), trajectories=len(trajectories))
  if log:
    report.log()
  return ds


def merge(datasets: Sequence[ToolDataset]) -> ToolDataset:
  """Unions several datasets into one corpus: tools deduplicated on (tool_name, api_name) (a conflicting doc keeps
  the first, counted `duplicate_tool_conflicting`), ids remapped in queries, trajectories and graphs; a query id
  seen in an earlier dataset is prefixed with '<source>:' (counted `query_id_renamed`)."""
  from toolgen_jax.data._common import CorpusBuilder  # local: _common imports records only, no cycle

  report = LoadReport(source="+".join(ds.source or "?" for ds in datasets), path="merge")
  builder = CorpusBuilder(report)
  queries: list[Query] = []
  trajs: list[Trajectory] = []
  seen_q: set[str] = set()
  seen_t: set[str] = set()
  extra: list[tuple[int, ...]] = []
  for ds in datasets:
    report.merge(ds.report, prefix=f"{ds.source or '?'}.")
    mapping = np.asarray([builder.add(t, where=f"{ds.source}:{t.id}") for t in ds.corpus], dtype=np.int64)
    m = mapping.tolist()
    renamed: dict[str, str] = {}
    for q in ds.queries:
      qid = q.id
      if qid in seen_q:
        qid = f"{ds.source}:{q.id}"
        report.count("query_id_renamed", f"{q.id} -> {qid}")
        renamed[q.id] = qid
      seen_q.add(qid)
      queries.append(dataclasses.replace(
          q, id=qid, relevant=tuple(m[i] for i in q.relevant),
          candidates=None if q.candidates is None else tuple(m[i] for i in q.candidates)))
    for t in ds.trajectories:
      tid, qid = t.id, renamed.get(t.query_id, t.query_id)  # a trajectory follows its query's new id
      if tid in seen_t:
        tid = f"{ds.source}:{t.id}"
        report.count("trajectory_id_renamed", f"{t.id} -> {tid}")
      seen_t.add(tid)
      msgs = tuple(dataclasses.replace(x, action=None if x.action is None else m[x.action]) for x in t.messages)
      trajs.append(Trajectory(id=tid, query_id=qid, messages=msgs, tools=tuple(m[i] for i in t.tools)))
    extra += [tuple(sorted({m[i] for i in g})) for g in ds.extra_groups]
  n = len(builder.corpus)
  # Refitted on the merged training episodes (not summed): the union must obey the same split rule as each part.
  merged = fit_cooccurrence(ToolDataset(builder.corpus, queries, trajs, cooc_lib.empty(n), report,
                                        source=report.source, extra_groups=tuple(extra)))
  report.stats.update(tools=n, queries=len(queries), trajectories=len(trajs))
  report.log()
  return merged


def split_queries(queries: Sequence[Query], fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                  by_group: bool = True, names: Sequence[str] = ("train", "dev", "test")) -> dict[str, list[Query]]:
  """Deterministic seeded split: {name: queries with `split` set to name}.

  Within each group (or over all queries when `by_group` is False) queries are ordered by id, permuted with
  numpy's PCG64 seeded by (seed, crc32(group)), and cut at floor(cumsum(fractions) * n); the last split takes the
  remainder. The result depends only on the query ids, the seed and the fractions, not on input order.
  """
  if len(fractions) != len(names):
    raise ValueError(f"{len(fractions)} fractions for {len(names)} split names")
  f = np.asarray(fractions, dtype=np.float64)
  if (f < 0).any() or not np.isclose(f.sum(), 1.0):
    raise ValueError(f"fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
  groups: dict[str, list[Query]] = {}
  for q in queries:
    groups.setdefault(q.group if by_group else "", []).append(q)
  out: dict[str, list[Query]] = {n: [] for n in names}
  for g in sorted(groups):
    qs = sorted(groups[g], key=lambda q: q.id)
    rng = np.random.default_rng([seed, zlib.crc32(g.encode("utf-8"))])
    perm = rng.permutation(len(qs))
    cuts = np.floor(np.cumsum(f)[:-1] * len(qs) + 1e-9).astype(int)
    for name, idx in zip(names, np.split(perm, cuts)):
      out[name].extend(dataclasses.replace(qs[i], split=name) for i in sorted(idx.tolist()))
  return out


def _jsonl(records: Iterable[dict]) -> bytes:
  return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def _read_jsonl(data: bytes, path) -> list[dict]:
  out = []
  for i, line in enumerate(data.decode("utf-8").splitlines()):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise DataError(str(path), i, None, f"malformed JSON: {e.msg}") from None
  return out


def _npz_bytes(cooc: cooc_lib.Cooccurrence, extra_groups: Sequence[Sequence[int]] = ()) -> bytes:
  buf = io.BytesIO()
  arrays = cooc.to_arrays()
  if extra_groups:  # only when present, so datasets without them keep their content hash
    arrays["group_indptr"] = np.cumsum([0] + [len(g) for g in extra_groups]).astype(np.int64)
    arrays["group_tools"] = np.asarray([t for g in extra_groups for t in g], dtype=np.int64)
  np.savez(buf, **arrays)
  return buf.getvalue()


def _unpack_groups(indptr: np.ndarray, tools: np.ndarray) -> tuple[tuple[int, ...], ...]:
  t = tools.tolist()
  return tuple(tuple(t[a:b]) for a, b in zip(indptr[:-1].tolist(), indptr[1:].tolist()))


def _content_hash(payload: dict[str, bytes]) -> str:
  h = hashlib.sha256()
  for name in FILES:
    data = payload[name]
    if name.endswith(".npz"):  # hash the arrays, not the zip container (which stores timestamps)
      with np.load(io.BytesIO(data)) as z:
        data = b"".join(k.encode() + np.ascontiguousarray(z[k]).tobytes() for k in sorted(z.files))
    h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
  return h.hexdigest()


def restrict(ds: ToolDataset, max_tools: int = -1, max_queries: int = -1) -> ToolDataset:
  """Small configs: keep tools with id < max_tools (queries or trajectories touching a dropped tool are dropped,
  counted `restrict_dropped_*`; candidate lists are cut), then the first max_queries queries. -1 = no limit."""
  if max_tools < 0 or max_tools >= len(ds.corpus):
    corpus, queries, trajs, cooc = ds.corpus, list(ds.queries), list(ds.trajectories), ds.cooccurrence
  else:
    corpus = ToolCorpus(list(ds.corpus)[:max_tools])
    queries = []
    for q in ds.queries:
      if all(t < max_tools for t in q.relevant):
        cands = None if q.candidates is None else tuple(t for t in q.candidates if t < max_tools)
        queries.append(dataclasses.replace(q, candidates=cands))
    trajs = [t for t in ds.trajectories
             if all(m.action is None or m.action < max_tools for m in t.messages)]
    trajs = [dataclasses.replace(t, tools=tuple(x for x in t.tools if x < max_tools)) for t in trajs]
    ds.report.stat("restrict_dropped_tools", len(ds.corpus) - max_tools)
    ds.report.stat("restrict_dropped_queries", len(ds.queries) - len(queries))
    ds.report.stat("restrict_dropped_trajectories", len(ds.trajectories) - len(trajs))
    cooc = cooc_lib.Cooccurrence(ds.cooccurrence.counts[:max_tools, :max_tools].tocsr())
  extra = ds.extra_groups if max_tools < 0 else tuple(tuple(t for t in g if t < max_tools) for g in ds.extra_groups)
  if 0 <= max_queries < len(queries):
    ds.report.stat("restrict_dropped_queries", len(queries) - max_queries)
    queries = queries[:max_queries]
  return ToolDataset(corpus, queries, trajs, cooc, ds.report, source=ds.source, extra_groups=extra)
