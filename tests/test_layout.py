"""The layout's rules (docs/development.md): no import circle, napari and Qt only under _napari,
no module far over 600 lines."""
import ast
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "napari_ctseg"


def _check_imports():
    spec = importlib.util.spec_from_file_location("check_imports", REPO / "scripts" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle():
    check = _check_imports()
    assert check.circles(check.graph(check.modules())) == []


def test_the_circle_finder_finds_one():
    check = _check_imports()
    assert check.circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_napari_and_qt_only_in_the_plugin_layer():
    offenders = []
    for path in PKG.rglob("*.py"):
        if "_napari" in path.relative_to(PKG).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6") for n in names):
                offenders.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert offenders == []


def test_no_module_far_over_600_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 650}
    assert long == {}
