"""The package's layer order, checked on the source with `ast` (docs/architecture.md, "Layers").

    extras, jsonio, safe_pickle, errors, outputs -> geometry -> data -> models -> checkpoint, testing
        -> {evaluation, diagnostics} -> training -> inference -> verbs -> amt.cli, amt (API)

An import may only point to a lower layer or stay inside its own package (`RANKS`).
`check_layers(root)` reports, one line per offence:
- an import of a higher layer, or of a sibling (evaluation <-> diagnostics, one verb module
  from another);
- another package's private name: `from amt.X.y import _name`, `amt.X.y._name`, or `obj._name`
  where `_name` is defined only in another package (e.g. a private method called on an object
  of that package's class);
- a function-level import without a reason: only an optional dependency or start-up time may
  keep an import inside a function, and a comment on the same line, or on the line above the
  first of a run of imports (blank lines allowed between them), must say which. Lint markers
  (`noqa`, `type:`, `fmt:`, `pragma`) are not reasons.
`TYPE_CHECKING` imports count: a type-only dependency is still a dependency.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "amt"

# Rank of each top-level package or module of amt; an import must point to a lower rank or stay in
# its own group. Equal ranks in different groups are siblings and may not import each other.
RANKS: dict[str, float] = {
    # helpers that import nothing from amt, usable from every layer
    "extras": -1,  # optional-dependency checks: data (moderngl) needs them as much as inference (onnx)
    "jsonio": -1,  # report JSON, shared by the sibling evaluation and diagnostics reports
    "safe_pickle": -1,  # restricted unpickling for users' files (MANO in geometry, HO-3D in data)
    "errors": -1,  # ConfigError: models and training refuse settings alike, the verbs print them
    "outputs": -1,  # the verbs' rule for writing into a user's folder or over a file
    "argtypes": -1,  # range-checked argparse types for every verb's numeric flags
    "locks": -1,  # one writer per run folder (the trainer; any verb may take it)
    "config": 0,  # Hydra yaml files only; its __init__ imports nothing
    "geometry": 0,
    "data": 1,
    "models": 2,
    # top-level helpers that sit on the models layer (they build or fake what models consume)
    "checkpoint": 2.5,
    "testing": 2.5,
    "evaluation": 3,
    "diagnostics": 3,
    "training": 4,
    "inference": 5,
    "cli": 6,  # every verb module: */cli.py, *_cli.py, demo.py
    "dispatch": 7,  # amt/cli.py: the `amt` command, imports verbs by name at run time
    "api": 7,  # amt/__init__.py: the public API re-exports every layer
    "main": 8,  # amt/__main__.py
}
LINT_MARKERS = ("noqa", "type:", "fmt:", "pragma", "ruff:", "pylint:", "isort:")


@dataclass(frozen=True)
class Unit:
    """Where a module sits: its layer rank, its import group and its package for private names."""

    rank: float
    group: str
    package: str


def module_name(root: Path, path: Path) -> str:
    """src/amt/data/cache.py -> amt.data.cache; src/amt/data/__init__.py -> amt.data."""
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> Unit | None:
    """Layer of a module of amt (None outside amt or an unknown top-level name)."""
    parts = module.split(".")
    if parts[0] != "amt":
        return None
    if len(parts) == 1:
        return Unit(RANKS["api"], "api", "api")
    top, leaf = parts[1], parts[-1]
    if top == "cli" and len(parts) == 2:
        return Unit(RANKS["dispatch"], "dispatch", "cli")
    if top == "__main__":
        return Unit(RANKS["main"], "main", "main")
    if leaf == "cli" or leaf.endswith("_cli") or top == "demo":
        # each verb module is its own group: one verb may not reach into another
        return Unit(RANKS["cli"], module, top)
    if top not in RANKS:
        return None
    return Unit(RANKS[top], top, top)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of `from X import ...` (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _comments(source: str) -> dict[int, str]:
    """line number -> comment text (without '#') of every comment in the file."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _is_reason(comment: str | None) -> bool:
    return bool(comment) and not comment.lower().startswith(LINT_MARKERS)


