"""The embedded demo (the README's first command): BFCL functions and questions from `bfcl-eval` with a seeded
80/20 split of its queries, SmolLM2-135M-Instruct, MiniLM tool embeddings, the ToolWeaver tokenizer (RQ-VAE, 2 x 256
codes, Sinkhorn, collaborative loss), memorisation then retrieval, evaluation next to BM25 and embedding similarity.

  python -m toolgen_jax.main --config=configs/default.py --workdir=workdirs/default

Budget: set-up plus run within 20 minutes on a 2-core CPU, hence the CPU recipe (`config.cpu_recipe`). Measured
figures and run times: BENCHMARKS.md, "Default demo".
"""

from toolgen_jax import config as base


def get_config():
  c = base.cpu_recipe(base.base_config())
  c.data.source = "bfcl"
  c.data.test_fraction = 0.2
  c.codebook.method = "rqvae"
  c.codebook.levels = 2
  c.codebook.size = 256
  c.codebook.steps = 400
  c.codebook.collab_form = "latent_contrast"  # our latent variant (kept for the demo's figures); paper = Eq. 6
  c.vocab.init = "codebook"
  c.train.stages = ("memorization", "retrieval")
  c.train.stage_steps.memorization = 150
  c.train.stage_steps.retrieval = 150
  c.train.log_every = 10
  c.train.tensorboard = True
  c.eval.settings = ("multi-domain", "candidates")  # each question's own functions: the pool the demo always used
  c.eval.max_queries = 160
  c.eval.train_queries = 40
  c.eval.memorization_tools = 40
  c.eval.batch_size = 8
  c.eval.perplexity_tokens = 1024
  return base.lock(c)
