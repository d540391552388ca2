"""Structure numbers of the vasseg sources (issue 29's closing note): size, layer climbs, cycles, long functions.

    python benchmarks/structure_stats.py [SRC]            # SRC: the package folder, default src/vasseg
    python benchmarks/structure_stats.py --json [SRC]

Counted from the source with ``ast`` (nothing is imported):

- files and lines (``*.py`` under SRC);
- import arrows between vasseg modules, module-level AND function-level (an import inside a
  function is an arrow too). ``from vasseg.a import b`` is an arrow to ``vasseg.a.b`` when that is
  a module, else to ``vasseg.a``; a package's own ``__init__`` implied by importing a submodule is
  not an arrow (Python runs it, but it is not a dependency the author wrote);
- arrows that climb: from ``engine`` (training) to what comes after training
  (``inference``, ``api``, ``report``, ``cli``, ``export``, ``demo``, ``sweep``);
- import cycles: strongly connected groups of modules (more than one module, or a module importing
  itself), counted, with their members;
- functions (and methods) longer than 60 lines, from ``def`` to their last line;
- where a path is told apart as run folder / checkpoint / model file (modules calling
  ``is_model_file``), and the modules calling the sliding-window entry (``infer_probs``): the
  files an inference or model-file extension has to touch.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

CLIMB_FROM = "engine"
CLIMB_TO = ("inference", "api", "report", "cli", "export", "demo", "sweep")
LONG = 60
DECIDERS = ("is_model_file",)
WINDOW_ENTRY = ("infer_probs",)


def module_name(path: Path, src: Path) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules(src: Path) -> dict[str, ast.Module]:
    return {module_name(p, src): ast.parse(p.read_text(), str(p)) for p in sorted(src.rglob("*.py"))}


def _resolve(target: str, modules: dict[str, ast.Module]) -> str | None:
    """The nearest module (or package) of ``target`` that exists in the sources."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def _from_base(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    drop = node.level - (1 if is_package else 0)
    base = base[: len(base) - drop] if drop else base
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, tree: ast.Module, modules: dict[str, ast.Module], root: str) -> set[str]:
    """Every vasseg module ``name`` imports, wherever in the file the import statement is."""
    is_package = name == root or any(m.startswith(name + ".") for m in modules)
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, name, is_package)
            targets = [f"{base}.{a.name}" for a in node.names] or [base]
        for target in targets:
            if target.split(".")[0] != root:
                continue
            found = _resolve(target, modules)
            if found and found != name and not name.startswith(found + "."):
                out.add(found)  # a parent package's __init__ is not an arrow (module docstring)
    return out


def graph(modules: dict[str, ast.Module], root: str) -> dict[str, set[str]]:
    return {name: imports_of(name, tree, modules, root) for name, tree in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), plus modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges.get(v, ()):
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(groups)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def climbing(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if layer(a) == CLIMB_FROM and layer(b) in CLIMB_TO)


def long_functions(modules: dict[str, ast.Module]) -> list[str]:
    out = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONG:
                    out.append(f"{name}.{node.name} ({length} lines)")
    return sorted(out)


def callers(modules: dict[str, ast.Module], functions: tuple[str, ...]) -> list[str]:
    """Modules that call one of ``functions`` (by name or attribute)."""
    out = set()
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if called in functions:
                    out.add(name)
    return sorted(out)


def stats(src: Path) -> dict[str, object]:
    src = src.resolve()
    root = src.name
    modules = read_modules(src)
    edges = graph(modules, root)
    files = sorted(src.rglob("*.py"))
    groups = cycles(edges)
    return {
        "files": len(files),
        "lines": sum(len(p.read_text().splitlines()) for p in files),
        "import_arrows": sum(len(t) for t in edges.values()),
        "climbing_arrows": climbing(edges),
        "cycles": groups,
        "modules_in_cycles": sum(len(g) for g in groups),
        "functions_over_60_lines": long_functions(modules),
        "path_kind_deciders": callers(modules, DECIDERS),
        "window_entry_callers": callers(modules, WINDOW_ENTRY),
    }


def render(s: dict[str, object]) -> str:
    lines = [f"files: {s['files']}", f"lines: {s['lines']}", f"import arrows: {s['import_arrows']}"]
    for key in ("climbing_arrows", "cycles", "functions_over_60_lines", "path_kind_deciders",
                "window_entry_callers"):
        items = s[key]
        lines.append(f"{key.replace('_', ' ')}: {len(items)}")  # type: ignore[arg-type]
        lines += [f"  {' <-> '.join(i) if isinstance(i, list) else i}" for i in items]  # type: ignore[union-attr]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", default=str(Path(__file__).resolve().parents[1] / "src" / "vasseg"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    s = stats(Path(args.src))
    print(json.dumps(s, indent=1) if args.json else render(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
