"""The READMEs quote the published benchmark figures (``benchmarks/results/*.json``), and only them."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from benchmarks import figures

ROOT = pathlib.Path(__file__).resolve().parents[1]
READMES = {"README.md": ROOT / "README.md", "benchmarks/README.md": ROOT / "benchmarks" / "README.md"}
# A measured number as the tables print it (a bound such as "<= 1.1x" is not one).
FIGURE = re.compile(r"(?<![<>]= )(\d\.\d+x|\d\.\d+ ?(ms|µs|s\b)|\d\.\d%)")


@pytest.fixture(scope="module", params=list(READMES))
def readme(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param, READMES[request.param].read_text()


def test_every_results_file_records_its_conditions():
    for name in figures.NAMES:
        doc = json.loads((figures.RESULTS / f"{name}.json").read_text())
        assert doc["benchmark"] == name and doc["command"] == figures.COMMANDS[name]
        assert {"machine", "cpu_cores", "device", "jax", "flax", "python", "date"} <= set(doc["conditions"])
        assert doc["wall_s"] > 0 and doc["figures"]


def test_readme_quotes_every_benchmark():
    quoted = {m.group(2) for m in figures.BLOCK.finditer(READMES["README.md"].read_text())}
    assert quoted == set(figures.NAMES)


def test_figures_blocks_equal_the_results_files(readme: tuple[str, str]):
    name, text = readme
    assert figures.BLOCK.search(text), f"{name} quotes no figures block"
    assert figures.sync(text) == text, f"{name} is stale: run `python -m benchmarks.figures --write`"


def test_a_changed_figure_is_caught():
    text = READMES["README.md"].read_text()
    block = figures.BLOCK.search(text)
    tampered = text.replace(block.group(3), re.sub(r"\d\.\d{3}x", "9.999x", block.group(3), count=1))
    assert tampered != text and figures.sync(tampered) == text


def test_no_table_figure_outside_a_figures_block(readme: tuple[str, str]):
    name, text = readme
    outside = figures.BLOCK.sub("", text)
    rows = [line for line in outside.splitlines() if line.startswith("|") and FIGURE.search(line)]
    assert not rows, f"{name} has table figures that no results file backs: {rows[:3]}"


def test_durations_are_quoted_from_the_results_files():
    bench = READMES["benchmarks/README.md"].read_text()
    for name, command in figures.COMMANDS.items():
        row = next(line for line in bench.splitlines() if line.startswith(f"| `{command.split(' --')[0]}`"))
        assert f"<!-- duration: {name} -->" in row, (name, row)
    setup = READMES["README.md"].read_text().split("## Quickstart")[0]
    assert "The digits demo (first command): <!-- duration: digits_demo -->" in setup
    assert figures.sync("<!-- duration: suite -->?<!-- /duration -->") == (
        f"<!-- duration: suite -->{figures.minutes(figures.load('suite')['wall_s'])}<!-- /duration -->"
    )


def test_targets_paragraph_states_the_benchmarks_bounds():
    from benchmarks import bridge_overhead, core_overhead, nnx_style, suite

    text = " ".join(READMES["README.md"].read_text().split())
    pct = lambda bound: f"{round(100 * (bound - 1))}%"  # noqa: E731
    expected = [
        f"train step within {pct(suite.COMPUTE_BOUND)} of Linen's "
        f"({pct(suite.STEP_BOUND['tiny_mlp'])} for a tiny MLP",
        f"compiled within {pct(suite.COMPILE_BOUND)} of Linen's time",
        f"traced and lowered within {bridge_overhead.TARGETS['trace_lower'][1]}x",
        f"eager `apply` within {bridge_overhead.TARGETS['eager'][1]}x",
        f"step within {pct(nnx_style.COMPUTE_BOUND)} of Linen's "
        f"({pct(nnx_style.STEP_BOUND['tiny_mlp'])} for the tiny",
        f"within {nnx_style.DISPATCH_BOUND:g}x of `jax.jit`",
        f"`partition` {core_overhead.TARGETS['partition'][2]:g}x and "
        f"`merge` {core_overhead.TARGETS['merge'][2]:g}x",
        f"within {core_overhead.TARGETS['dispatch'][2]}x of one taking a plain dict",
    ]
    assert [e for e in expected if e not in text] == []


def test_readmes_state_conditions_in_their_own_terms(readme: tuple[str, str]):
    name, text = readme
    assert not re.search(r"\bthe issue\b|\blent\b", text, flags=re.IGNORECASE), name
