"""Trajectory-replay evaluation (toolgen_jax/agent/eval.py): oracle and constant policies against hand counts."""

import json

from toolgen_jax.agent import eval as agent_eval
from toolgen_jax import prompts as fmt
from toolgen_jax.agent.policy import LexicalPolicy, Policy, ToolChoice, steps_taken
from toolgen_jax.data.records import Message, Tool, ToolCorpus, Trajectory

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CORPUS = ToolCorpus([Tool(0, "w", "w", parameters=CITY), Tool(0, "p", "p", parameters=CITY), Tool(0, "x", "x")])


def traj(tid, steps, tools=(0, 1)):
  msgs = [Message("user", tid)]  # distinct queries: the oracle keys on them
  for a, args in steps:
    msgs.append(Message("assistant", action=a, action_name="Finish" if a is None else CORPUS[a].name,
                        action_input=args))
    if a is not None:
      msgs.append(Message("observation", '{"error": "", "response": "ok"}'))
  return Trajectory(tid, "q", tuple(msgs), tools)


TRAJS = [traj("I1/a", [(0, '{"city": "A"}'), (1, '{"city": "B"}'), (None, fmt.finish_input("x"))]),
         traj("I2/b", [(1, '{"city": 3}'), (None, fmt.finish_input("y"))]),
         Trajectory("I2/c", "q", (Message("user", "q"), Message("assistant", action=None, action_name="ghost")), ())]


class Oracle(Policy):
  """Reads the gold answer out of a lookup keyed by the history length (what a perfect model would say)."""

  def __init__(self, trajs):
    self.gold = {}
    for t in trajs:
      for i, m in enumerate(t.messages):
        if m.role == "assistant":
          self.gold[(t.messages[0].content, i)] = m

  def think(self, history):
    return ""

  def choose_tool(self, history, thought, candidates, *, k=1, allow_finish=True):
    return [ToolChoice(self.gold[(history[0].content, len(history))].action)]

  def arguments(self, history, thought, tool):
    return '{"city": "A"}' if steps_taken(history) == 0 else '{"city": "B"}'


class AlwaysFinish(Oracle):

  def choose_tool(self, history, thought, candidates, *, k=1, allow_finish=True):
    return [ToolChoice(None), ToolChoice(2)]

  def arguments(self, history, thought, tool):
    return "not json"


def test_oracle_scores_one_and_unresolved_steps_are_skipped():
  out = agent_eval.evaluate(Oracle(TRAJS[:2]), TRAJS, CORPUS)
  o = out["overall"]
  assert out["skipped_unresolved"] == 1
  assert o["steps"] == 5 and o["tool_accuracy"] == 1.0 and o["call_accuracy"] == 1.0 and o["finish_accuracy"] == 1.0
  assert o["argument_steps"] == 3
  assert o["argument_validity"] == 1.0
  assert o["argument_exact_match"] == round(2 / 3, 4)  # I2/b's gold is {"city": 3}: invalid, so never matched
  assert o["gold_argument_validity"] == round(2 / 3, 4)
  assert out["by_group"]["I1"]["steps"] == 3 and out["by_group"]["I2"]["steps"] == 2


def test_constant_finish_policy_matches_hand_counts():
  out = agent_eval.evaluate(AlwaysFinish(TRAJS[:2]), TRAJS, CORPUS, k=2)
  o = out["overall"]
  assert o["tool_accuracy"] == round(2 / 5, 4)  # the two Finish steps
  assert o["finish_accuracy"] == 1.0 and o["call_accuracy"] == 0.0
  assert o["recall_at_k"] == round(2 / 5, 4)  # tool 2 is never gold
  assert o["argument_validity"] == 0.0 and o["refused_rate"] == 0.0


def test_refused_choices_are_counted():

  class Outside(AlwaysFinish):

    def choose_tool(self, history, thought, candidates, *, k=1, allow_finish=True):
      return [ToolChoice(2)]

  assert agent_eval.evaluate(Outside(TRAJS[:2]), TRAJS[:2], CORPUS)["overall"]["refused_rate"] == 1.0
  assert agent_eval.evaluate(Outside(TRAJS[:2]), TRAJS[:2], CORPUS, setting="all")["overall"]["refused_rate"] == 0.0


