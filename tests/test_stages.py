"""Stage example builders (masks = exactly the assistant reply), the orchestration, the post-guided loop, and loss
decrease of each stage on real data."""

import pathlib

import jax
import numpy as np
import pytest

from _training_helpers import ByteChatTokenizer, ToyCodes, code_tokens, toy_codebook
from toolgen_jax import prompts
from toolgen_jax import config as config_lib
from toolgen_jax import data
from toolgen_jax.data.records import Message, Query, Trajectory
from toolgen_jax.models import llama
from toolgen_jax.training import input_pipeline as ip
from toolgen_jax.training import sharding as shd
from toolgen_jax.training import refinement, stages, train

LEVELS, SIZE = 2, 64
TOK = ByteChatTokenizer(code_tokens(LEVELS, SIZE))


def _target_texts(ex):
  return [t for t, is_t in ex.segments if is_t]


def test_render_chat_targets_are_the_assistant_replies():
  turns = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
           {"role": "assistant", "content": "a1"}, {"role": "user", "content": "more"},
           {"role": "assistant", "content": "a2"}]
  ex = prompts.render_chat(TOK, turns, "x")
  assert ex.text == TOK.apply_chat_template(turns)
  assert _target_texts(ex) == ["a1<|im_end|>\n", "a2<|im_end|>\n"]
  # The prompt before each reply is the inference prompt (template with the generation prompt).
  first_target = ex.text.index("a1<|im_end|>")
  assert ex.text[:first_target] == TOK.apply_chat_template(turns[:2], add_generation_prompt=True)