def _defined_private_names(tree: ast.AST) -> set[str]:
    """Single-underscore names a module defines: functions, classes, assignments, self._x = ..."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _is_private(n)}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _function_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements inside a function or method body, at any depth."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                found.append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


def check_layers(root: Path) -> list[str]:
    """Every layering offence under `root` (the `amt` package folder), as 'path:line: message'."""
    root = Path(root)
    parsed = {}
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        parsed[path] = (module_name(root, path), source, ast.parse(source, filename=str(path)))
    modules = {module for module, _, _ in parsed.values()}
    private_by_package: dict[str, set[str]] = {}
    for module, _, tree in parsed.values():
        unit = unit_of(module)
        if unit is not None:
            private_by_package.setdefault(unit.package, set()).update(_defined_private_names(tree))
    problems = []
    for path, (module, source, tree) in parsed.items():
        is_package = path.name == "__init__.py"
        found = _check_module(module, is_package, source, tree, modules, private_by_package)
        problems += [f"{path.relative_to(root.parent)}:{line}: {message}" for line, message in found]
    return problems


def _check_module(
    module: str,
    is_package: bool,
    source: str,
    tree: ast.AST,
    modules: set[str],
    private_by_package: dict[str, set[str]],
) -> list[tuple[int, str]]:
    """(line, message) for every offence in one module (see the module docstring)."""
    here = unit_of(module)
    if here is None:
        return [(1, f"{module} is not in a known layer (add it to RANKS)")]
    found = []
    aliases = _module_aliases(module, is_package, tree, modules)

    def check_target(node: ast.AST, target: str) -> None:
        there = unit_of(target)
        if there is None or there.group == here.group:
            return
        if there.rank > here.rank:
            found.append(
                (node.lineno, f"{module} (layer {here.group}) imports {target} of the higher layer {there.group}")
            )
        elif there.rank == here.rank:
            found.append(
                (node.lineno, f"{module} imports its sibling {target} ({here.group} and {there.group} share a layer)")
            )

    def other_package(target: str) -> bool:
        there = unit_of(target)
        return there is not None and there.package != here.package

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_target(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            names = [a.name for a in node.names]
            if target == "amt":
                # `from amt import x`: a subpackage or module, or a public-API name; dunders such
                # as __version__ are package metadata, not a layer
                for name in names:
                    if f"amt.{name}" in modules:
                        check_target(node, f"amt.{name}")
                    elif not name.startswith("__"):
                        check_target(node, "amt")
            else:
                check_target(node, target)
            if other_package(target):
                found += [
                    (node.lineno, f"{module} imports the private name {n} of {target}") for n in names if _is_private(n)
                ]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain = _dotted(node.value)
            if chain is not None:
                head, dot, rest = chain.partition(".")
                chain = aliases.get(head, head) + dot + rest
            if chain is not None and chain.startswith("amt.") and other_package(chain):
                found.append((node.lineno, f"{module} uses the private name {chain}.{node.attr}"))
            elif node.attr not in private_by_package.get(here.package, set()):
                owners = sorted(p for p, names in private_by_package.items() if node.attr in names)
                if owners:
                    found.append((node.lineno, f"{module} uses {node.attr}, private to {', '.join(owners)}"))

    # a comment on the import's line, or above the first import of a run of imports (blank lines
    # between them allowed, as isort separates stdlib, third-party and amt groups)
    comments = _comments(source)
    lines = source.splitlines()
    local = _function_imports(tree)
    by_end = {node.end_lineno: node for node in local}

    def previous_code_line(line: int) -> int:
        line -= 1
        while line > 0 and not lines[line - 1].strip():
            line -= 1
        return line

    for node in local:
        first = node
        while previous_code_line(first.lineno) in by_end:
            first = by_end[previous_code_line(first.lineno)]
        if not any(_is_reason(comments.get(line)) for line in (node.lineno, first.lineno - 1)):
            text = (ast.get_source_segment(source, node) or "").splitlines()[0]
            found.append((node.lineno, f"function-level import without a reason comment: {text}"))
    return found


def _module_aliases(module: str, is_package: bool, tree: ast.AST, modules: set[str]) -> dict[str, str]:
    """Local names bound to amt modules: `import amt.x.y as m`, `from amt.x import y [as m]`."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            for a in node.names:
                if f"{target}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{target}.{a.name}"
    return aliases


