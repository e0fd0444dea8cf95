"""The package layout is layered and imports point one way: down.

cli / dashboards -> report / studies / circuits / probes -> analyzers / interventions / tasks / demo -> core / io.

Every ``import`` and ``from ... import`` (module level or inside a function) of every module is parsed with
:mod:`ast`, and so is every lazy registry entry (``register(name, lazy="module:attr")``, see
:mod:`workbench.core.registry`); one that reaches into a higher layer fails, naming the file, the line and the
two layers. A module outside the layer packages (a new flat ``workbench/x.py``) fails too: put it in the
package of its layer.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package prefix -> layer (higher may import lower or equal, never higher)
LAYERS = {
    "workbench.core": 0,
    "workbench.io": 0,
    "workbench.analyzers": 1,
    "workbench.interventions": 1,
    "workbench.tasks": 1,
    "workbench.demo": 1,
    "workbench.report": 2,
    "workbench.studies": 2,
    "circuits": 2,
    "probes": 2,
    "workbench.cli": 3,
    "dashboards": 3,
    "workbench": 3,  # the package root re-exports the public API (README) for front ends and users
}
NAMES = {0: "core/io", 1: "analyzers/interventions/tasks/demo", 2: "report/studies/circuits/probes",
         3: "cli/dashboards"}
TOP = ("workbench", "circuits", "probes", "dashboards")


def layer_of(module: str) -> int | None:
    """Layer of a dotted module name (longest matching prefix), None outside the project."""
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative imports resolved; for ``from P import x``
    both ``P`` and ``P.x`` are tried (x may be a submodule), the deeper one that exists in the tree is used."""
    mod = module_name(path, root)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                is_module = (root / (sub.replace(".", "/") + ".py")).exists() or \
                    (root / sub.replace(".", "/") / "__init__.py").exists()
                out.append((node.lineno, sub if is_module else target))
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "lazy":
                    out.append((node.lineno, lazy_target(kw.value)))
    return out


def lazy_target(value: ast.expr) -> str:
    """The module a ``lazy=`` registry target names: a string ``"pkg.mod:attr"`` or an f-string whose constant
    prefix names the package (``f"workbench.cli.commands.{name}"``)."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value.partition(":")[0]
    if isinstance(value, ast.JoinedStr):
        prefix = ""
        for part in value.values:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                break
            prefix += part.value
        return prefix.partition(":")[0].rstrip(".")
    raise AssertionError(f"a lazy registry target must be a string literal, got {ast.dump(value)}")


def project_files() -> list[Path]:
    return sorted(p for top in TOP for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_belongs_to_a_layer():
    loose = [str(p.relative_to(ROOT)) for p in project_files()
             if p.parent == ROOT / "workbench" and p.name not in ("__init__.py",)]
    assert not loose, f"modules outside the layer packages: {loose}: move each into workbench/<layer>/"
    assert all(layer_of(module_name(p)) is not None for p in project_files())


def test_imports_point_down_the_layers():
    bad = []
    for path in project_files():
        src = layer_of(module_name(path))
        for line, target in imports(path):
            dst = layer_of(target)
            if dst is not None and src is not None and dst > src:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({NAMES[src]}) imports {target} ({NAMES[dst]})")
    assert not bad, "imports from a lower layer into a higher one:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, target, ok", [
    ("workbench.core.tracer", "workbench.core.stats", True),
    ("workbench.analyzers.sinks", "workbench.core.tracer", True),
    ("workbench.core.models", "workbench.demo.digits_vlm", False),
    ("workbench.analyzers.head_types", "workbench.report.census", False),
    ("workbench.report.census", "workbench.cli", False),
    ("workbench.core.errors", "workbench", False),
    ("dashboards.app", "workbench", True),
    ("workbench", "workbench.demo.digits_vlm", True),
])
def test_layer_order_itself(source, target, ok):
    """The rule the scan applies, on known pairs: a planted upward import is caught."""
    assert (layer_of(target) <= layer_of(source)) is ok


def test_scan_sees_function_level_imports_and_lazy_targets(tmp_path):
    """A planted upward import inside a function, and a planted upward lazy target, are both found."""
    src = tmp_path / "workbench" / "core" / "planted.py"
    src.parent.mkdir(parents=True)
    src.write_text("def f():\n    from ..report import viz\n\n\nR.register('x', lazy=f'workbench.cli.commands.{n}')\n")
    assert [(line, layer_of(m)) for line, m in imports(src, tmp_path)] == [(2, 2), (5, 3)]
