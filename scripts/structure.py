"""Checks the package's shape beyond the layers contract (pyproject.toml, run by lint-imports):
no import cycle among batch's modules (imports inside functions included, `if TYPE_CHECKING:`
blocks left out), none among scripts/ either, at most MAX_LOOSE modules directly in batch/, no
function in batch/ outside batch/testing longer than MAX_LINES, every module and folder of
batch/ named in docs/architecture.md's Layout section, and README.md at most MAX_README lines.
Prints each problem; exit 1 if any.

    python scripts/structure.py
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "batch"
SCRIPTS = ROOT / "scripts"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_LINES = 80
MAX_LOOSE = 4  # modules directly in batch/, besides __init__.py and __main__.py
MAX_README = 300
EXEMPT = ("batch.testing",)  # test doubles: long fakes of a long API are easier to read whole


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(folder: Path = PACKAGE, root: Path = ROOT) -> dict[str, ast.Module]:
    return {
        module_name(p, root): ast.parse(p.read_text(encoding="utf-8"), str(p))
        for p in sorted(folder.rglob("*.py"))
    }


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, skipping the bodies of `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for branch in node.orelse for n in [branch, *_runtime_nodes(branch)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(name: str, tree: ast.Module, known: set[str], *, every: bool = False) -> set[str]:
    """The known modules `name` imports; `every`: those under `if TYPE_CHECKING:` too."""
    found: set[str] = set()
    is_package = name in {m.rsplit(".", 1)[0] for m in known if "." in m}
    for node in ast.walk(tree) if every else _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name if is_package else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rsplit(".", 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle once, found by depth-first search."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def long_functions(name: str, tree: ast.Module) -> Iterator[str]:
    if name.startswith(EXEMPT):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > MAX_LINES:
                yield f"{name}.{node.name} (line {node.lineno}) is {length} lines long"


def unlisted_in_layout() -> Iterator[str]:
    """Modules and folders of batch/ that the architecture page's Layout block does not name."""
    page = ARCHITECTURE.read_text(encoding="utf-8")
    start = page.index("## Layout")
    opening = page.index("```", start)
    block = page[opening : page.index("```", opening + 3)]
    named = set(re.findall(r"[\w.]+(?:\.py|/)", block))
    for path in sorted(PACKAGE.rglob("*")):
        if path.name.startswith(".") or "__pycache__" in path.parts:
            continue
        shown = f"{path.name}/" if path.is_dir() else path.name
        if (path.is_dir() or path.suffix == ".py") and shown not in named:
            where = path.relative_to(ROOT)
            yield f"{where} is not in the Layout section of {ARCHITECTURE.relative_to(ROOT)}"


def too_many_loose() -> Iterator[str]:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    if len(loose) > MAX_LOOSE:
        yield f"{len(loose)} modules loose in batch/ (at most {MAX_LOOSE}): {', '.join(loose)}"


def long_readme() -> Iterator[str]:
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    if lines > MAX_README:
        yield f"README.md is {lines} lines (at most {MAX_README}): move detail to docs/"


def script_cycles() -> Iterator[str]:
    trees = modules(SCRIPTS, SCRIPTS)
    known = set(trees)
    graph = {name: imports(name, tree, known, every=True) for name, tree in trees.items()}
    for cycle in cycles(graph):
        yield f"import cycle in scripts/: {' -> '.join(cycle)}"


def main() -> int:
    trees = modules()
    known = set(trees)
    graph = {name: imports(name, tree, known) for name, tree in trees.items()}
    problems = [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    for name, tree in trees.items():
        problems.extend(f"over {MAX_LINES} lines: {p}" for p in long_functions(name, tree))
    problems.extend(unlisted_in_layout())
    problems.extend(too_many_loose())
    problems.extend(long_readme())
    problems.extend(script_cycles())
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
