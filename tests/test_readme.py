"""The README's code blocks run, in order, in one namespace: the quickstart cannot rot."""

from __future__ import annotations

import pathlib
import re
import sys
import types

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_quickstart_blocks():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3
    assert any("to_linen" in block for block in blocks)


def test_readme_blocks_run(monkeypatch):
    module = types.ModuleType("readme_quickstart")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for index, block in enumerate(python_blocks(README.read_text())):
        exec(compile(block, f"README.md[python block {index}]", "exec"), namespace)
    assert namespace["module"].count.value == 2
    assert float(namespace["loss"]) > 0.0


def test_readme_setup_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = next(
        line for line in text.splitlines() if line.startswith("python3 -m venv") and "[test]" in line
    )
    assert test_command in ci.splitlines()
