"""ToolGen: atomic indexing, one new token per tool, initialised from the mean of its name's sub-words.

Atomic ids never collide (one token per tool), so no collision handling is needed: the codebook's collision report
shows 0 ('unique' is what it is by construction).

  python -m toolgen_jax.main --config=configs/toolgen.py:small --workdir=workdirs/toolgen
"""

from toolgen_jax import config as base


def get_config(arg: str | None = None):
  c = base.apply_scale(base.base_config(), arg)
  c.codebook.method = "atomic"
  c.codebook.collisions = "unique"  # nothing to resolve: atomic ids are unique by construction
  c.vocab.init = "subword_mean"
  if arg == "real":  # the trained dense baseline beside BM25 and MiniLM (BENCHMARKS "Supervised dense baseline")
    c.eval.baselines = ("bm25", "embedding", "dense")
  return base.lock(c)
