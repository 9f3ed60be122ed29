"""Tool-calling agent: ReAct loop with trie-constrained actions, schema-checked arguments, executors, evaluation.

`model_policy` (the trained Llama + trie) is imported by name so that the loop, executors and server do not import
JAX: `from toolgen_jax.agent import model_policy`.
"""

from toolgen_jax.agent.backend import Backend, ToolCache, demo_backend, request_tools, resolve_tools
from toolgen_jax.agent.executors import (CallableExecutor, ExecutionResult, Executor, ReplayExecutor, RestExecutor,
                                         canonical_arguments, standardize, toolbench_function_name)
from toolgen_jax.prompts import FINISH_TOOL, chat_turns, prompt_turns
from toolgen_jax.agent.loader import load_backend
from toolgen_jax.agent.loop import Decision, Episode, Step, decide, describe, run_episode
from toolgen_jax.agent.policy import LexicalPolicy, Policy, ScriptedPolicy, ScriptedStep, ToolChoice
from toolgen_jax.agent.schema import (ArgumentError, check_arguments, constrained_arguments, normalize_schema,
                                      validate_arguments)

__all__ = ["ArgumentError", "Backend", "CallableExecutor", "Decision", "Episode", "ExecutionResult", "Executor",
           "FINISH_TOOL", "LexicalPolicy", "Policy", "ReplayExecutor", "RestExecutor", "ScriptedPolicy", "ScriptedStep",
           "Step", "ToolCache", "ToolChoice", "canonical_arguments", "chat_turns", "check_arguments",
           "constrained_arguments", "decide", "demo_backend", "describe", "load_backend", "normalize_schema",
           "prompt_turns", "request_tools", "resolve_tools", "run_episode", "standardize", "toolbench_function_name",
           "validate_arguments"]
