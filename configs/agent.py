"""Agent tuning on ToolBench trajectories (ToolGen stage 3) with a ToolWeaver codebook, sized for a 2-core CPU.

The data_example corpus (64 tools, 13 DFS trajectories, 49 assistant steps): RQ-VAE L=2 x K=16 codes plus a Finish
code sequence; SmolLM2-135M with the CPU recipe; memorisation, then agent tuning on one example per assistant step
(gold history as context, loss on that step) of the I1 + I2 trajectories; I3 is held out.

  python -m toolgen_jax.main --config=configs/agent.py --workdir=workdirs/agent
  python -m toolgen_jax.agent.eval --data=../shared/data/ToolBench/data_example --workdir=workdirs/agent \
      --setting=gt_tools --subset=heldout --groups=I3        # held out (also --setting=all)
  python -m toolgen_jax.agent.eval --data=../shared/data/ToolBench/data_example --workdir=workdirs/agent \
      --setting=gt_tools --subset=trained                    # training-set fit
"""

from toolgen_jax import config as base


def get_config():
  c = base.base_config()
  c.data.source = "toolbench"
  c.data.path = f"{base.data_root()}/ToolBench/data_example"
  c.data.trajectory_holdout_groups = ("I3",)
  c.data.trajectory_examples = "steps"
  c.model.checkpoint = "smollm2"
  base.cpu_recipe(c)
  c.codebook.method = "rqvae"
  c.codebook.levels = 2
  c.codebook.size = 16            # 16^2 = 256 codes for 64 tools + Finish
  c.codebook.rqvae_hidden = (256, 128, 64)
  c.codebook.code_dim = 32
  c.codebook.batch_size = 64
  c.codebook.steps = 500
  c.vocab.init = "codebook"
  c.train.stages = ("memorization", "trajectory")
  c.train.target_positions = 0    # every position: an agent step has up to ~700 target tokens (the recipe: 8)
  c.train.seq_len = 768
  c.train.batch_size = 2
  c.train.stage_steps.memorization = 60   # 64 documents: ~1.9 epochs of 2
  c.train.stage_steps.trajectory = 45     # 33 step examples of I1 + I2: ~2.7 epochs of 2
  c.train.log_every = 20
  c.train.async_checkpoint = False
  c.eval.baselines = ("bm25",)
  c.eval.settings = ("multi-domain",)
  c.eval.perplexity = False
  return base.lock(c)
