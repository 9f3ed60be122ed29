"""The ReAct loop (toolgen_jax/agent/loop.py) with scripted and lexical policies and the callable registry."""

import json

import pytest

from toolgen_jax import prompts as fmt
from toolgen_jax.agent import loop
from toolgen_jax.agent.executors import CallableExecutor
from toolgen_jax.agent.policy import LexicalPolicy, ScriptedPolicy, ScriptedStep, ToolChoice
from toolgen_jax.data.records import Message, Tool, ToolCorpus, Trajectory

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def make_corpus():
  return ToolCorpus([
      Tool(0, "weather", "weather", description="current weather temperature in a city", parameters=CITY),
      Tool(0, "population", "population", description="number of people living in a city", parameters=CITY),
      Tool(0, "calculator", "calculator", description="add two numbers",
           parameters={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                       "required": ["a", "b"]}),
      Tool(0, "delete_everything", "delete_everything", description="dangerous", parameters={}),
  ])


class Recorder(CallableExecutor):

  def __init__(self):
    super().__init__(timeout_s=2)
    self.calls = []
    self.register("weather", lambda city: {"city": city, "temp_c": 21})
    self.register("population", lambda city: {"city": city, "people": 2_100_000})
    self.register("calculator", lambda a, b: a + b)
    self.register("delete_everything", lambda: "everything deleted")

  def __call__(self, tool, arguments):
    self.calls.append((tool.name, dict(arguments)))
    return super().__call__(tool, arguments)


def test_multi_step_episode_reaches_finish_and_is_a_training_trajectory():
  corpus, ex = make_corpus(), Recorder()
  policy = ScriptedPolicy([
      ScriptedStep("Look up the weather.", 0, '{"city": "Paris"}'),
      ScriptedStep("Now the population.", 1, '{"city": "Paris"}'),
      ScriptedStep("Add them for fun.", 2, '{"a": "21", "b": 2100000}'),
      ScriptedStep("Done.", None, fmt.finish_input("21C and 2.1M people")),
  ])
  seen = []
  ep = loop.run_episode("Weather and population of Paris?", policy, ex, corpus, max_steps=6, on_step=seen.append,
                        query_id="q1")
  assert ep.finished and ep.stop_reason == "finish" and ep.final_answer == "21C and 2.1M people"
  assert [c[0] for c in ex.calls] == ["weather", "population", "calculator"]
  assert ex.calls[2][1] == {"a": 21, "b": 2100000}  # coerced before the call
  assert len(seen) == 4
  roles = [m.role for m in ep.trajectory.messages]
  assert roles == ["user"] + ["assistant", "observation"] * 3 + ["assistant"]
  msgs = ep.trajectory.messages
  assert msgs[1].action == 0 and msgs[1].action_name == "weather" and msgs[1].thought == "Look up the weather."
  assert json.loads(msgs[2].content) == {"error": "", "response": '{"city": "Paris", "temp_c": 21}'}
  assert json.loads(msgs[6].content)["response"] == "2100021"
  assert msgs[-1].action is None and msgs[-1].action_name == "Finish"
  # the episode round-trips through the shared record format
  assert Trajectory.from_json(json.loads(loop.trajectory_json(ep))) == ep.trajectory
  assert "Observation:" in loop.describe(ep.steps[0], corpus)


@pytest.mark.parametrize("text,expected", [
    ('{"city": ', "not valid JSON"),
    ('{"town": "Paris"}', "missing required argument 'city'"),
    ('{"city": 5}', "5 is not of type 'string'"),
    ('{"city": "Paris", "rm": "-rf"}', "unknown argument(s) ['rm']"),
    ("__import__('os').system('rm -rf /')", "not valid JSON"),
])
def test_invalid_arguments_become_an_error_observation_not_a_call(text, expected):
  corpus, ex = make_corpus(), Recorder()
  policy = ScriptedPolicy([ScriptedStep("try", 0, text), ScriptedStep("retry", 0, '{"city": "Paris"}')])
  ep = loop.run_episode("weather?", policy, ex, corpus, max_steps=5)
  first = ep.steps[0]
  assert first.decision.kind == "invalid_arguments"
  obs = json.loads(first.observation)
  assert obs["response"] == "" and expected in obs["error"] and obs["error"].startswith("invalid arguments for weather")
  assert ex.calls == [("weather", {"city": "Paris"})]  # only the corrected call ran
  assert ep.finished


def test_a_tool_outside_the_candidates_is_never_executed():
  corpus, ex = make_corpus(), Recorder()
  policy = ScriptedPolicy([ScriptedStep("delete", 3, "{}"), ScriptedStep("out of range", 99, "{}"),
                           ScriptedStep("negative", -5, "{}")])
  ep = loop.run_episode("weather?", policy, ex, corpus, candidates=[0, 1], max_steps=5)
  assert ex.calls == []
  kinds = [s.decision.kind for s in ep.steps]
  assert kinds == ["invalid_tool"] * 3 + ["finish"]
  assert "not an available tool (got 3)" in json.loads(ep.steps[0].observation)["error"]
  assert ep.trajectory.messages[1].action_name == fmt.INVALID_ACTION and ep.trajectory.messages[1].action is None
  assert ep.trajectory.tools == (0, 1)
  # without candidates the corpus bounds the ids: 99 and -5 are still refused
  ep = loop.run_episode("weather?", ScriptedPolicy(policy.steps[1:]), ex, corpus, max_steps=3)
  assert ex.calls == [] and [s.decision.kind for s in ep.steps][:2] == ["invalid_tool", "invalid_tool"]


