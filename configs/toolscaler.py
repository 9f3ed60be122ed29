"""Toolscaler: PCA + deep residual k-means (K=512, code length 4 = 2 positions x 2 levels), post-guided rounds.

  python -m toolgen_jax.main --config=configs/toolscaler.py:small --workdir=workdirs/toolscaler
  python -m toolgen_jax.main --config=configs/toolscaler.py:paper --workdir=... \
      --config.model.checkpoint=/ckpt/Meta-Llama-3-8B --config.data.path=/data/ToolBench
"""

from toolgen_jax import config as base


def get_config(arg: str | None = None):
  c = base.apply_scale(base.base_config(), arg)
  c.codebook.method = "residual_kmeans"
  c.codebook.levels = 2
  c.codebook.size = 512 if arg == "paper" else 128
  c.codebook.pca_dim = 32
  c.vocab.init = "codebook"
  c.train.refine_rounds = 2 if arg == "paper" else 0
  return base.lock(c)
