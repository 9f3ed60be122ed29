"""The package's import structure: no cycles, and imports only go down the layers written in CONTRIBUTING.md.

Every `import` of the package counts, also one inside a function (a lazy import still couples the two modules).
"""

import ast
import pathlib

import pytest

import toolgen_jax

ROOT = pathlib.Path(toolgen_jax.__file__).parent

# Bottom to top (CONTRIBUTING.md, "Layers"). A module may import from its own layer or below, never above.
LAYERS = {
    "toolgen_jax": 0, "toolgen_jax.assets": 0, "toolgen_jax.config": 0,
    "toolgen_jax.data": 1,
    "toolgen_jax.models": 2, "toolgen_jax.codebook": 2,
    "toolgen_jax.prompts": 3, "toolgen_jax.decoding": 3, "toolgen_jax.code_vocab": 3,
    "toolgen_jax.training": 4,
    "toolgen_jax.evaluation": 5,
    "toolgen_jax.pipeline": 6, "toolgen_jax.artifact": 6,
    "toolgen_jax.agent": 7, "toolgen_jax.serve": 7, "toolgen_jax.chat": 7, "toolgen_jax.evaluate": 7,
    "toolgen_jax.main": 7,
}
CLIS = {"toolgen_jax.data.inspect": 7}  # a command-line entry point living beside what it inspects


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = ("toolgen_jax",) + path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
  """The package module an imported dotted name lives in (longest existing prefix)."""
  parts = name.split(".")
  for n in range(len(parts), 0, -1):
    cand = ".".join(parts[:n])
    if cand in MODULES:
      return cand
  return None


def imports_of(module: str) -> set[str]:
  path = MODULES[module]
  tree = ast.parse(path.read_text(), filename=str(path))
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      # `from pkg import sub` imports the submodule; `from mod import name` the module holding the name
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    for n in names:
      if n.startswith("toolgen_jax"):
        target = _resolve(n)
        if target and target != module:
          out.add(target)
  return out


def layer_of(module: str) -> int:
  if module in CLIS:
    return CLIS[module]
  parts = module.split(".")
  for n in range(len(parts), 0, -1):
    key = ".".join(parts[:n])
    if key in LAYERS:
      return LAYERS[key]
  raise KeyError(module)


GRAPH = {m: imports_of(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_layer(module):
  assert module == "toolgen_jax" or layer_of(module) >= 0


def test_imports_only_go_down():
  bad = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
         for m, targets in GRAPH.items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
  assert not bad, "\n".join(bad)


def test_no_import_cycles():
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for t in sorted(GRAPH[m]):
      if state.get(t) == "open":
        cycles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = "done"

  for m in sorted(GRAPH):
    if m not in state:
      visit(m)
  assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
  """The walker itself: an import inside a function and `from . import x` are both found."""
  src = "def f():\n  from toolgen_jax import pipeline\nfrom . import records\n"
  fake = ROOT / "data" / "records.py"
  monkeypatch.setitem(MODULES, "toolgen_jax.data.fake", tmp_path / "fake.py")
  (tmp_path / "fake.py").write_text(src)
  assert imports_of("toolgen_jax.data.fake") == {"toolgen_jax.pipeline", "toolgen_jax.data.records"}
  assert fake.exists()


def test_pipeline_is_small_and_imported_only_by_main():
  assert len(MODULES["toolgen_jax.pipeline"].read_text().splitlines()) < 400
  users = sorted(m for m, targets in GRAPH.items() if "toolgen_jax.pipeline" in targets)
  assert users == ["toolgen_jax.main"], users