def test_render_chat_rejects_templates_that_rewrite_history():
  class Rewriting(ByteChatTokenizer):
    def apply_chat_template(self, turns, tokenize=False, add_generation_prompt=False):
      return f"[{len(turns)} turns]" + super().apply_chat_template(turns, tokenize, add_generation_prompt)
  with pytest.raises(ValueError, match="prefix|rewrites"):
    prompts.render_chat(Rewriting(), [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "x")


def test_example_builders_read_the_code_vocabulary():
  cb = ToyCodes({3: ["<T0_1>", "<T1_2>"]})
  (ex,) = stages.memorization_examples(data.ToolCorpus([data.Tool(id=i, tool_name=f"t{i}", api_name="a")
                                                        for i in range(4)]), cb, TOK, tool_ids=[3])
  assert _target_texts(ex) == ["<T0_1><T1_2><|im_end|>\n"]
  with pytest.raises(KeyError):
    stages.retrieval_examples([Query(id="q", text="x", relevant=(0,))], cb, TOK)


def test_retrieval_multi_target_modes():
  qs = [Query(id="a", text="find weather", relevant=(0, 2)), Query(id="b", text="stock", relevant=(1,))]
  cb = toy_codebook(3, LEVELS, SIZE)
  sep = stages.retrieval_examples(qs, cb, TOK, multi_target="separate")
  joint = stages.retrieval_examples(qs, cb, TOK, multi_target="joint")
  assert [e.id for e in sep] == ["retrieval/a/0", "retrieval/a/2", "retrieval/b/1"]
  assert _target_texts(sep[1]) == ["".join(cb[2]) + "<|im_end|>\n"]
  assert len(joint) == 2 and _target_texts(joint[0]) == ["".join(cb[0] + cb[2]) + "<|im_end|>\n"]
  with pytest.raises(data.DataError, match="relevant"):
    stages.retrieval_examples([Query(id="c", text="x", relevant=())], cb, TOK)


@pytest.mark.parametrize("system_prompt", [None, "", "Retrieve a tool."])
def test_generative_prompt_is_the_training_prompt(system_prompt):
  """Whatever config.train.system_prompt says, inference starts from exactly the prompt the model was trained on."""
  from toolgen_jax.models import tokenizer as tok_lib
  tok = tok_lib.load_tokenizer("smollm2")
  q = Query(id="q", text="Find the area of a triangle", relevant=(0,))
  ex = stages.retrieval_examples([q], ToyCodes({0: ["<a>"]}), tok, system_prompt=system_prompt)[0]
  prompt = "".join(t for t, is_t in ex.segments if not is_t)
  assert ip.encode_text(tok, prompt) == prompts.retrieval_prompt_ids(tok, q.text, system_prompt=system_prompt)
  n = len(prompts.retrieval_prompt_ids(tok, q.text, system_prompt=system_prompt))
  if system_prompt is None:  # SmolLM2's template inserts its own default system turn
    assert "SmolLM" in prompt and n > len(prompts.retrieval_prompt_ids(tok, q.text, system_prompt=""))
  else:
    assert "SmolLM" not in prompt and f"system\n{system_prompt}<|im_end|>" in prompt


def test_one_truncation_rule_for_training_and_inference():
  """A document longer than the budget: the code engine's cached prompt is token for token the inference prompt
  under the same budget (header and text start kept, the text's tail cut, the generation prompt kept)."""
  from toolgen_jax.models import tokenizer as tok_lib
  from toolgen_jax.training import feature_cache as fc
  tok = tok_lib.load_tokenizer("smollm2")
  text = "convert_units: Convert a quantity between units of length, mass and time. " * 6
  seq_len = 40
  v = len(tok)  # two ids no prompt contains serve as the two code levels
  table = np.array([[v - 2], [v - 1]])
  ids = np.asarray(prompts.retrieval_prompt_ids(tok, text, system_prompt="") + [v - 2, v - 1])  # untruncated
  keep = prompts.prompt_suffix_tokens(tok, "")
  cex = fc.code_examples([ids], table, seq_len, keep_tail=keep)
  want = prompts.retrieval_prompt_ids(tok, text, max_prompt_tokens=seq_len - 1, system_prompt="")
  n = int(cex.code_pos[0, 0]) + 1
  assert cex.truncated == 1 and len(want) == seq_len - 1 and cex.tokens[0, :n].tolist() == want
  assert tok.decode(want[-keep:]).endswith("assistant\n") and "convert_units" in tok.decode(want)


def _weather_trajectory(tid: str, *later: Message):
  """One weather tool (row 0) and a toy codebook whose row 1 is Finish; a trajectory that calls it, then `later`."""
  corpus = data.ToolCorpus([data.Tool(id=0, tool_name="weather", api_name="today", description="d")])
  tr = Trajectory(id=tid, query_id="q", messages=(
      Message(role="user", content="weather in Paris?"),
      Message(role="assistant", thought="look it up", action=0, action_name="today", action_input='{"city": "P"}'),
      Message(role="observation", content='{"response": "sunny"}')) + later)
  return corpus, toy_codebook(2, LEVELS, SIZE), tr


def test_trajectory_examples_use_the_agent_format_and_need_finish_codes():
  fmt = prompts
  corpus, cb, tr = _weather_trajectory("t", Message(
      role="assistant", thought="done", action=None, action_name="Finish",
      action_input='{"return_type": "give_answer", "final_answer": "sunny"}'))
  ex = stages.trajectory_examples([tr], corpus, cb, TOK, finish_id=1)[0]
  targets = _target_texts(ex)
  # thought, action code, action input for each of the 2 steps
  assert len(targets) == 6
  assert targets[1] == "".join(cb[0]) + "<|im_end|>\n" and targets[4] == "".join(cb[1]) + "<|im_end|>\n"
  assert fmt.ACTION_REQUEST in ex.text and fmt.SYSTEM_PROMPT in ex.text
  with pytest.raises(data.DataError, match="finish_id"):
    stages.trajectory_examples([tr], corpus, cb, TOK)


def test_trajectory_examples_per_step_and_steps_without_a_code():
  fmt = prompts
  corpus, cb, tr = _weather_trajectory(
      "I1/t",
      Message(role="assistant", thought="", action=None, action_name="made_up_api", action_input="{}"),
      Message(role="observation", content='{"error": "no such function"}'),
      Message(role="assistant", content="It is sunny.", action=None, action_name=None),
      Message(role="assistant", thought="done", action=None, action_name="Finish",
              action_input=fmt.finish_input("sunny")))
  (whole,) = stages.trajectory_examples([tr], corpus, cb, TOK, finish_id=1)
  # The hallucinated call (and its observation) and the action-less answer have no code: left out, not Finish.
  assert "made_up_api" not in whole.text and "no such function" not in whole.text
  assert whole.text.count("".join(cb[1])) == 1 and len(_target_texts(whole)) == 6
  steps = stages.trajectory_examples([tr], corpus, cb, TOK, finish_id=1, per_step=True)
  assert [e.id for e in steps] == ["trajectory/I1/t/1", "trajectory/I1/t/3"]
  first, second = steps
  assert _target_texts(first) == _target_texts(whole)[:3] and _target_texts(second) == _target_texts(whole)[3:]
  # Step 2's context is exactly the inference prompt: the gold history with no loss on it.
  policy_prompt = TOK.apply_chat_template(fmt.prompt_turns(
      (tr.messages[0], tr.messages[1], tr.messages[2]), "think", action_text=lambda m: cb.tool_text(m.action),
      tool_of=lambda m: corpus[m.action]), add_generation_prompt=True)
  assert second.text.startswith(policy_prompt) and second.text == whole.text
  assert stages.stage_examples("trajectory", corpus=corpus, trajectories=[tr], codes=cb, tokenizer=TOK,
                               finish_id=1, data_config={"trajectory_examples": "steps"}) == steps
  with pytest.raises(ValueError, match="whole|steps"):
    stages.stage_examples("trajectory", corpus=corpus, trajectories=[tr], codes=cb, tokenizer=TOK, finish_id=1,
                          data_config={"trajectory_examples": "turns"})


def test_post_guided_refinement_swaps_codebooks_each_round():
  class CB:
    def __init__(self, codes):
      self.codes = np.asarray(codes)
  calls = []

  def train_round(params, codebook, model, r):
    calls.append((r, codebook.codes.copy(), model))
    return params + 1

  def quantize(emb, old, r):
    assert emb.shape == (3, 4)
    return CB(np.roll(old.codes, 1, axis=0))   # a changed assignment every round

  def add_tokens(params, model, new):
    return params, model + 1   # the model a round trains is the one its tokens were added to

  params, cb, model, hist = refinement.post_guided_refinement(
      0, CB([[0, 1], [2, 3], [4, 5]]), 10, rounds=2, train=train_round,
      embed_tools=lambda p, m, r: np.zeros((3, 4)), quantize=quantize, add_tokens=add_tokens)
  assert params == 2 and model == 12 and [h.round for h in hist] == [0, 1]
  assert all(h.changed_tools == 3 for h in hist)
  assert [c[2] for c in calls] == [11, 12]
  np.testing.assert_array_equal(calls[0][1], [[4, 5], [0, 1], [2, 3]])
  np.testing.assert_array_equal(cb.codes, calls[1][1])


def test_changed_tools_pads_a_suffix_level():
  old = np.array([[0, 1], [2, 3], [4, 5]])
  new = np.array([[0, 1, -1], [2, 3, 0], [4, 6, -1]])
  assert refinement.changed_tools(old, new) == 2
  assert refinement.changed_tools(old, old[:2]) == -1


def test_mean_hidden_embeddings_are_normalised_and_ignore_padding():
  from toolgen_jax.codebook import embed
  mc = llama.LlamaConfig.tiny()
  params = llama.init_params(mc, jax.random.PRNGKey(0))
  t = np.array([[5, 6, 7, 0], [5, 6, 7, 9]], np.int32)
  m = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], np.int32)
  e = embed.mean_hidden_embeddings(params, mc, [(t, m)])
  assert e.shape == (2, mc.hidden_size)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(e[0], e[1], atol=1e-5)  # the padded position's token does not matter