def test_history_leaves_out_unknown_action_steps_as_training_does():
  ghost = Message("assistant", action=None, action_name="ghost_tool", action_input="{}")
  msgs = (Message("user", "q"), Message("assistant", action=0, action_name="w", action_input='{"city": "A"}'),
          Message("observation", "r0"), ghost, Message("observation", "ghost answer"),
          Message("assistant", action=None, action_name="Finish", action_input=fmt.finish_input("x")))
  kept, dropped = fmt.known_steps(msgs)
  assert dropped == 1 and kept == msgs[:3] + msgs[5:]
  seen = []

  class Recorder(AlwaysFinish):

    def choose_tool(self, history, thought, candidates, *, k=1, allow_finish=True):
      seen.append(tuple(history))
      return [ToolChoice(None)]

  out = agent_eval.evaluate(Recorder([]), [Trajectory("I1/g", "q", msgs, (0,))], CORPUS, arguments=False)
  assert out["skipped_unresolved"] == 1 and out["overall"]["steps"] == 2
  assert seen == [msgs[:1], msgs[:3]]  # the Finish step's history has no ghost step nor its observation


def test_remap_by_tool_key():
  target = ToolCorpus([Tool(0, "p", "p"), Tool(0, "w", "w")])
  out, missing = agent_eval.remap(TRAJS[:1], CORPUS, target)
  assert missing == 0 and [m.action for m in out[0].messages if m.role == "assistant"] == [1, 0, None]
  assert out[0].tools == (1, 0)
  out, missing = agent_eval.remap(TRAJS[:1], CORPUS, ToolCorpus([Tool(0, "w", "w")]))
  assert missing == 1


def test_lexical_baseline_on_toolbench_answers(shared_data):
  from toolgen_jax.data.readers import load_source
  ds = load_source("toolbench", shared_data / "ToolBench/data_example", log=False)
  out = agent_eval.evaluate(LexicalPolicy(ds.corpus, max_calls=100), ds.trajectories, ds.corpus, k=5)
  o = out["overall"]
  assert out["trajectories"] == 13 and o["steps"] == 49
  assert 0.0 < o["tool_accuracy"] <= o["recall_at_k"] <= 1.0
  assert o["refused_rate"] == 0.0  # restricted to the offered tools
  assert o["argument_validity"] == 1.0  # schema-constrained generation is valid by construction
  assert o["gold_argument_validity"] == 1.0
  json.dumps(out)


def test_lockstep_batches_hold_the_next_step_of_each_trajectory_and_refill_ended_rows():
  """Batched replay sends, per batch, the next step of up to batch_size trajectories (shortest first), a row freed
  by a trajectory that ended taken at once by the next: every step once, each trajectory's steps in order and
  one batch apart (so a step continues from its previous step's KV cache), and the same figures at any batch size."""
  long = traj("I1/long", [(0, '{"city": "A"}'), (1, '{"city": "B"}'), (0, '{"city": "C"}'),
                          (None, fmt.finish_input("a much longer final answer " * 20))])
  trajs = [long] + TRAJS
  per = []
  for t in trajs:
    messages, _ = fmt.known_steps(t.messages)
    per.append([(t, i, m, messages[:i], None) for i, m in enumerate(messages) if m.role == "assistant"])
  batches = list(agent_eval._lockstep_batches(per, 2))
  seen = [(s[0].id, s[1]) for b in batches for s in b]
  assert sorted(seen) == sorted((s[0].id, s[1]) for steps in per for s in steps)  # every step exactly once
  for b in batches:
    assert 1 <= len(b) <= 2 and len({s[0].id for s in b}) == len(b)  # one step per trajectory per batch
  where = {}
  for k, b in enumerate(batches):
    for s in b:
      where.setdefault(s[0].id, []).append((k, s[1]))
  for tid, at in where.items():  # consecutive batches, steps in order
    assert [k for k, _ in at] == list(range(at[0][0], at[0][0] + len(at))), tid
    assert [i for _, i in at] == sorted(i for _, i in at), tid
  assert batches[0][0][0].id != "I1/long"  # shortest first
  # 2, 3 and 4 steps: b's row goes to the long one as soon as b ends (a fourth trajectory has no known step)
  assert [[(s[0].id, s[1]) for s in b] for b in batches][:3] == [
      [("I2/b", 1), ("I1/a", 1)], [("I2/b", 3), ("I1/a", 3)], [("I1/a", 5), ("I1/long", 1)]]
  assert [len(b) for b in batches] == [2, 2, 2, 1, 1, 1]
  one = agent_eval.evaluate(Oracle(trajs), trajs, CORPUS, batch_size=1)
  two = agent_eval.evaluate(Oracle(trajs), trajs, CORPUS, batch_size=2)
  assert one == two and one["overall"]["steps"] == sum(map(len, per))
