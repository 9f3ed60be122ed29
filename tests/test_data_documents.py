"""Tool documents: template fields, empty segments, BFCL hash suffix, truncation, unknown fields."""

import pytest

from toolgen_jax.config import base_config
from toolgen_jax.data import Tool, ToolCorpus, documents_from_config, tool_document, tool_documents

PARAMS = {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                           "days": {"type": "integer"}}, "required": ["city"]}


def test_default_template():
  t = Tool(id=0, tool_name="Weather", api_name="forecast", category="Weather", description="Daily\n forecast.",
           parameters=PARAMS)
  assert tool_document(t) == ("Weather | Weather | forecast: Daily forecast. | "
                              "params: city (string, required): City name; days (integer)")


def test_empty_segments_and_bfcl_names():
  t = Tool(id=0, tool_name="get_weather#3f2a1c", api_name="get_weather", description="d")
  assert tool_document(t) == "get_weather | get_weather: d | params: none"
  assert tool_document(t, "{name}") == "get_weather#3f2a1c"


def test_truncation_and_config():
  t = Tool(id=0, tool_name="T", api_name="a", description="x" * 5000)
  assert len(tool_document(t, max_chars=100)) == 100
  assert len(tool_document(t, max_chars=0)) > 5000
  cfg = base_config()
  cfg.data.doc_template = "{tool_name}/{api_name} [{method}] {required}"
  cfg.data.doc_max_chars = 8
  corpus = ToolCorpus([Tool(id=0, tool_name="T", api_name="a", method="GET", parameters=PARAMS)])
  assert documents_from_config(corpus, cfg.data) == ["T/a [GET"]
  with pytest.raises(ValueError, match="unknown"):
    tool_documents(corpus, "{tool} {api_name}")


def test_tool_description_field():
  t = Tool(id=0, tool_name="T", api_name="a", extra={"tool_description": "Liste  des\ntransitaires"})
  assert tool_document(t, "{tool_name}: {tool_description}") == "T: Liste des transitaires"
  assert tool_document(Tool(id=0, tool_name="T", api_name="a"), "{tool_name}: {tool_description}") == "T:"