def test_stage_steps_and_training_split():
  import types
  c = config_lib.base_config()
  c.train.steps, c.train.stage_steps.retrieval = 7, 5
  assert stages.stage_steps(c, "memorization") == 7 and stages.stage_steps(c, "retrieval") == 5
  assert stages.stage_steps(c, "retrieval_refine0") == 5  # a round retrains the last stage as long
  c.train.stage_steps.refine = 2
  assert stages.stage_steps(c, "retrieval_refine1") == 2
  qs = [Query(id=s, text=s, relevant=(0,), split=s) for s in ("train", "dev", "test")]
  assert [q.id for q in stages.training_queries(types.SimpleNamespace(queries=qs))] == ["train"]


# ---- real data: each stage learns -----------------------------------------------------------------------------

def _fit(examples, tmp_path, stage, steps=24):
  c = config_lib.base_config()
  c.train.learning_rate, c.train.warmup_fraction, c.train.steps, c.train.log_every = 3e-3, 0.1, steps, 4
  c.train.progress_bar, c.train.tensorboard, c.train.async_checkpoint = False, False, False
  mc = llama.LlamaConfig.tiny(vocab_size=TOK.vocab_size)
  pipe = ip.InputPipeline(examples, TOK, batch_size=8, seq_len=192, seed=0, mode="bucket")
  res = train.fit(model_config=mc, params=llama.init_params(mc, jax.random.PRNGKey(0)), train_config=c.train,
                  mesh=shd.make_mesh(c.mesh, jax.devices()[:1]), rules=c.mesh.logical_axis_rules, pipeline=pipe,
                  workdir=tmp_path, stage=stage)
  return [r["loss"] for r in res.history]


