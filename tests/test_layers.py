"""Imports go down the layers: foundation (errors, typed, registry, identity) -> config -> rundir -> data ->
models -> methods -> inferer, modelfile -> engine (training) -> inference (after training) -> api, report, sweep ->
demo / cli. Checked on the source (ast), plus what ``import vasseg.config`` loads; no import cycle, counting
imports inside functions too (benchmarks/structure_stats.py finds them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vasseg"

# Package (or top-level module) -> the vasseg packages it must not import, at run time or under
# TYPE_CHECKING alike.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "errors": ("*",),
    "registry": ("*",),
    "typed": ("*", "!errors"),
    "identity": ("*",),
    "config": ("*", "!typed", "!registry", "!identity"),
    "outfolder": ("*", "!atomic", "!typed", "!errors"),
    "rundir": ("*", "!errors", "!config"),
    "data": ("models", "methods", "inferer", "modelfile", "engine", "inference", "report", "api", "sweep", "demo",
             "cli"),
    "models": ("data", "methods", "inferer", "modelfile", "engine", "inference", "report", "api", "sweep", "demo",
               "cli"),
    "methods": ("inferer", "modelfile", "engine", "inference", "report", "api", "sweep", "demo", "cli"),
    "inferer": ("modelfile", "engine", "inference", "report", "api", "sweep", "demo", "cli"),
    "modelfile": ("models", "methods", "inferer", "engine", "inference", "report", "api", "sweep", "demo", "cli"),
    "engine": ("inference", "report", "api", "sweep", "demo", "cli"),
    "inference": ("report", "api", "sweep", "demo", "cli"),
    "sweep": ("inference", "report", "api", "demo", "cli"),
    "report": ("demo", "cli"),
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every vasseg import in ``path`` (``from vasseg import x`` gives ``vasseg.x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vasseg":
            if node.module == "vasseg":
                out += [(node.lineno, f"vasseg.{a.name}", []) for a in node.names]
            else:
                out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "vasseg"]
    return out


def _owner(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _allowed(owner: str, target: str) -> bool:
    rules = FORBIDDEN.get(owner, ())
    if target == owner or target == "__version__":
        return True
    if f"!{target}" in rules:
        return True
    return not ("*" in rules or target in rules)


SOURCES = sorted(SRC.rglob("*.py"))


def test_no_import_climbs_a_layer() -> None:
    bad = [f"{path.relative_to(SRC)}:{line} imports {module}"
           for path in SOURCES for line, module, _ in _imports(path)
           if not _allowed(_owner(path), _layer(module))]
    assert not bad, "\n".join(bad)


def test_no_module_imports_a_private_name_of_another_package() -> None:
    bad = [f"{path.relative_to(SRC)}:{line} imports {name} from {module}"
           for path in SOURCES for line, module, names in _imports(path)
           if _layer(module) != _owner(path) for name in names if name.startswith("_")]
    assert not bad, "\n".join(bad)


def test_loading_the_config_module_imports_no_method_model_or_torch() -> None:
    code = ("import sys, vasseg.config\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('vasseg.methods.vas', "
            "'vasseg.models', 'vasseg.engine', 'vasseg.data'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("method", ["supervised", "vas"])
def test_loading_a_config_imports_only_the_method_it_names(method: str) -> None:
    code = ("import sys\nfrom vasseg.config import load_config\n"
            f"load_config(None, ['method.name={method}'])\n"
            "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('vasseg.methods.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    others = {"admt", "bcp", "dtc", "mcnet", "mean_teacher", "sassnet", "supervised", "uamt", "vas"} - {method}
    loaded = set(eval(out.stdout))  # noqa: S307 - a printed list of names
    assert method in loaded and not loaded & others


def _structure_stats():  # noqa: ANN202 - the module benchmarks/structure_stats.py
    from tests.benchscripts import load_script

    return load_script("structure_stats")


def test_no_import_cycle_even_through_imports_inside_functions() -> None:
    assert _structure_stats().stats(SRC)["cycles"] == []


def test_training_imports_nothing_that_comes_after_it() -> None:
    assert _structure_stats().stats(SRC)["climbing_arrows"] == []


def test_the_structure_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    pkg = tmp_path / "vasseg"
    for name, text in {"__init__.py": "", "engine/__init__.py": "", "inference/__init__.py": "",
                       "engine/a.py": "from vasseg.inference import b\n",
                       "inference/b.py": "def f():\n    from vasseg.engine.a import x\n"}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    stats = _structure_stats().stats(pkg)
    assert stats["cycles"] == [["vasseg.engine.a", "vasseg.inference.b"]]
    assert stats["climbing_arrows"] == ["vasseg.engine.a -> vasseg.inference.b"]
