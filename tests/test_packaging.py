"""Packaging and test-configuration facts that pyproject.toml promises."""

from __future__ import annotations

import pathlib
import re
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def _requirements(list_name: str) -> list[str]:
    """The quoted requirements of a ``name = [...]`` list in pyproject.toml (3.10 has no tomllib)."""
    found = re.search(rf"^{list_name} = \[(.*?)^\]", PYPROJECT, flags=re.M | re.S)
    assert found, f"pyproject.toml has no list {list_name!r}"
    return re.findall(r'"([^"]+)"', found.group(1))


def test_a_deprecation_raised_from_nnx_bridge_fails_the_run():
    with pytest.raises(DeprecationWarning, match="old spelling"):
        warnings.warn_explicit("old spelling", DeprecationWarning, "module.py", 1, module="nnx_bridge.module")


def test_chex_is_a_test_dependency_only():
    dependencies, test = _requirements("dependencies"), _requirements("test")
    assert "jax>=0.7,<0.11" in dependencies and "pytest>=8" in test  # the lists were found
    assert not [d for d in dependencies if d.startswith("chex")], dependencies
    assert [d for d in test if d.startswith("chex")], test
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "nnx_bridge").rglob("*.py"))
        if "import chex" in path.read_text() or "from chex" in path.read_text()
    ]
    assert importers == [], f"the package imports chex, a test-only dependency: {importers}"
