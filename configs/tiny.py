"""Smoke-test config: every stage of the pipeline in about a minute on a 2-core CPU (used by the end-to-end test).

A 2-layer random Llama with SmolLM2's tokenizer, 48 BFCL tools, RQ-VAE 2 x 16 codes, a few hundred steps.
  python -m toolgen_jax.main --config=configs/tiny.py --workdir=workdirs/tiny
"""

from toolgen_jax import config as base


def get_config():
  c = base.base_config()
  c.data.source = "bfcl"
  c.data.max_tools = 48
  c.data.max_queries = 120
  c.data.test_fraction = 0.25
  c.model.checkpoint = "random"
  c.model.tokenizer = "smollm2"
  c.codebook.method = "rqvae"
  c.codebook.levels = 2
  c.codebook.size = 16
  c.codebook.rqvae_hidden = (128, 64)
  c.codebook.code_dim = 16
  c.codebook.steps = 200
  c.codebook.batch_size = 64
  c.train.stages = ("memorization", "retrieval")
  c.train.steps = 150
  c.train.batch_size = 16
  c.train.seq_len = 96
  c.train.learning_rate = 3e-3
  c.train.log_every = 50
  c.train.packing = "bucket"
  c.train.async_checkpoint = False
  c.train.tensorboard = False
  c.eval.batch_size = 8
  c.eval.perplexity_tokens = 256
  c.eval.memorization_tools = 12
  c.decode.beam_size = 5
  return base.lock(c)
