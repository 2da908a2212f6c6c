"""One source for every published figure: ``benchmarks/results/<name>.json``.

Each benchmark's ``main`` ends with `publish(name, raw)`: the figures the
READMEs quote are picked out of the run's raw result and written, with the
conditions they were measured under, to ``benchmarks/results/<name>.json``
(committed). The README tables are printed from those files, never typed by
hand, and ``tests/test_readme_figures.py`` checks that the READMEs quote them.

Schema of a results file::

    {"benchmark": "suite", "command": "python -m benchmarks.suite",
     "conditions": {"machine": ..., "cpu_cores": 2, "device": ..., "jax": ...,
                    "flax": ..., "python": ..., "nnx_bridge": ..., "date": ...,
                    "load_avg_1min": ..., "commit": ...},
     "wall_s": 431.0,
     "figures": {...}}  # per benchmark: see the FIGURES functions below

Print every README table from the committed files, or rewrite the READMEs'
``<!-- figures: NAME -->`` blocks with them::

    python -m benchmarks.figures
    python -m benchmarks.figures --write

Publish the raw output of an earlier run (e.g. ``results/suite``)::

    python -m benchmarks.figures --publish suite results/suite --wall-s 431
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import typing as tp

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
NAMES = ("suite", "core_overhead", "bridge_overhead", "nnx_style", "digits_demo")
COMMANDS = {
    "suite": "python -m benchmarks.suite",
    "core_overhead": "python -m benchmarks.core_overhead --layer nn",
    "bridge_overhead": "python -m benchmarks.bridge_overhead",
    "nnx_style": "python -m benchmarks.nnx_style",
    "digits_demo": "python -m benchmarks.digits_demo",
}


def conditions(env: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """What a figure was measured on, from `benchmarks.models.environment()`."""
    return {
        "machine": env["platform"],
        "cpu_cores": env["cpu_count"],
        "device": env["device_kind"],
        "jax": env["jax"],
        "flax": env["flax"],
        "python": env["python"],
        "nnx_bridge": env["nnx_bridge"],
        "date": env["time"],
        "load_avg_1min": round(env["load_avg_1min"], 2),
        "commit": env["commit"],
    }


def _spread(d: dict[str, float]) -> dict[str, float]:
    return {"median": d["median"], "q1": d["q1"], "q3": d["q3"]}


# ----------------------------------------------------------------------------------
# raw result -> figures
# ----------------------------------------------------------------------------------
def suite_figures(raw: dict[str, dict[str, tp.Any]]) -> dict[str, tp.Any]:
    """`raw`: benchmark name -> the suite's result (``results/suite/<name>.json``)."""
    from benchmarks import suite

    step, hlo, comp, mem = (raw[k] for k in ("train_step", "hlo", "compile", "memory"))
    descriptions = {name: spec.description for name, spec in suite.FULL.models}
    rows = {}
    for name, per in step["models"].items():
        rows[name] = {
            "description": descriptions.get(name, name),
            "linen_ms": per["styles"][suite.LINEN]["median"],
            "ratio_to_linen": {
                s: _spread(per["ratio_to_linen"][s])
                for s in (suite.BRIDGE, suite.NNX_STYLE, suite.FLAX_NNX, suite.NNX_JIT)
            },
            "hlo_vs_linen": suite._identity(hlo["models"][name]["vs_linen"][suite.BRIDGE]),
            "compile_bridge_over_linen": _spread(
                comp["models"][name]["ratio_to_linen"]["total"][suite.BRIDGE]
            ),
            "peak_memory_bridge_over_linen": mem["models"][name]["peak_ratio_to_linen"][suite.BRIDGE],
        }
    targets = [
        {k: t[k] for k in ("what", "target", "measured", "verdict")}
        for name in suite.BENCHMARKS
        for t in raw[name]["targets"]
    ]
    return {
        "models": rows,
        "targets": targets,
        "seconds_by_benchmark": {name: raw[name]["seconds"] for name in suite.BENCHMARKS},
    }


