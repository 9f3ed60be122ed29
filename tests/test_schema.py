"""Argument checks against tool schemas and schema-constrained argument generation (toolgen_jax/agent/schema.py)."""

import json
import random

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolgen_jax.agent import schema as S

TOOLBENCH_STYLE = {
    "type": "object",
    "properties": {"city": {"type": "STRING", "example_value": "Paris"}, "days": {"type": "NUMBER"},
                   "when": {"type": "DATE (YYYY-MM-DD)"}, "unit": {"type": "ENUM", "enum": ["c", "f"]},
                   "metric": {"type": "BOOLEAN"}},
    "required": ["city", "days"],
    "optional": ["when", "unit", "metric"],
}


def test_normalize_maps_loose_types_and_drops_source_keys():
  n = S.normalize_schema(TOOLBENCH_STYLE)
  assert n["properties"]["city"] == {"type": "string"}
  assert n["properties"]["days"]["type"] == "number"
  assert n["properties"]["when"]["type"] == "string"
  assert n["properties"]["unit"] == {"type": "string", "enum": ["c", "f"]}
  assert n["properties"]["metric"]["type"] == "boolean"
  assert "optional" not in n and n["required"] == ["city", "days"]
  bfcl = S.normalize_schema({"type": "dict", "properties": {
      "xs": {"type": "tuple", "items": {"type": "float"}}, "m": {"type": "HashMap"}, "a": {"type": "any"},
      "n": {"type": "long"}}, "required": []})
  assert bfcl["type"] == "object"
  assert bfcl["properties"]["xs"] == {"type": "array", "items": {"type": "number"}}
  assert bfcl["properties"]["m"]["type"] == "object"
  assert "type" not in bfcl["properties"]["a"]
  assert bfcl["properties"]["n"]["type"] == "integer"
  # an enum whose values contradict the declared type widens the type instead of rejecting every value
  assert "type" not in S.normalize_schema({"properties": {"k": {"type": "string", "enum": [1, 2]}}})["properties"]["k"]


def test_validate_reports_every_problem_by_field():
  n = S.normalize_schema(TOOLBENCH_STYLE)
  _, errors = S.validate_arguments({"city": 3, "unit": "k", "extra": 1, "metric": "yes"}, n)
  text = " | ".join(errors)
  assert "missing required argument 'days'" in text
  assert "unknown argument(s) ['extra']" in text
  assert "'city': 3 is not of type 'string'" in text
  assert "'unit': 'k' is not one of ['c', 'f']" in text
  assert "'metric'" in text
  assert len(errors) == 5


def test_coercion_accepts_numeric_strings_only_when_enabled():
  n = S.normalize_schema(TOOLBENCH_STYLE)
  value, errors = S.validate_arguments({"city": "x", "days": "3", "metric": "True"}, n)
  assert errors == [] and value == {"city": "x", "days": 3, "metric": True}
  _, errors = S.validate_arguments({"city": "x", "days": "3"}, n, coerce_strings=False)
  assert errors == ["'days': '3' is not of type 'number'"]
  _, errors = S.validate_arguments({"city": "x", "days": "three"}, n)
  assert errors and "days" in errors[0]
  _, errors = S.validate_arguments({"city": "x", "days": 1, "extra": 2}, n, allow_extra=True)
  assert errors == []


@pytest.mark.parametrize("text,msg", [
    ('{"city": ', "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ("__import__('os').system('echo pwned')", "not valid JSON"),
    ('"just a string"', "must be a JSON object"),
])
def test_parse_errors_are_argument_errors(text, msg):
  with pytest.raises(S.ArgumentError, match=msg):
    S.check_arguments(text, TOOLBENCH_STYLE)


def test_empty_input_means_no_arguments():
  assert S.check_arguments("", {"type": "object", "properties": {"a": {"type": "string"}}, "required": []}) == {}
  with pytest.raises(S.ArgumentError, match="missing required argument 'city'"):
    S.check_arguments("  ", TOOLBENCH_STYLE)


class RandomFiller:
  """An adversarial filler: random choices and random (often non-numeric, quote-laden) text."""

  def __init__(self, seed):
    self.rng = random.Random(seed)

  def choose(self, prefix, options):
    assert prefix.startswith("{")
    return self.rng.randrange(len(options))

  def text(self, prefix, stop, max_chars):
    pool = ['"', "\\", "}", "{", "12", "-3.5e2", "abc", " ", "\n", "[1, 2]", "null", "true", "é"]
    return "".join(self.rng.choice(pool) for _ in range(self.rng.randrange(6)))[:max_chars]


_types = st.sampled_from(["string", "integer", "number", "boolean", "array", "object", "STRING", "NUMBER", "float"])


@st.composite
def schemas(draw):
  names = draw(st.lists(st.text("abcdefgh_", min_size=1, max_size=6), min_size=0, max_size=5, unique=True))
  props = {}
  for n in names:
    if draw(st.booleans()) and draw(st.booleans()):
      props[n] = {"type": "string", "enum": draw(st.lists(st.text(max_size=4), min_size=1, max_size=3, unique=True))}
    elif draw(st.integers(0, 5)) == 0:
      props[n] = {"type": "object", "properties": {"x": {"type": draw(_types)}}, "required": ["x"]}
    else:
      props[n] = {"type": draw(_types)}
  required = [n for n in names if draw(st.booleans())]
  return {"type": "object", "properties": props, "required": required}


@settings(max_examples=150, deadline=None)
@given(schemas(), st.integers(0, 10**6))
def test_constrained_arguments_always_valid_under_reference_validator(schema, seed):
  text = S.constrained_arguments(schema, RandomFiller(seed))
  value = json.loads(text)  # always parses
  normalized = S.normalize_schema(schema)
  # the reference validator (jsonschema itself, no coercion) accepts the generated object
  jsonschema.Draft7Validator(normalized | {"additionalProperties": False}).validate(value)
  assert set(schema["required"]) <= set(value)


def test_constrained_arguments_uses_model_text_for_values():

  class Filler:

    def choose(self, prefix, options):
      return options.index('"f"') if '"f"' in options else len(options) - 1

    def text(self, prefix, stop, max_chars):
      return 'Saint "Denis' if stop == ['"'] else "  42 days"

  out = S.constrained_arguments(TOOLBENCH_STYLE, Filler())
  assert json.loads(out) == {"city": 'Saint "Denis', "days": 42}


def test_gold_toolbench_calls_validate_against_their_functions(shared_data):
  """Every gold call in the ToolBench answer files parses and fits the schema the model was shown."""
  files = sorted((shared_data / "ToolBench/data_example/answer").glob("G*_answer/*.json"))
  assert len(files) == 15
  calls = bad = 0
  for f in files:
    gen = json.loads(f.read_text())["answer_generation"]
    functions = {fn["name"]: fn["parameters"] for fn in gen["function"]}
    for m in (gen.get("train_messages") or [[]])[-1]:  # 2 of the 15 files have no train_messages
      if m["role"] == "assistant" and m.get("function_call"):
        fc = m["function_call"]
        if fc["name"] not in functions:
          continue
        calls += 1
        try:
          S.check_arguments(fc["arguments"], functions[fc["name"]])
        except S.ArgumentError:
          bad += 1
  assert calls > 40
  assert bad == 0, (bad, calls)  # 49 calls in the snapshot, all valid (with string->number coercion)
