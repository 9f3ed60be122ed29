"""Tool documents: the one text per tool that every encoder (MiniLM, gist) and BM25 index reads.

The text comes from `config.data.doc_template` (`str.format` fields below) cut to `config.data.doc_max_chars`,
so retrieval baselines and codebook embeddings see the same words. Fields:
  {category} {tool_name} {api_name} {name} {description} {parameters} {required} {method} {tool_description}
({tool_description} is the tool-level text ToolBench's tool docs carry, in `Tool.extra`; '' for other sources).
`tool_name` drops BFCL's '#<doc hash>' key suffix (a key detail, not words); `parameters` renders as
`name (type, required): description; ...` ('none' when there are none). Segments of a ' | '-separated template
that come out empty (e.g. no category) are dropped instead of leaving '|  |'.
"""

from __future__ import annotations

import string
from typing import Any, Iterable, Mapping

from toolgen_jax.data.records import Tool, ToolCorpus

DEFAULT_TEMPLATE = "{category} | {tool_name} | {api_name}: {description} | params: {parameters}"
DEFAULT_MAX_CHARS = 1024
FIELDS = ("category", "tool_name", "api_name", "name", "description", "parameters", "required", "method",
          "tool_description")


def check_template(template: str) -> None:
  """Raises ValueError naming an unknown field (so a typo in a config fails before any encoding)."""
  for _, field, _, _ in string.Formatter().parse(template):
    if field is not None and field not in FIELDS:
      raise ValueError(f"doc_template field {{{field}}} is unknown; available: {', '.join(FIELDS)}")


def render_parameters(schema: Mapping[str, Any]) -> str:
  props = schema.get("properties") or {}
  if not props:
    return "none"
  required = set(schema.get("required") or ())
  parts = []
  for name, p in props.items():
    p = p if isinstance(p, Mapping) else {}
    tags = [t for t in (p.get("type"), "required" if name in required else None) if t]
    head = f"{name} ({', '.join(tags)})" if tags else str(name)
    desc = str(p.get("description") or "").strip()
    parts.append(f"{head}: {desc}" if desc else head)
  return "; ".join(parts)


def _display_tool_name(tool: Tool) -> str:
  if tool.tool_name.startswith(tool.api_name + "#"):
    return tool.api_name
  return tool.tool_name


def tool_document(tool: Tool, template: str = DEFAULT_TEMPLATE, max_chars: int = DEFAULT_MAX_CHARS) -> str:
  """The document text of one tool; `max_chars` <= 0 means no limit."""
  values = {
      "category": tool.category, "tool_name": _display_tool_name(tool), "api_name": tool.api_name,
      "name": tool.name, "description": " ".join(tool.description.split()),
      "parameters": render_parameters(tool.parameters),
      "required": ", ".join(tool.parameters.get("required") or ()) or "none", "method": tool.method,
      "tool_description": " ".join(str(tool.extra.get("tool_description") or "").split()),
  }
  try:
    text = template.format(**values)
  except KeyError as e:
    raise ValueError(f"doc_template field {{{e.args[0]}}} is unknown; available: {', '.join(FIELDS)}") from None
  if " | " in template:
    text = " | ".join(p.strip() for p in text.split(" | ") if p.strip())
  text = text.strip()
  return text[:max_chars] if max_chars and max_chars > 0 else text


def tool_documents(tools: ToolCorpus | Iterable[Tool], template: str = DEFAULT_TEMPLATE,
                   max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
  """Documents in tool-id order (index i = tool i)."""
  check_template(template)
  return [tool_document(t, template, max_chars) for t in tools]


def documents_from_config(tools: ToolCorpus | Iterable[Tool], data_config) -> list[str]:
  """`tool_documents` with `config.data.doc_template` and `config.data.doc_max_chars`."""
  return tool_documents(tools, data_config.doc_template, data_config.doc_max_chars)