def core_overhead_figures(raw: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """`raw`: `benchmarks.core_overhead.main`'s result."""
    rows = []
    for r in raw["rows"]:
        q = r["ratios"]
        rows.append(
            {
                "depth": r["depth"],
                "partition_us": r["partition"]["nnx_bridge"]["median"],
                "flax_split_us": r["partition"]["flax.nnx"]["median"],
                "partition_speedup": _spread(q["partition_flax_over_ours"]),
                "merge_us": r["merge"]["nnx_bridge"]["median"],
                "flax_merge_us": r["merge"]["flax.nnx"]["median"],
                "merge_speedup": _spread(q["merge_flax_over_ours"]),
                "jit_state_over_dict": _spread(q["dispatch_state_over_dict"]),
            }
        )
    targets = [
        {"what": t["what"], "target": t["target"], "measured": f"{t['median']:.2f}x", "verdict": t["verdict"]}
        for t in raw["targets"].values()
        if "median" in t
    ]
    return {"layer": raw["settings"]["layer"], "rows": rows, "targets": targets}


def bridge_overhead_figures(raw: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """`raw`: `benchmarks.bridge_overhead.main`'s payload."""
    from benchmarks import bridge_overhead as bo

    r = raw["ratios_to_linen"]
    rows = {}
    for name in r["trace_lower"]:
        rows[name] = {
            "trace_lower": {s: _spread(v) for s, v in r["trace_lower"][name].items()},
            "eager_train": {s: _spread(v) for s, v in r["eager_train"][name].items()},
            "steady": {s: _spread(v) for s, v in r["steady"][name].items()},
            "hlo_vs_linen": bo._text(raw["programs"][name][bo.BRIDGE]),
            "hlo_ops_and_cost_identical": bool(
                raw["programs"][name][bo.BRIDGE]["ops_identical"]
                and raw["programs"][name][bo.BRIDGE]["cost_identical"]
            ),
        }
    targets = [
        {
            "what": t["what"],
            "target": t["target"],
            "measured": (
                f"{t['worst_median']:.2f}x (worst: {t['worst_row']})"
                if "worst_median" in t
                else "identical"
                if t["verdict"] == "PASS"
                else "differs"
            ),
            "verdict": t["verdict"],
        }
        for t in raw["targets"].values()
    ]
    return {"models": rows, "targets": targets}


def nnx_style_figures(raw: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """`raw`: `benchmarks.nnx_style.run`'s result."""
    from benchmarks import nnx_style

    rows = {
        name: {
            "linen_ms": per["ms"]["linen"]["median"],
            "nnx_jit_over_linen": _spread(per["nnx_bridge_over_linen"]),
            "flax_nnx_over_linen": _spread(per["flax_nnx_over_linen"]),
        }
        for name, per in raw["train_step"]["models"].items()
    }
    d = raw["dispatch"]
    dispatch = {
        "depth": d["depth"],
        "us": {s: v["median"] for s, v in d["us"].items()},
        "nnx_jit_over_jax_jit": _spread(d["nnx_bridge_over_jax_jit"]),
        "flax_nnx_over_jax_jit": _spread(d["flax_nnx_over_jax_jit"]),
    }
    targets = [
        {
            "what": t["what"],
            "target": f"<= {t['bound']}" if t["bound"] != "equal" else "equal",
            "measured": f"{t['median']:.3f}" if t["bound"] != "equal" else str(bool(t["ok"])),
            "verdict": "PASS" if t["ok"] else "MISS",
        }
        for t in nnx_style.all_targets(raw)
    ]
    return {
        "models": rows,
        "dispatch": dispatch,
        "trajectory_bitwise_equal": bool(raw["trajectory"]["bitwise_equal"]),
        "targets": targets,
    }


def digits_demo_figures(raw: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """`raw`: `benchmarks.digits_demo.main`'s result."""
    styles = {}
    for key, run in raw["runs"].items():
        s, c = raw["steady_step"][key], raw["compile"][key]
        styles[key] = {"test_accuracy": run["accuracy"], "step_ms": _spread(s), "compile_s": c["median"]}
    return {
        "config": {k: raw["config"][k] for k in ("hidden", "steps", "batch_size", "seed", "rounds")},
        "styles": styles,
    }


FIGURES: dict[str, tp.Callable[[tp.Any], dict[str, tp.Any]]] = {
    "suite": suite_figures,
    "core_overhead": core_overhead_figures,
    "bridge_overhead": bridge_overhead_figures,
    "nnx_style": nnx_style_figures,
    "digits_demo": digits_demo_figures,
}


def environment_of(name: str, raw: tp.Any) -> dict[str, tp.Any]:
    """The ``environment`` block stored in a raw result."""
    return raw["train_step"]["environment"] if name == "suite" else raw["environment"]


def publish(name: str, raw: tp.Any, *, wall_s: float, out: pathlib.Path = RESULTS) -> pathlib.Path:
    """Writes ``<out>/<name>.json``: the figures of `raw` and the conditions they were measured under."""
    if name not in FIGURES:
        raise ValueError(f"publish: unknown benchmark {name!r}; choose from {list(FIGURES)}.")
    doc = {
        "benchmark": name,
        "command": COMMANDS[name],
        "conditions": conditions(environment_of(name, raw)),
        "wall_s": round(wall_s, 1),
        "figures": FIGURES[name](raw),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"published {path}")
    return path


def load(name: str, where: pathlib.Path = RESULTS) -> dict[str, tp.Any]:
    """The committed results file of benchmark `name`."""
    path = where / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `{COMMANDS.get(name, name)}` to write it.")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------
# figures -> markdown
# ----------------------------------------------------------------------------------
def ratio_cell(d: dict[str, float], digits: int = 3) -> str:
    """``1.002x [0.99-1.02]``: the median ratio and its interquartile range.

    >>> ratio_cell({"median": 1.0024, "q1": 0.991, "q3": 1.0199})
    '1.002x [0.99-1.02]'
    >>> ratio_cell({"median": 16.18, "q1": 14.98, "q3": 18.03}, 1)
    '16.2x [15.0-18.0]'
    >>> ratio_cell({"median": 185.9, "q1": 178.8, "q3": 191.3}, 1)
    '185.9x [179-191]'
    """
    spread = 2 if d["median"] < 10 else 1 if d["median"] < 100 else 0
    return f"{d['median']:.{digits}f}x [{d['q1']:.{spread}f}-{d['q3']:.{spread}f}]"


HLO_WORDS = {  # bridge_overhead's short verdicts, as the README prints them
    "same": "identical",
    "names": "identical up to numbering",
    "consts": "same ops, dropout-RNG constants differ",
    "DIFF": "different",
}


def minutes(seconds: float) -> str:
    """A duration as it is quoted in the READMEs.

    >>> minutes(431), minutes(50), minutes(95)
    ('about 7 minutes', 'about 1 minute', 'about 2 minutes')
    """
    n = max(1, round(seconds / 60))
    return f"about {n} minute{'s' if n != 1 else ''}"


def measured_on(doc: dict[str, tp.Any]) -> str:
    """The one-line measurement conditions quoted above a table."""
    c = doc["conditions"]
    return (
        f"`{doc['command']}`, {minutes(doc['wall_s'])}; measured {c['date'][:10]} "
        f"with {c['cpu_cores']} CPU cores, device {c['device']}, load {c['load_avg_1min']:.1f}, "
        f"jax {c['jax']}, flax {c['flax']}"
    )


def _targets(targets: list[dict[str, tp.Any]]) -> list[str]:
    lines = ["| target | bound | measured | |", "|---|---|---|---|"]
    lines += [f"| {t['what']} | {t['target']} | {t['measured']} | {t['verdict']} |" for t in targets]
    return lines


def suite_table(doc: dict[str, tp.Any]) -> str:
    """The suite's table: per model, the step ratios to Linen, the program, compile time and memory."""
    f = doc["figures"]
    lines = [
        "| model | Linen ms/step | nnx_bridge | NNX-style | flax.nnx | nnx_bridge.jit | HLO vs Linen "
        "| compile, bridge / Linen | peak memory, bridge / Linen |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in f["models"].values():
        r = row["ratio_to_linen"]
        lines.append(
            f"| {row['description']} | {row['linen_ms']:.3f} | "
            + " | ".join(ratio_cell(r[s]) for s in ("bridge", "nnx_style", "flax_nnx", "nnx_jit"))
            + f" | {row['hlo_vs_linen']} | {ratio_cell(row['compile_bridge_over_linen'])} | "
            f"{row['peak_memory_bridge_over_linen']:.3f}x |"
        )
    return "\n".join(lines + [""] + _targets(f["targets"]))


def core_overhead_table(doc: dict[str, tp.Any]) -> str:
    """µs per layer of partition and merge beside flax.nnx's, and the jit call with a State."""
    lines = [
        "| depth | partition µs | `nnx.split` µs | speed-up | merge µs | `nnx.merge` µs | speed-up "
        "| jit call: State / plain dict |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["figures"]["rows"]:
        lines.append(
            f"| {r['depth']} | {r['partition_us']:.1f} | {r['flax_split_us']:.0f} | "
            f"{ratio_cell(r['partition_speedup'], 1)} | {r['merge_us']:.1f} | "
            f"{r['flax_merge_us']:.0f} | "
            f"{ratio_cell(r['merge_speedup'], 1)} | {ratio_cell(r['jit_state_over_dict'], 2)} |"
        )
    return "\n".join(lines + [""] + _targets(doc["figures"]["targets"]))


def bridge_overhead_table(doc: dict[str, tp.Any]) -> str:
    """Ratios bridge / Linen (and Flax's own bridge / Linen) per model."""
    lines = [
        "| model | trace+lower | Flax's ToLinen | eager `apply` (train) | Flax's ToLinen "
        "| steady jitted step | HLO vs Linen |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in doc["figures"]["models"].items():
        steady = ratio_cell(row["steady"]["bridge"], 2)
        lines.append(
            f"| {name} | {ratio_cell(row['trace_lower']['bridge'], 2)} | "
            f"{ratio_cell(row['trace_lower']['flax_bridge'], 2)} | "
            f"{ratio_cell(row['eager_train']['bridge'], 2)} | "
            f"{ratio_cell(row['eager_train']['flax_bridge'], 2)} | {steady} | "
            f"{HLO_WORDS.get(row['hlo_vs_linen'], row['hlo_vs_linen'])} |"
        )
    return "\n".join(lines + [""] + _targets(doc["figures"]["targets"]))


def nnx_style_table(doc: dict[str, tp.Any]) -> str:
    """NNX-style train step against Linen and flax.nnx, and the jitted no-op."""
    f = doc["figures"]
    lines = [
        "| train step, Adam | Linen ms/step | `nnx.jit` + `value_and_grad` + `Optimizer` / Linen "
        "| `flax.nnx.jit` + `nnx.Optimizer` / Linen |",
        "|---|---:|---:|---:|",
    ]
    for name, row in f["models"].items():
        lines.append(
            f"| {name} | {row['linen_ms']:.3f} | {ratio_cell(row['nnx_jit_over_linen'])} | "
            f"{ratio_cell(row['flax_nnx_over_linen'], 2)} |"
        )
    d = f["dispatch"]
    lines.append(
        f"| jitted no-op over a {d['depth']}-layer module, / `jax.jit` of its arrays as a dict | "
        f"`jax.jit`: {d['us']['jax_jit_dict']:.1f} µs | "
        f"{ratio_cell(d['nnx_jit_over_jax_jit'], 2)} | "
        f"{ratio_cell(d['flax_nnx_over_jax_jit'], 1)} |"
    )
    return "\n".join(lines + [""] + _targets(f["targets"]))


DIGITS_LABELS = {
    "linen": "Linen `TrainState` loop",
    "bridge": "`to_linen`, same loop",
    "nnx_style": "NNX-style (`nnx.jit`)",
}


def digits_demo_table(doc: dict[str, tp.Any]) -> str:
    """Test accuracy, interleaved steady step and compile time per style; x Linen = ratio of the medians."""
    styles = doc["figures"]["styles"]
    linen = styles["linen"]
    lines = [
        "| style | test accuracy | ms/step, median [IQR] | x Linen | compile s | x Linen |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, s in styles.items():
        ms = s["step_ms"]
        lines.append(
            f"| {DIGITS_LABELS.get(key, key)} | {100 * s['test_accuracy']:.1f}% | "
            f"{ms['median']:.3f} [{ms['q1']:.3f}-{ms['q3']:.3f}] | "
            f"{ms['median'] / linen['step_ms']['median']:.2f}x | {s['compile_s']:.2f} | "
            f"{s['compile_s'] / linen['compile_s']:.2f}x |"
        )
    return "\n".join(lines)


TABLES: dict[str, tp.Callable[[dict[str, tp.Any]], str]] = {
    "suite": suite_table,
    "core_overhead": core_overhead_table,
    "bridge_overhead": bridge_overhead_table,
    "nnx_style": nnx_style_table,
    "digits_demo": digits_demo_table,
}


def markdown(name: str, where: pathlib.Path = RESULTS) -> str:
    """The README block of benchmark `name`: its conditions line, then its table(s)."""
    doc = load(name, where)
    return f"Source: `benchmarks/results/{name}.json` ({measured_on(doc)}).\n\n{TABLES[name](doc)}\n"


BLOCK = re.compile(r"(<!-- figures: (\w+) -->\n)(.*?)(<!-- /figures -->)", flags=re.DOTALL)
DURATION = re.compile(r"(<!-- duration: (\w+) -->)(.*?)(<!-- /duration -->)")


def _known(kind: str, name: str) -> str:
    if name not in TABLES:
        raise ValueError(f"{kind} {name!r}: unknown benchmark; name one of {list(NAMES)}.")
    return name


def sync(text: str, where: pathlib.Path = RESULTS) -> str:
    """`text` with each figures block and duration printed anew from the results files.

    A figures block is ``<!-- figures: NAME -->`` ... ``<!-- /figures -->`` (the
    benchmark's conditions line and tables); a duration is ``<!-- duration: NAME
    -->`` ... ``<!-- /duration -->`` (its last run's wall time, in minutes).

    >>> sync("text without figures blocks")
    'text without figures blocks'
    """

    def block(match: re.Match[str]) -> str:
        name = _known("figures block", match.group(2))
        return f"{match.group(1)}\n{markdown(name, where)}\n{match.group(4)}"  # blank lines: markdown blocks

    def duration(match: re.Match[str]) -> str:
        name = _known("duration", match.group(2))
        return f"{match.group(1)}{minutes(load(name, where)['wall_s'])}{match.group(4)}"

    return DURATION.sub(duration, BLOCK.sub(block, text))


def _read_raw(name: str, path: pathlib.Path) -> tp.Any:
    if name == "suite":
        from benchmarks import suite

        return {b: json.loads((path / f"{b}.json").read_text()) for b in suite.BENCHMARKS}
    return json.loads(path.read_text())


def main(argv: tp.Sequence[str] | None = None) -> None:
    """Prints the README blocks, or publishes the raw output of an earlier run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--publish",
        nargs=2,
        metavar=("NAME", "RAW"),
        help="publish a raw result: NAME and its JSON file (the suite: its output folder)",
    )
    p.add_argument("--wall-s", type=float, default=None, help="the run's wall time, for --publish")
    p.add_argument(
        "--write",
        nargs="*",
        type=pathlib.Path,
        metavar="MARKDOWN",
        help="rewrite the figures blocks of these files (default: both READMEs) from the results",
    )
    args = p.parse_args(argv)
    if args.write is not None:
        root = RESULTS.parents[1]
        for path in args.write or [root / "README.md", root / "benchmarks" / "README.md"]:
            path.write_text(sync(path.read_text()))
            print(f"updated {path}")
        return
    if args.publish:
        name, raw_path = args.publish
        raw = _read_raw(name, pathlib.Path(raw_path))
        if args.wall_s is not None:
            wall = args.wall_s
        elif name == "suite":
            wall = sum(raw[b]["seconds"] for b in raw)
        else:
            wall = raw.get("seconds", raw.get("wall_s", 0.0))
        publish(name, raw, wall_s=wall)
        return
    for name in NAMES:
        if (RESULTS / f"{name}.json").exists():
            print(f"<!-- {name} -->\n{markdown(name)}")


if __name__ == "__main__":
    main()
