"""Our modules' imports read from the source with `ast` (nothing is imported): an import under
`if TYPE_CHECKING:` is not an import at run time and is left out, an import inside a function
is counted."""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every dotted name `path` imports at run time with its parents: `from a.b import c`
    gives `a`, `a.b` and `a.b.c` (which may be a module or a name in `a.b`)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            nodes = node.orelse
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            return
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
            return
        else:
            nodes = list(ast.iter_child_nodes(node))
        for child in nodes:
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {
        ".".join(name.split(".")[: i + 1]) for name in names for i in range(name.count(".") + 1)
    }


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Each module of `packages` -> the modules of `packages` it imports."""
    files = {
        module_name(p, root): p
        for package in packages
        for p in sorted((root / package).rglob("*.py"))
    }
    return {module: imported_names(path) & set(files) - {module} for module, path in files.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every module of `graph` it imports, directly or through others."""
    seen, todo = {start}, [start]
    while todo:
        for name in graph[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen
