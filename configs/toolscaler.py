"""Toolscaler: gist compression, PCA + deep residual k-means (K=512, code length 4 = 2 gist positions x 2 levels),
post-guided refinement rounds.

:paper trains the gist encoder (2 gist tokens + LoRA on the backbone, field reconstruction; encoder.kind='gist').
:small and :real embed with MiniLM instead (one position, code length 2): the gist encoder backpropagates through all
30 layers of SmolLM2, ~20 CPU minutes for a corpus of 2k tools; add --config.encoder.kind=gist to pay for it.
:real runs one post-guided round; :small none.

Collisions are reported, not resolved (the paper counts them; tools sharing a code tuple share one trie leaf, and
retrieval returns all of them at that leaf's score, in tool-id order): codebook.collisions='report' at every scale;
--config.codebook.collisions=unique gives our unique-code guarantee instead.

:paper trains the paper's two stages, Query-Tool pairs then Trajectories, with no memorisation stage, sized in
epochs (5 retrieval + 2 trajectory per iteration), at a context of 6144 tokens. Memorisation is an explicit option:
      --config.train.stages='("memorization", "retrieval", "trajectory")'
The CPU variants keep memorisation + retrieval in steps: their corpora carry no trajectories, and their BENCHMARKS
figures were measured so.

  python -m toolgen_jax.main --config=configs/toolscaler.py:small --workdir=workdirs/toolscaler
  python -m toolgen_jax.main --config=configs/toolscaler.py:paper --workdir=... \
      --config.model.checkpoint=/ckpt/Meta-Llama-3-8B --config.data.path=/data/ToolBench
"""

from toolgen_jax import config as base


def get_config(arg: str | None = None):
  c = base.apply_scale(base.base_config(), arg)
  c.codebook.method = "residual_kmeans"
  c.codebook.levels = 2
  c.codebook.size = {"paper": 512, "gorilla": 16}.get(arg, 128)
  c.codebook.pca_dim = 32
  c.codebook.collisions = "report"  # the paper reports collisions; it does not resolve them
  # Section 4.2's reframed embedding: first level of a position = mean of its member tools' gist outputs, deeper
  # levels = inverse PCA of the residual centroids (a sentence encoder's vectors go through a least-squares map).
  c.vocab.init = "reframe"
  if arg == "paper":
    c.encoder.kind = "gist"
    c.encoder.gist_steps = 2000                   # an upper bound: early stopping ends it (section 4.1 settings)
    c.encoder.gist_form = "cascade"               # [Content; Token; Placeholder; Task], the cascaded mask
    c.encoder.gist_lora_rank = 32
    c.encoder.gist_lora_alpha = 128.0
    c.encoder.gist_lora_dropout = 0.1
    c.encoder.gist_learning_rate = 1e-3
    c.encoder.gist_weight_decay = 1e-4
    c.encoder.gist_batch_size = 12
    c.encoder.gist_patience = 3                   # held-out evaluations without improvement
    c.encoder.gist_eval_every = 100
    c.train.refine_form = "paper"                 # section 4.2, App. D iv (training/refinement.py)
    c.train.refine_token_epochs = 1               # Token-update epochs per round (the paper does not say how many)
    c.train.stages = ("retrieval", "trajectory")  # Query-Tool pairs, then Trajectories; no memorisation
    c.train.stage_epochs.retrieval = 5.0           # 5 retrieval epochs per iteration
    c.train.stage_epochs.trajectory = 2.0          # + 2 trajectory epochs
    c.train.seq_len = 6144                         # the paper's context length
    c.model.max_seq_len = 6144
  c.train.refine_rounds = {"paper": 2, "real": 1}.get(arg, 0)  # post-guided rounds (CPU :small skips them)
  if arg == "real":
    c.train.stage_steps.retrieval = 250   # 250 + one 150-step refined round = the other methods' 400 steps
    c.train.stage_steps.refine = 150
  if arg == "real":  # the trained dense baseline beside BM25 and MiniLM (BENCHMARKS "Supervised dense baseline")
    c.eval.baselines = ("bm25", "embedding", "dense")
  return base.lock(c)