@pytest.fixture(scope="module")
def stabletoolbench(shared_data):
  ds = data.load_source("stabletoolbench", pathlib.Path(shared_data) / "StableToolBench/solvable_queries/test_instruction")
  return ds


def test_memorization_and_retrieval_losses_decrease(stabletoolbench, tmp_path):
  ds = stabletoolbench
  cb = toy_codebook(len(ds.corpus), LEVELS, SIZE)
  queries = [q for q in ds.queries if q.group == "I1"][:24]
  tools = sorted({t for q in queries for t in q.relevant})
  mem = stages.memorization_examples(ds.corpus, cb, TOK, max_chars=160, tool_ids=tools)
  ret = stages.retrieval_examples(queries, cb, TOK)
  assert len(mem) == len(tools) and len(ret) == sum(len(q.relevant) for q in queries)
  for name, ex in (("memorization", mem), ("retrieval", ret)):
    losses = _fit(ex, tmp_path / name, name)
    assert np.mean(losses[-4:]) < 0.75 * np.mean(losses[:4]), (name, losses)


def test_trajectory_loss_decreases(shared_data, tmp_path):
  ds = data.load_source("toolbench", pathlib.Path(shared_data) / "ToolBench/data_example")
  cb = toy_codebook(len(ds.corpus) + 1, LEVELS, SIZE)
  ex = stages.trajectory_examples(ds.trajectories, ds.corpus, cb, TOK, finish_id=len(ds.corpus))
  assert len(ex) == len(ds.trajectories) > 5
  losses = _fit(ex, tmp_path, "trajectory")
  assert np.mean(losses[-4:]) < 0.75 * np.mean(losses[:4]), losses


def test_run_stages_chains_stages_and_skips_finished_ones(stabletoolbench, tmp_path):
  import dataclasses
  import types

  from toolgen_jax.models.vocab import Model
  ds = stabletoolbench
  queries = [dataclasses.replace(q, split="train") for q in ds.queries if q.group == "I1"][:8]
  tools = sorted({t for q in queries for t in q.relevant})
  corpus = data.ToolCorpus(ds.corpus[t] for t in tools)
  remap = {t: i for i, t in enumerate(tools)}
  queries = [dataclasses.replace(q, relevant=tuple(remap[t] for t in q.relevant)) for q in queries]
  queries.append(Query(id="held-out", text="never trained on", relevant=(0,), split="test"))
  dset = types.SimpleNamespace(corpus=corpus, queries=queries, trajectories=[])
  c = config_lib.base_config()
  c.train.stages, c.train.steps, c.train.batch_size, c.train.seq_len = ("memorization", "retrieval"), 3, 4, 96
  c.train.progress_bar, c.train.tensorboard, c.train.async_checkpoint, c.train.learning_rate = False, False, False, 1e-3
  c.data.doc_max_chars = 120
  mc = llama.LlamaConfig.tiny(vocab_size=TOK.vocab_size)
  p0 = llama.init_params(mc, jax.random.PRNGKey(0))
  codes = toy_codebook(len(corpus), LEVELS, SIZE)
  cb = types.SimpleNamespace(finish_id=None)
  kw = dict(model=Model(config=mc, params=p0, tokenizer=TOK, new_token_start=256), dataset=dset, codebook=cb,
            codes=lambda codebook, tok: codes, workdir=str(tmp_path), mesh=shd.make_mesh(c.mesh, jax.devices()[:1]),
            log=lambda s: None)
  params, _, _, res = stages.run_stages(c, **kw)
  assert list(res) == ["memorization", "retrieval"]
  assert res["retrieval"].examples == sum(len(q.relevant) for q in queries[:-1])  # the test query is not trained on
  assert res["retrieval"].fit.history[0]["step"] == 1 and res["memorization"].fit.resumed_from is None
  assert not np.allclose(params["embed"]["embedding"], p0["embed"]["embedding"])
  # A re-run finds both stages finished and returns the same params without training.
  params2, _, _, res2 = stages.run_stages(c, **kw)
  assert res2["retrieval"].fit.resumed_from == 3 and res2["retrieval"].fit.history == []
  np.testing.assert_array_equal(params2["embed"]["embedding"], params["embed"]["embedding"])