def test_the_first_allowed_ranked_choice_is_taken():

  class Ranked(ScriptedPolicy):

    def choose_tool(self, history, thought, candidates, *, k=1, allow_finish=True):
      return [ToolChoice(3, -0.1), ToolChoice(1, -0.5)] if not any(m.role == "assistant" for m in history) else \
          [ToolChoice(None, 0.0)]

  corpus, ex = make_corpus(), Recorder()
  ep = loop.run_episode("q", Ranked([ScriptedStep("t", 3, '{"city": "Oslo"}')]), ex, corpus, candidates=[0, 1])
  assert ex.calls == [("population", {"city": "Oslo"})]


def test_step_and_time_limits():
  corpus, ex = make_corpus(), Recorder()
  forever = ScriptedPolicy([ScriptedStep("again", 0, '{"city": "Paris"}')] * 100)
  ep = loop.run_episode("q", forever, ex, corpus, max_steps=4)
  assert ep.stop_reason == "step_limit" and not ep.finished and ep.final_answer is None and len(ep.steps) == 4
  ep = loop.run_episode("q", forever, ex, corpus, max_steps=50, time_limit_s=0.0)
  assert ep.stop_reason == "time_limit" and ep.steps == ()
  give_up = ScriptedPolicy([ScriptedStep("no", None, fmt.finish_input("", give_up=True))])
  ep = loop.run_episode("q", give_up, ex, corpus)
  assert ep.stop_reason == "give_up" and ep.final_answer is None


def test_invalid_finish_arguments_are_shown_to_the_model():
  corpus, ex = make_corpus(), Recorder()
  policy = ScriptedPolicy([ScriptedStep("end", None, '{"return_type": "maybe"}')], final_answer="ok")
  ep = loop.run_episode("q", policy, ex, corpus)
  assert ep.steps[0].decision.kind == "invalid_arguments"
  assert "'maybe' is not one of" in json.loads(ep.steps[0].observation)["error"]
  assert ep.final_answer == "ok"


def test_executor_exceptions_and_long_observations_are_contained():
  corpus = make_corpus()

  def broken(tool, args):
    raise RuntimeError("socket gone")

  ep = loop.run_episode("q", ScriptedPolicy([ScriptedStep("t", 0, '{"city": "x"}')]), broken, corpus)
  assert json.loads(ep.steps[0].observation)["error"] == "executor failed: RuntimeError: socket gone"
  ex = CallableExecutor({"weather": lambda city: "w" * 10_000})
  ep = loop.run_episode("q", ScriptedPolicy([ScriptedStep("t", 0, '{"city": "x"}')]), ex, corpus,
                        max_observation_chars=300)
  assert len(ep.steps[0].observation) == 300


def test_lexical_policy_episode_with_gt_candidates():
  corpus, ex = make_corpus(), Recorder()
  ep = loop.run_episode('How many people live in "Lyon"?', LexicalPolicy(corpus, max_calls=1), ex, corpus,
                        candidates=[0, 1, 2])
  assert ex.calls == [("population", {"city": "Lyon"})]
  assert ep.finished and "2100000" in ep.final_answer


def test_chat_turns_follow_the_toolgen_agent_format():
  corpus = make_corpus()
  msgs = (Message("user", "q"), Message("assistant", thought="t", action=0, action_input='{"city": "a"}'),
          Message("observation", "obs"), Message("assistant", action=None, action_name="Finish", action_input="{}"))
  action_text = lambda m: "<finish>" if m.action is None else f"<tool_{m.action}>"
  tool_of = lambda m: fmt.FINISH_TOOL if m.action is None else corpus[m.action]
  turns = fmt.chat_turns(msgs, action_text=action_text, tool_of=tool_of)
  assert [t["role"] for t in turns] == ["system", "user", "assistant", "user", "assistant", "user", "assistant",
                                        "user", "user", "assistant", "user", "assistant"]
  assert turns[3]["content"] == fmt.ACTION_REQUEST and turns[4]["content"] == "<tool_0>"
  assert turns[5]["content"].startswith(fmt.INPUT_REQUEST) and '"weather"' in turns[5]["content"]
  p = fmt.prompt_turns(msgs[:3], "input", action_text=action_text, tool_of=tool_of, thought="t2", tool=corpus[1],
                       action="<tool_1>")
  assert p[-1]["content"].startswith(fmt.INPUT_REQUEST) and p[-2]["content"] == "<tool_1>" and p[-4]["content"] == "t2"
