"""The import direction of DESIGN.md: pipeline -> stages -> hardware, Ray and Arrow in pipeline only."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "hardware": {"stages", "pipeline", "ray", "pyarrow", "pydantic", "yaml", "torchvision"},
    "stages": {"pipeline", "ray", "pyarrow", "pydantic", "yaml"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    for path in files:
        bad = imported_roots(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_ray_is_reported_to_from_one_module():
    users = [p.name for p in (ROOT / "pipeline").rglob("*.py") if "tune.report" in p.read_text()]
    assert users == ["tuning.py"]