@pytest.mark.slow  # heavy compile: the mixed-schedule test below runs the code engine through run_stages fast
def test_code_engine_stage_trains_code_rows_only_and_resumes(tmp_path):
  """train.engine='code' through the orchestration: the pretrained rows and the frozen layer stay bit-identical,
  the head comes out untied with trained code rows, the code accuracy rises, and a re-run loads the trained parts
  instead of training again."""
  import types

  from toolgen_jax.models.vocab import Model
  n_tools = 12
  cb = toy_codebook(n_tools, LEVELS, SIZE)

  class Codes(ToyCodes):
    token_ids = np.array([[TOK.added[f"<T{l}_{c}>"] for c in range(SIZE)] for l in range(LEVELS)])

  codes = Codes(cb)
  corpus = data.ToolCorpus([data.Tool(id=i, tool_name=f"tool{i}", api_name=f"api{i}", description=f"does thing {i}")
                            for i in range(n_tools)])
  dset = types.SimpleNamespace(corpus=corpus, queries=[], trajectories=[])
  c = config_lib.base_config()
  c.train.stages, c.train.engine, c.train.frozen_layers = ("memorization",), "code", 1
  c.train.batch_size, c.train.seq_len, c.train.log_every, c.train.lr_rows = 4, 96, 5, 1e-2
  c.train.stage_epochs.memorization = 30.0
  mc = llama.LlamaConfig.tiny(vocab_size=TOK.vocab_size, tie_embeddings=True)
  p0 = llama.init_params(mc, jax.random.PRNGKey(0))
  start = 256 + 2  # bytes + ChatML specials come before the code tokens
  kw = dict(model=Model(config=mc, params=p0, tokenizer=TOK, new_token_start=start), dataset=dset,
            codebook=types.SimpleNamespace(finish_id=None), codes=lambda codebook, tok: codes,
            workdir=str(tmp_path), log=lambda s: None)
  params, _, model, res = stages.run_stages(c, **kw)
  assert not model.config.tie_embeddings and res["memorization"].steps == 90  # ceil(30 epochs * 12 / 4)
  hist = res["memorization"].fit
  assert hist[-1]["accuracy"] > hist[0]["accuracy"] and hist[-1]["loss"] < hist[0]["loss"]
  e0, e1 = np.asarray(p0["embed"]["embedding"]), np.asarray(params["embed"]["embedding"])
  np.testing.assert_array_equal(e1, e0)  # input rows untouched: the cache stays exact
  head = np.asarray(params["lm_head"]["kernel"])
  np.testing.assert_array_equal(head[:, :start], e0[:start].T)  # pretrained output rows bit-identical
  assert not np.allclose(head[:, start:], e0[start:].T)        # the code rows trained
  np.testing.assert_array_equal(jax.tree.leaves(params["layers"])[0][0], jax.tree.leaves(p0["layers"])[0][0])
  np.testing.assert_array_equal(np.asarray(model.params["lm_head"]["kernel"]), e0.T)  # base, untied alike
  assert (tmp_path / "checkpoints" / "memorization" / "engine.npz").exists()
  params2, _, _, _ = stages.run_stages(c, **kw)  # a re-run loads the trained parts
  np.testing.assert_array_equal(np.asarray(params2["lm_head"]["kernel"]), head)


