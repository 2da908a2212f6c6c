"""Smoke test of the benchmark suite at minimal sizes, and the benchmarks' doctests.

No timing ratio is asserted (they depend on the machine); only that every
benchmark produces its files with the expected keys, and that the tiny MLP's
train step compiles to the same program through the bridge as in Linen.
"""

from __future__ import annotations

import doctest
import json
import pathlib

import pytest

from benchmarks import models, suite, timing

TINY = suite.Settings(
    name="smoke",
    models=(("tiny_mlp", suite.ModelSpec(models.tiny_mlp, 4, "tiny MLP, batch 4")),),
    step_rounds=2,
    step_min_batch_s=0.0,
    compile_rounds=1,
    depths=(1, 10),
    overhead_rounds=2,
    overhead_min_batch_s=0.0,
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, pathlib.Path]:
    out = tmp_path_factory.mktemp("suite")
    return suite.run(TINY, suite.BENCHMARKS, out), out


def test_every_benchmark_writes_json_and_png(results: tuple[dict, pathlib.Path]) -> None:
    res, out = results
    assert set(res) == set(suite.BENCHMARKS)
    for name in suite.BENCHMARKS:
        saved = json.loads((out / f"{name}.json").read_text())
        assert saved["benchmark"] == name
        assert {"environment", "settings", "targets", "seconds"} <= set(saved)
        assert saved["environment"]["platform"] and saved["environment"]["device_kind"]
        assert (out / f"{name}.png").stat().st_size > 0
    assert "| tiny_mlp |" in (out / "summary.md").read_text()


def test_result_keys(results: tuple[dict, pathlib.Path]) -> None:
    res, _ = results
    step = res["train_step"]["models"]["tiny_mlp"]
    assert set(step["styles"]) == set(suite.STYLES)
    assert {"median", "q1", "q3", "rounds"} <= set(step["styles"][suite.LINEN])
    assert set(step["ratio_to_linen"]) == set(suite.STYLES) - {suite.LINEN}
    assert set(step["ratio_to_flax_nnx"]) == set(suite.STYLES) - {suite.FLAX_NNX}
    phases = res["compile"]["models"]["tiny_mlp"]["phases"]
    assert set(phases) == {"trace", "lower", "compile", "total"}
    assert all(set(per) == set(suite.STYLES) for per in phases.values())
    memory = res["memory"]["models"]["tiny_mlp"]
    assert all(memory["peak_bytes"][s] > 0 for s in suite.STYLES)
    rows = res["overhead"]["rows"]
    assert [r["depth"] for r in rows] == [1, 10]
    assert {"partition", "merge", "convert", "dispatch", "ratios"} <= set(rows[0])
    for name in suite.BENCHMARKS:
        for target in res[name]["targets"]:
            assert target["verdict"] in ("PASS", "MISS")


def test_tiny_mlp_bridge_compiles_to_linen_program(results: tuple[dict, pathlib.Path]) -> None:
    res, _ = results
    bridge = res["hlo"]["models"]["tiny_mlp"]["vs_linen"][suite.BRIDGE]
    assert bridge["ops_identical"] and bridge["cost_identical"] and bridge["memory_identical"]
    assert bridge["text_identical_up_to_names"]
    (target,) = res["hlo"]["targets"]
    assert target["verdict"] == "PASS"


def test_memory_of_identical_programs_is_identical(results: tuple[dict, pathlib.Path]) -> None:
    res, _ = results
    peak = res["memory"]["models"]["tiny_mlp"]["peak_bytes"]
    assert peak[suite.BRIDGE] == peak[suite.LINEN]


def test_unknown_benchmark_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="unknown benchmark"):
        suite.run(TINY, ["speed"], tmp_path)


@pytest.mark.parametrize("module", [timing, models], ids=lambda m: m.__name__)
def test_doctests(module: object) -> None:
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failed == 0
