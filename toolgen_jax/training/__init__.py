"""Training at scale: mesh + logical-axis rules, AdamW, input pipeline, alignment stages, sharded steps, checkpoints.

Public API
  sharding        make_mesh(config.mesh), rules_from_config(rules), tree_shardings(logical, shapes, mesh, rules),
                  batch_sharding, host_local_batch_to_global, activation_rules(mesh, rules),
                  maybe_initialize_distributed(config.mesh.distributed)
  optimizer       make_optimizer(config.train, params, logical_axes, total_steps, new_token_start=None)
                  -> (optax transform, lr schedule); trainable_mask(...); learning_rate_schedule(...)
  input_pipeline  Example(id, segments), InputPipeline(examples, tokenizer, batch_size, seq_len, seed, mode).batch(step)
  stages          stage_examples(stage, corpus=, queries=, trajectories=, codebook=, tokenizer=, ...),
                  memorization_examples / retrieval_examples / trajectory_examples, post_guided_refinement
  train           build_steps(model_config, config.train, mesh, rules, total_steps) -> CompiledSteps (train/eval/init,
                  shardings); fit(...) -> FitResult (the resumable loop); TrainState; NonFiniteError
  checkpoint      Checkpointer(directory, keep, save_every, best_metric, best_mode, async_save)
  aot             train_step_memory(model_config, config.train, mesh_config, rules, batch=, seq_len=)
"""

from toolgen_jax.training.input_pipeline import Example, InputPipeline
from toolgen_jax.training.train import CompiledSteps, FitResult, NonFiniteError, TrainState, build_steps, fit

__all__ = ["CompiledSteps", "Example", "FitResult", "InputPipeline", "NonFiniteError", "TrainState", "build_steps",
           "fit"]
