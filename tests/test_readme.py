"""Every README code block runs on its own, in a fresh namespace: the README cannot rot."""

from __future__ import annotations

import pathlib
import re
import sys
import types

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def run_block(index: int, block: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Executes one block in a namespace of its own (a fresh module: dataclasses look it up)."""
    module = types.ModuleType(f"readme_block_{index}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, f"README.md[python block {index}]", "exec"), module.__dict__)
    return module.__dict__


def test_readme_has_quickstart_blocks():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3
    assert any("to_linen" in block for block in blocks)


def test_readme_blocks_run_each_on_its_own(monkeypatch):
    blocks = python_blocks(README.read_text())
    namespaces = [run_block(i, block, monkeypatch) for i, block in enumerate(blocks)]
    assert namespaces[0]["module"].count.value == 2
    bridge = next(ns for ns in namespaces if "train_step" in ns and "TrainState" in ns)
    assert float(bridge["loss"]) > 0.0


def test_blocks_share_no_names(monkeypatch):
    run_block(0, "shared = 1", monkeypatch)
    with pytest.raises(NameError, match="'shared' is not defined"):
        run_block(1, "shared + 1", monkeypatch)


def test_readme_setup_commands_match_ci():
    """The README's test command installs and runs what CI (`.ci/run`) installs and runs."""
    text = README.read_text()
    ci = re.sub(r'"\$venv/bin/(\w+)"', r"\1", (README.parent / ".ci" / "run").read_text())
    test_command = next(
        line for line in text.splitlines() if line.startswith("python3 -m venv") and "[test]" in line
    )
    for step in ('pip install -q -e ".[test]"', "python -m pytest -q"):
        assert step in test_command and step in ci.splitlines(), step
