"""The house rules that keep the code findable, checked on the source itself.

- No module in ``src/`` is over ``MAX_MODULE_LINES`` lines (generated migrations aside).
- No function is over ``MAX_FUNCTION_LINES`` lines unless a ``# Long:`` comment saying why stands
  directly above it (above its decorators, if any).
- Every package that ``src/`` or ``flows/`` imports is declared in ``pyproject.toml``'s
  dependencies (a package that only arrives with another one can vanish in its next release).
- The public surface of ``consentflow`` is exactly the one listed here: changing it is a decision,
  made by editing this list.

The layers contract (import-linter) and the type checker run in ``.ci/run`` beside the tests.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import consentflow

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "consentflow"
FLOWS = ROOT / "flows"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
GENERATED = (SRC / "migrations" / "versions",)


def _sources(*roots: Path) -> list[Path]:
    return sorted(
        p
        for root in roots
        for p in root.rglob("*.py")
        if not any(p.is_relative_to(g) for g in GENERATED)
    )


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_module_is_over_the_limit() -> None:
    too_long = {
        _rel(p): n
        for p in _sources(SRC)
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: split them: {too_long}"


def _long_functions(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length <= MAX_FUNCTION_LINES:
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        above = lines[first - 2].strip() if first >= 2 else ""
        if not above.startswith("# Long:"):
            found.append(f"{_rel(path)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_over_the_limit_without_a_reason() -> None:
    found = [f for p in _sources(SRC, FLOWS) for f in _long_functions(p)]
    assert not found, (
        f"functions over {MAX_FUNCTION_LINES} lines: split them, or write why directly above "
        f"the def in a '# Long: ...' comment: {found}"
    )


def _guards_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    return any(
        (isinstance(h.type, ast.Name) and h.type.id in names)
        or (
            isinstance(h.type, ast.Tuple)
            and any(isinstance(e, ast.Name) and e.id in names for e in h.type.elts)
        )
        for h in node.handlers
    )


def _imports(paths: list[Path]) -> list[tuple[str, str, bool]]:
    """(top-level module, where, optional) for every absolute import in ``paths``; optional:
    inside a ``try`` that handles ``ImportError`` (the code works without it)."""
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        optional = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.Try) and _guards_import_error(node)
            for stmt in node.body
            for inner in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                where = f"{_rel(path)}:{node.lineno}"
                found.append((mod.partition(".")[0], where, id(node) in optional))
    return found


def _declared() -> tuple[set[str], set[str]]:
    """The distributions ``pyproject.toml`` declares: required, and in any extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(reqs: list[str]) -> set[str]:
        return {canonicalize_name(Requirement(r).name) for r in reqs}

    extras = set().union(*(names(r) for r in project["optional-dependencies"].values()))
    return names(project["dependencies"]), extras


def test_every_imported_package_is_declared() -> None:
    ours = {"consentflow", "flows"}
    distributions = packages_distributions()
    required, extras = _declared()
    missing = {}
    for name, where, optional in _imports(_sources(SRC, FLOWS)):
        if name in ours or name in sys.stdlib_module_names or name == "__future__":
            continue
        dists = {canonicalize_name(d) for d in distributions.get(name, [])}
        allowed = required | extras if optional else required
        if not dists:
            missing[name] = f"{where} (no installed distribution provides it)"
        elif not dists & allowed:
            missing[name] = f"{where} (from {', '.join(sorted(dists))})"
    assert not missing, f"imported but not declared in pyproject.toml dependencies: {missing}"


PUBLIC = [
    "Action",
    "Actor",
    "ActorType",
    "Change",
    "Channel",
    "Conflict",
    "ConsentView",
    "ConsentflowError",
    "Decision",
    "InvalidInput",
    "NotFound",
    "Reason",
    "State",
    "TransitionNotAllowed",
    "as_of",
    "check",
    "current",
    "expire",
    "expire_due",
    "grant",
    "history",
    "invalidate",
    "invalidate_stale",
    "refuse",
    "renew",
    "request",
    "revoke",
]


def test_the_public_surface_is_what_it_says() -> None:
    assert sorted(consentflow.__all__) == PUBLIC
    missing = [name for name in PUBLIC if not hasattr(consentflow, name)]
    assert not missing, f"listed in __all__ but not importable: {missing}"


@pytest.mark.parametrize("module", ["consentflow.lifecycle", "consentflow.sweeps"])
def test_documented_import_paths_still_work(module: str) -> None:
    __import__(module)
    from consentflow.web.app import create_app

    assert callable(create_app)


def test_every_package_is_installed() -> None:
    """A non-editable install ships only the packages ``pyproject.toml`` lists."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(SRC.parent).parts)
        for p in SRC.rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found <= listed, f"packages missing from [tool.setuptools] packages: {found - listed}"