def _mixed_engine_run(tmp_path):
  """A toy mixed code-engine run: config, run_stages kwargs, initial params, corpus, tool count."""
  import types

  from toolgen_jax.models.vocab import Model
  n_tools = 8
  codes = toy_codebook(n_tools, LEVELS, SIZE)

  class Codes(ToyCodes):
    token_ids = np.array([[TOK.added[f"<T{l}_{c}>"] for c in range(SIZE)] for l in range(LEVELS)])

  codes = Codes(codes)
  corpus = data.ToolCorpus([data.Tool(id=i, tool_name=f"tool{i}", api_name=f"api{i}",
                                      description=f"Does thing {i}. Then does more.",
                                      parameters={"type": "object", "properties": {"x": {"type": "string"}}})
                            for i in range(n_tools)])
  queries = [Query(id=f"q{i}", text=f"please do thing {i}", relevant=(i,), split="train") for i in range(4)]
  queries.append(Query(id="qt", text="a test question", relevant=(5,), split="test"))
  dset = types.SimpleNamespace(corpus=corpus, queries=queries, trajectories=[])
  mc = llama.LlamaConfig.tiny(vocab_size=TOK.vocab_size, tie_embeddings=True)
  c = config_lib.base_config()
  c.train.stages, c.train.engine, c.train.frozen_layers = ("memorization", "retrieval"), "code", mc.num_layers
  c.train.schedule, c.train.memorization_views = "mixed", ("name_description", "parameters")
  c.train.text_weight, c.train.text_positions = 1.0, 2
  c.train.batch_size, c.train.seq_len, c.train.log_every, c.train.lr_rows = 4, 96, 5, 1e-2
  c.train.stage_epochs.mixed = 4.0
  p0 = llama.init_params(mc, jax.random.PRNGKey(0))
  kw = dict(model=Model(config=mc, params=p0, tokenizer=TOK, new_token_start=256 + 2), dataset=dset,
            codebook=types.SimpleNamespace(finish_id=None), codes=lambda codebook, tok: codes,
            workdir=str(tmp_path), log=lambda s: None)
  return c, kw, p0, corpus, n_tools


def test_mixed_schedule_trains_views_and_queries_in_one_engine_run(tmp_path):
  """train.schedule='mixed': the memorisation views (documents as queries) and the training queries form one code
  engine run named 'mixed'; with the whole backbone frozen the text term is on; the recipe engine refuses it."""
  c, kw, p0, corpus, n_tools = _mixed_engine_run(tmp_path)
  docs = stages.memorization_documents(corpus, views=c.train.memorization_views)
  assert len(docs) == 2 * n_tools and len({d[2] for d in docs}) == len(docs)  # two distinct views per tool
  _, _, _, res = stages.run_stages(c, **kw)
  assert list(res) == ["mixed"] and res["mixed"].examples == 2 * n_tools + 4  # test queries never train
  assert "text_nll" in res["mixed"].fit[-1]
  assert (tmp_path / "feature_cache" / "mixed" / "text_states.npy").exists()
  c.train.engine = "recipe"
  with pytest.raises(ValueError, match="mixed"):
    stages.run_stages(c, **kw)


@pytest.mark.slow  # two engine runs and a 2-layer pass through the cached prompts: the fast tier has the pieces
def test_code_inputs_epochs_train_the_input_rows_after_the_output_rows(tmp_path):
  """train.code_inputs_epochs: a second phase also trains the code tokens' input rows, from the prompts' cached keys
  and values; the pretrained rows stay bit-identical and a re-run loads the trained parts."""
  c, kw, p0, _, _ = _mixed_engine_run(tmp_path)
  c.train.code_inputs_epochs = 2.0
  params, _, _, res = stages.run_stages(c, **kw)
  assert [h.get("phase") for h in res["mixed"].fit][-1] == "inputs"
  assert (tmp_path / "feature_cache" / "mixed" / "prefix_kv.npy").exists()
  e0, e1 = np.asarray(p0["embed"]["embedding"]), np.asarray(params["embed"]["embedding"])
  np.testing.assert_array_equal(e1[:258], e0[:258])
  assert np.abs(e1[258:] - e0[258:]).max() > 0
  params2, _, _, _ = stages.run_stages(c, **kw)
  np.testing.assert_array_equal(np.asarray(params2["embed"]["embedding"]), e1)
