"""Llama-family backbone: the Flax/JAX port, weights, tokenizer, vocabulary extension, LoRA and HF export.

The public surface is the `llama` module (config, params, forward, KV cache); the others are imported lazily by
name (`from toolgen_jax.models import weights`) so that importing the model does not import transformers.
"""

from toolgen_jax.models.llama import (KVCache, LlamaConfig, embed, forward, hidden_states, init_cache,
                                      init_params, logits_from_hidden, param_logical_axes, param_shapes,
                                      reorder_cache)

__all__ = ["KVCache", "LlamaConfig", "embed", "forward", "hidden_states", "init_cache", "init_params",
           "logits_from_hidden", "param_logical_axes", "param_shapes", "reorder_cache"]