def _dotted(node: ast.AST) -> str | None:
    """a.b.c for a chain of names, None for anything else (calls, subscripts)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def test_the_package_follows_the_layer_order() -> None:
    problems = check_layers(SRC)
    assert not problems, "layering offences:\n" + "\n".join(problems)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "amt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "amt"


def test_the_checker_reports_planted_offences(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "geometry/__init__.py": "",
            "geometry/camera.py": "import amt.models.amt\n",  # upward, by `import`
            "data/__init__.py": "",
            "data/cache.py": "from amt.training.trainer import Trainer\n",  # upward, by `from`
            "models/__init__.py": "",
            "models/amt.py": "class Net:\n    def _probs(self):\n        return 1\n",
            "evaluation/__init__.py": "",
            "evaluation/report.py": "def _jsonable(x):\n    return x\n",
            "diagnostics/__init__.py": "",
            "diagnostics/report.py": """\
                from amt.evaluation.report import _jsonable
                import amt.evaluation.report
                from amt.evaluation import report as evaluation_report


                def _jsonable(x):  # a same-named helper here: only the module alias reveals the one used
                    return x


                def f(net):
                    amt.evaluation.report._jsonable(1)
                    evaluation_report._jsonable(2)
                    return net._probs()


                def g():
                    from amt.models.amt import Net
                    return Net
                """,
            "training/__init__.py": "",
            "training/trainer.py": "class Trainer:\n    pass\n",
            "inference/__init__.py": "",
            "inference/cli.py": "from amt.evaluation.cli import main\n",  # verb -> verb
            "evaluation/cli.py": "def main(argv):\n    return 0\n",
        },
    )
    problems = "\n".join(check_layers(pkg))
    assert "amt.geometry.camera (layer geometry) imports amt.models.amt of the higher layer models" in problems
    assert "amt.data.cache (layer data) imports amt.training.trainer of the higher layer training" in problems
    assert "amt.diagnostics.report imports its sibling amt.evaluation.report" in problems
    assert "amt.diagnostics.report imports the private name _jsonable of amt.evaluation.report" in problems
    assert problems.count("uses the private name amt.evaluation.report._jsonable") == 2  # by path and by alias
    assert "uses _probs, private to models" in problems
    assert "function-level import without a reason comment: from amt.models.amt import Net" in problems
    assert "amt.inference.cli imports its sibling amt.evaluation.cli" in problems
    assert len(problems.splitlines()) == 11, problems


def test_the_checker_accepts_downward_imports_and_reasoned_local_imports(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "from amt.training.trainer import train\n",
            "geometry/__init__.py": "",
            "geometry/camera.py": "def _project(x):\n    return x\n\n\ndef f():\n    return _project(1)\n",
            "models/__init__.py": "",
            "models/amt.py": """\
                from amt.geometry.camera import f
                from . import config


                def onnx_session():
                    import onnxruntime  # optional dependency (extra "export")
                    return onnxruntime


                def lazy():
                    # start-up time: the trainer pulls in the optimiser stack
                    import torch

                    from amt.geometry import camera
                    return torch, camera
                """,
            "models/config.py": "",
            "training/__init__.py": "",
            "training/trainer.py": "from amt.models.amt import f\n\n\ndef train():\n    return f()\n",
        },
    )
    assert check_layers(pkg) == []
