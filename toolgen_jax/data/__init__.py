"""Data layer: real tool-use datasets -> one in-memory model (records, corpus, queries, trajectories, graph).

Public API
  records      Tool, ToolCorpus, Query, Message, Trajectory, DataError
  loading      load_source(source, path=None, **opts) -> ToolDataset   sources: READERS (bfcl is the default,
               path None = the embedded BFCL); ToolDataset(corpus, queries, trajectories, cooccurrence, report)
               from_config(config.data, seed) -> ToolDataset (load + re-split when needed + max_tools/max_queries)
  persistence  ToolDataset.save(dir) -> content hash; load_dataset(dir); ToolDataset.content_hash
  combining    merge(datasets) -> ToolDataset; split_queries(queries, fractions, seed, by_group) -> {name: [Query]};
               restrict(ds, max_tools, max_queries); TRAIN_SPLITS, EVAL_SPLITS (the one definition of the splits)
  leakage      fit_cooccurrence(ds): the graph from the training episodes only (every loader and re-split calls it);
               training_episodes(queries, trajectories)
  graph        Cooccurrence (counts CSR, adjacency('sym'|'row'|'none'), edges(), save/load); build_cooccurrence
  documents    tool_document(tool, template, max_chars), tool_documents(corpus, ...), documents_from_config
  reporting    LoadReport (counts of recoverable issues; one summary line per load)
  CLI          python -m toolgen_jax.data.inspect --source=SOURCE [--path=FILE_OR_DIR]
"""

from toolgen_jax.data.cooccurrence import Cooccurrence
from toolgen_jax.data.cooccurrence import build as build_cooccurrence
from toolgen_jax.data.dataset import (EVAL_SPLITS, TRAIN_SPLITS, ToolDataset, fit_cooccurrence, merge, restrict,
                                      split_queries, training_episodes)
from toolgen_jax.data.dataset import load as load_dataset
from toolgen_jax.data.documents import documents_from_config, tool_document, tool_documents
from toolgen_jax.data.readers import READERS, from_config, load_source
from toolgen_jax.data.records import DataError, Message, Query, Tool, ToolCorpus, Trajectory
from toolgen_jax.data.report import LoadReport

__all__ = [
    "EVAL_SPLITS", "TRAIN_SPLITS", "fit_cooccurrence", "training_episodes",
    "Cooccurrence", "DataError", "LoadReport", "Message", "Query", "READERS", "Tool", "ToolCorpus", "ToolDataset",
    "Trajectory", "build_cooccurrence", "documents_from_config", "from_config", "load_dataset", "load_source",
    "merge", "restrict", "split_queries", "tool_document", "tool_documents",
]
