"""Every benchmark of the benchmarks issue from one command, against Linen and Flax NNX.

Four styles train the same model (`benchmarks.models` twins, synthetic data of
the right shapes) with Adam:

* ``linen``: the Linen module in a stock ``TrainState`` step (`linen_loop.step`),
* ``bridge``: its nnx_bridge twin through ``nnx_bridge.to_linen`` in the *same* step,
* ``nnx_style``: the twin partitioned once, a pure step over States
  (`models.nnx_train_step`),
* ``flax_nnx``: the Flax NNX twin with ``flax.nnx.jit`` and ``nnx.Optimizer``
  (`models.flax_train_step`),
* ``nnx_jit``: the nnx_bridge twin mutated in place by ``nnx_bridge.jit`` +
  ``value_and_grad`` + ``Optimizer`` (`benchmarks.nnx_style.train_step`).

Benchmarks (names for ``--only``), each writing ``<out>/<name>.json`` and ``<out>/<name>.png``:

* ``train_step``: steady time of the compiled step, all styles interleaved
  round by round (rotating which goes first), state carried from step to step.
  Targets: bridge within 3% of Linen on the compute-bound models (MLP, CNN,
  Transformer), within 10% on the tiny MLP.
* ``hlo``: the optimized HLO of each style's train step beside Linen's: op
  counts by kind, ``cost_analysis()`` flops / bytes accessed / transcendentals,
  and the HLO text without debug metadata. Target: bridge identical to Linen.
* ``compile``: trace, lower and compile of the step from scratch (a fresh
  function and jit object per sample), interleaved. Target: bridge total within
  10% of Linen.
* ``overhead``: Python overhead of the core by depth (`benchmarks.core_overhead`):
  partition / merge beside ``flax.nnx.split`` / ``merge`` (and Equinox's
  ``partition`` / ``combine`` when it is installed), Linen-layout conversion,
  jit dispatch. Targets at depth 100: partition >= 10x and merge >= 7x faster
  than Flax NNX.
* ``memory``: the compiled step's memory analysis (peak, arguments, outputs,
  temporaries) per style.

Every figure is a median over interleaved rounds with its interquartile range,
every ratio is taken round by round in the same process; the device is
reported. The run ends with every target as PASS or MISS and writes
``<out>/summary.md``, the tables for the README.

Run from the repository root::

    python -m benchmarks.suite                      # everything (about 7 minutes on 2 CPU cores)
    python -m benchmarks.suite --quick              # tiny settings, a smoke run
    python -m benchmarks.suite --only hlo memory --out results/suite_gpu
    python -m benchmarks.suite --models lstm        # only the LSTM (any subset of the models)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import re
import time
import typing as tp

import jax
from flax import nnx as flax_nnx

import nnx_bridge
from benchmarks import bridge_overhead, core_overhead, figures, linen_loop, models, nnx_style
from benchmarks.timing import Summary, Timing, compile_split, interleave, ratio

LINEN, BRIDGE, NNX_STYLE, FLAX_NNX = "linen", "bridge", "nnx_style", "flax_nnx"
NNX_JIT = "nnx_jit"
STYLES = (LINEN, BRIDGE, NNX_STYLE, FLAX_NNX, NNX_JIT)
LABELS = {
    LINEN: "Linen",
    BRIDGE: "nnx_bridge",
    NNX_STYLE: "NNX-style",
    FLAX_NNX: "flax.nnx",
    NNX_JIT: "nnx_bridge.jit",
}
COLORS = {LINEN: "#4c72b0", BRIDGE: "#dd8452", NNX_STYLE: "#55a868", FLAX_NNX: "#8172b3", NNX_JIT: "#c44e52"}
NNX_JIT_BOUND = {"tiny_mlp": nnx_style.STEP_BOUND["tiny_mlp"]}  # nnx_jit / Linen; else COMPUTE
BENCHMARKS = ("train_step", "hlo", "compile", "overhead", "memory")
# compile runs first: its first (untimed) compile of each style is reused by the others
RUN_ORDER = ("compile", "train_step", "hlo", "memory", "overhead")
PHASES = ("trace", "lower", "compile", "total")
STEP_BOUND = {"tiny_mlp": 1.10}  # bridge / Linen, median; other models: COMPUTE_BOUND
COMPUTE_BOUND = 1.03
COMPILE_BOUND = 1.10
MS = 1e3


# ----------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the suite: how to build its twin, the batch size, a description."""

    twin: tp.Callable[[], models.Twin]
    batch: int
    description: str


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one run."""

    name: str
    models: tuple[tuple[str, ModelSpec], ...]
    step_rounds: int
    step_min_batch_s: float
    compile_rounds: int
    depths: tuple[int, ...]
    overhead_rounds: int
    overhead_min_batch_s: float

    def to_json(self) -> dict[str, tp.Any]:
        """The settings as plain values."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "models"}
        out["models"] = {name: {"batch": m.batch, "description": m.description} for name, m in self.models}
        return out


FULL = Settings(
    name="full",
    models=(
        ("mlp", ModelSpec(models.mlp, 128, "MLP 784-512-512-10 (BatchNorm, Dropout), batch 128")),
        ("cnn", ModelSpec(models.cnn, 64, "CNN conv32-conv64-dense128 on 28x28x1, batch 64")),
        (
            "transformer",
            ModelSpec(
                models.transformer, 32, "Transformer, 2 pre-norm blocks, d=64, 4 heads, 32 tokens, batch 32"
            ),
        ),
        ("tiny_mlp", ModelSpec(models.tiny_mlp, 32, "tiny MLP 16-32-32-4, batch 32")),
        ("lstm", ModelSpec(models.lstm, 128, "LSTM nn.RNN(nn.LSTMCell(128)) over 8 rows of 8, batch 128")),
    ),
    step_rounds=30,
    step_min_batch_s=0.05,
    compile_rounds=6,
    depths=(1, 10, 100, 1000),
    overhead_rounds=30,
    overhead_min_batch_s=0.005,
)
QUICK = Settings(
    name="quick",
    models=(
        ("mlp", ModelSpec(functools.partial(models.mlp, 64, (32, 32)), 16, "MLP 64-32-32-10, batch 16")),
        ("cnn", ModelSpec(functools.partial(models.cnn, 8, (4, 8), 16), 8, "CNN 4-8-16 on 8x8x1, batch 8")),
        (
            "transformer",
            ModelSpec(
                functools.partial(models.transformer, 16, 2, 1, 8),
                4,
                "Transformer, 1 block, d=16, 2 heads, 8 tokens, batch 4",
            ),
        ),
        ("tiny_mlp", ModelSpec(models.tiny_mlp, 8, "tiny MLP 16-32-32-4, batch 8")),
        ("lstm", ModelSpec(functools.partial(models.lstm, 16), 8, "LSTM(16) over 8 rows of 8, batch 8")),
    ),
    step_rounds=6,
    step_min_batch_s=0.005,
    compile_rounds=1,
    depths=(1, 10, 100),
    overhead_rounds=6,
    overhead_min_batch_s=0.002,
)


# ----------------------------------------------------------------------------------
# one model in the four styles
# ----------------------------------------------------------------------------------
class ModelBench:
    """A model's train step in every style: arguments, fresh jit objects, compiled steps.

    All styles start from the same initial variables' key and the same batch.
    """

    def __init__(self, name: str, spec: ModelSpec):
        self.name, self.spec = name, spec
        self.twin = spec.twin()
        setup = bridge_overhead.Setup.make(self.twin, spec.batch, [LINEN, BRIDGE])
        x, y, key, tx = setup.x, setup.y, setup.key, setup.tx
        nnx_state, moduledef = models.nnx_init(self.twin.bridge_module(jax.random.PRNGKey(1)), tx)
        flax_model = self.twin.flax_module(1)
        optimizer = flax_nnx.Optimizer(flax_model, tx, wrt=flax_nnx.Param)
        jit_model, jit_optimizer = nnx_style.loaded_twin(self.twin, setup.step_args(LINEN)[0], tx)
        self.args: dict[str, tuple[tp.Any, ...]] = {
            LINEN: setup.step_args(LINEN),
            BRIDGE: setup.step_args(BRIDGE),
            NNX_STYLE: (nnx_state, x, y, key),
            FLAX_NNX: (flax_model, optimizer, x, y),
            NNX_JIT: (jit_model, jit_optimizer, nnx_bridge.Context({"dropout": key}), x, y),
        }
        self._steps: dict[str, tp.Callable[..., tp.Any]] = {
            LINEN: linen_loop.step,
            BRIDGE: linen_loop.step,
            NNX_STYLE: functools.partial(models.nnx_train_step, moduledef, tx),
            FLAX_NNX: models.flax_train_step,
            NNX_JIT: nnx_style.train_step,
        }
        self.compiled: dict[str, tp.Any] = {}
        self.runner = nnx_bridge.jit(nnx_style.train_step)  # NNX_JIT runs through its wrapper

    def fresh(self, style: str) -> tp.Any:
        """A new jit object (``flax.nnx.jit`` for flax_nnx) around a new function object."""
        inner = self._steps[style]

        def step(*args: tp.Any) -> tp.Any:
            return inner(*args)

        if style == NNX_JIT:
            return nnx_bridge.jit(step)
        return flax_nnx.jit(step) if style == FLAX_NNX else jax.jit(step)

    def warm_up(self) -> None:
        """Traces and lowers every style once, untimed, without compiling.

        The first trace in a process fills JAX's one-time caches (and the
        bridge's per-configuration structure cache, warm in any real process);
        without this the first style timed would pay for them.
        """
        for style in STYLES:
            self.fresh(style).trace(*self.args[style]).lower()

    def compile(self, style: str) -> tp.Any:
        """The compiled train step of `style` (compiled once, then reused)."""
        if style not in self.compiled:
            self.compiled[style] = compile_split(self.fresh(style), *self.args[style])[0]
        return self.compiled[style]

    def stepper(self, style: str) -> tp.Callable[[], None]:
        """One blocking call of the compiled step, carrying the state to the next call."""
        if style == NNX_JIT:  # the wrapper writes the results back into the model and optimizer
            runner, jit_args = self.runner, self.args[style]
            return lambda: jax.block_until_ready(runner(*jit_args))
        compiled = self.compile(style)
        if style == FLAX_NNX:  # the model and optimizer are updated in place
            args = self.args[style]
            return lambda: jax.block_until_ready(compiled(*args))
        box, rest = [self.args[style][0]], self.args[style][1:]

        def call() -> None:
            box[0], loss = compiled(box[0], *rest)
            jax.block_until_ready((box[0], loss))

        return call


# ----------------------------------------------------------------------------------
# verdicts and formatting
# ----------------------------------------------------------------------------------
def verdict(
    benchmark: str, what: str, target: str, measured: str, ok: bool, note: str = ""
) -> dict[str, str]:
    """One target's line: PASS or MISS, with the figure it was judged on."""
    return {
        "benchmark": benchmark,
        "what": what,
        "target": target,
        "measured": measured,
        "verdict": "PASS" if ok else "MISS",
        "note": note,
    }


def _cell(s: Summary, unit: float = MS) -> str:
    s = s.scaled(unit)
    return f"{s.median:.3f} ±{s.iqr_pct:.0f}%"


def _ratio(r: Summary | dict[str, float]) -> str:
    d = r.to_json() if isinstance(r, Summary) else r
    return f"{d['median']:.3f}x [{d['q1']:.2f}-{d['q3']:.2f}]"


def _ratios(timings: dict[str, Timing]) -> dict[str, dict[str, dict[str, float]]]:
    """Round-by-round ratios of every style to Linen and to flax.nnx."""
    return {
        base: {s: ratio(timings[s], timings[base]).to_json() for s in timings if s != base}
        for base in (LINEN, FLAX_NNX)
        if base in timings
    }


def _table(head: tp.Sequence[str], rows: tp.Sequence[tp.Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r):
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=False))
        )

    return "\n".join([line(head), "-" * (sum(widths) + 2 * (len(widths) - 1)), *map(line, rows)])


# ----------------------------------------------------------------------------------
# 1. train-step time
# ----------------------------------------------------------------------------------
def bench_train_step(benches: dict[str, ModelBench], settings: Settings) -> dict[str, tp.Any]:
    """Steady ms per step of every style, interleaved, with ratios to Linen and flax.nnx."""
    out: dict[str, tp.Any] = {"units": "ms per step", "models": {}, "targets": []}
    rows = []
    for name, bench in benches.items():
        print(f"  train_step {name} ...", flush=True)
        timings = interleave(
            {s: bench.stepper(s) for s in STYLES},
            rounds=settings.step_rounds,
            min_batch_s=settings.step_min_batch_s,
        )
        ratios = _ratios(timings)
        out["models"][name] = {
            "description": bench.spec.description,
            "styles": {
                s: {**t.summary.scaled(MS).to_json(), "calls_per_round": t.number} for s, t in timings.items()
            },
            "ratio_to_linen": ratios[LINEN],
            "ratio_to_flax_nnx": ratios[FLAX_NNX],
        }
        bound = STEP_BOUND.get(name, COMPUTE_BOUND)
        r = ratios[LINEN][BRIDGE]
        out["targets"].append(
            verdict(
                "train_step",
                f"train step {name}: nnx_bridge / Linen",
                f"<= {bound:.2f}x",
                _ratio(r),
                r["median"] <= bound,
            )
        )
        jit_bound, r = NNX_JIT_BOUND.get(name, nnx_style.COMPUTE_BOUND), ratios[LINEN][NNX_JIT]
        out["targets"].append(
            verdict(
                "train_step",
                f"train step {name}: nnx_bridge.jit / Linen",
                f"<= {jit_bound:.2f}x",
                _ratio(r),
                r["median"] <= jit_bound,
            )
        )
        rows.append(
            [
                name,
                *(_cell(timings[s].summary) for s in STYLES),
                *(_ratio(ratios[LINEN][s]) for s in STYLES[1:]),
                _ratio(ratios[FLAX_NNX][BRIDGE]),
            ]
        )
    out["table"] = _table(
        [
            "model",
            *(f"{LABELS[s]} ms" for s in STYLES),
            *(f"{LABELS[s]} / Linen" for s in STYLES[1:]),
            "nnx_bridge / flax.nnx",
        ],
        rows,
    )
    return out


def plot_train_step(result: dict[str, tp.Any], path: pathlib.Path, title: str) -> None:
    """One panel per model: ms per step (median, IQR) per style, annotated with x Linen."""
    plt = _pyplot()
    names = list(result["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        per = result["models"][name]
        _bars(ax, per["styles"], {s: per["ratio_to_linen"].get(s, {"median": 1.0})["median"] for s in STYLES})
        ax.set(title=name, ylabel="ms per step (median, IQR)")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------------
# 2. compiled-program identity
# ----------------------------------------------------------------------------------
def bench_hlo(benches: dict[str, ModelBench]) -> dict[str, tp.Any]:
    """Every style's optimized HLO beside Linen's: op counts, cost, text."""
    out: dict[str, tp.Any] = {"models": {}, "targets": []}
    rows, kinds_lines = [], []
    for name, bench in benches.items():
        print(f"  hlo {name} ...", flush=True)
        programs = {s: bench.compile(s) for s in STYLES}
        linen = bridge_overhead.program_facts(programs[LINEN])
        cmp = {s: bridge_overhead.compare_programs(programs[LINEN], programs[s]) for s in STYLES[1:]}
        out["models"][name] = {"linen": linen, "vs_linen": cmp}
        for s in STYLES:
            facts = linen if s == LINEN else cmp[s]["other"]
            same = "" if s == LINEN else _identity(cmp[s])
            delta = "" if s == LINEN else " ".join(f"{k} {v:+d}" for k, v in cmp[s]["op_count_delta"].items())
            rows.append(
                [
                    name if s == LINEN else "",
                    LABELS[s],
                    sum(facts["ops"].values()),
                    f"{facts['cost'].get('flops', float('nan')):.4g}",
                    f"{facts['cost'].get('bytes accessed', float('nan')):.4g}",
                    f"{facts['cost'].get('transcendentals', float('nan')):.4g}",
                    same,
                    str(delta),
                ]
            )
        kinds_lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in linen["ops"].items()))
        b = cmp[BRIDGE]
        note = _explain(b)
        identical = (
            b["ops_identical"]
            and b["cost_identical"]
            and (b["text_identical_up_to_names"] or note.startswith(RNG_CONSTANTS_ONLY))
        )
        measured = _identity(b) + (" (dropout RNG)" if note.startswith(RNG_CONSTANTS_ONLY) else "")
        out["targets"].append(
            verdict(
                "hlo", f"optimized HLO {name}: nnx_bridge vs Linen", "identical", measured, identical, note
            )
        )
    out["table"] = _table(
        ["model", "style", "ops", "flops", "bytes accessed", "transcendentals", "vs Linen", "op-count delta"],
        rows,
    )
    out["table"] += "\n" + HLO_NOTES + "\nop counts by kind (Linen):\n" + "\n".join(kinds_lines)
    return out


def _identity(cmp: dict[str, tp.Any]) -> str:
    """``identical`` / ``same up to numbering`` / ``same but constants`` / ``different``."""
    if not (cmp["ops_identical"] and cmp["cost_identical"]):
        return "different"
    if cmp["text_identical"]:
        return "identical"
    if cmp["text_identical_up_to_names"]:
        return "identical up to numbering"
    if cmp["text_identical_up_to_names_and_constants"]:
        return "same ops, constants differ"
    return "same counts, text differs"


RNG_CONSTANTS_ONLY = "only u32 RNG constants differ"
HLO_NOTES = (
    "vs Linen: 'identical' = same HLO text without debug metadata; 'up to numbering' = only instruction\n"
    "names differ. NNX-style is Linen's program minus the TrainState.step counter (add, constant, fusion,\n"
    "3 parameters fewer). flax.nnx compiles its own layers (nnx.Dropout's RNG state, nnx.MultiHeadAttention)."
)
_U32_CONSTANT = re.compile(r"u32\[[\d,]*\](?:\{[\d,]*\})? constant\(")


def _explain(cmp: dict[str, tp.Any]) -> str:
    """Why two programs differ, where it is known; the first differing lines otherwise."""
    if cmp["text_identical_up_to_names"]:
        return ""
    changed = [line for line in cmp["diff_head"] if line.startswith(("-", "+"))]
    if (
        cmp["text_identical_up_to_names_and_constants"]
        and cmp["diff_lines"] <= len(cmp["diff_head"])
        and all(_U32_CONSTANT.search(line) for line in changed)
    ):
        return (
            f"{RNG_CONSTANTS_ONLY} ({len(changed) // 2} of them): the fold_in data of the dropout "
            "key, which Linen derives from each Dropout's scope path (Linen's Dropout_0, Dropout_1 "
            "vs the bridge's own paths), so the two draw different dropout masks from the same key; "
            "op counts, flops, bytes and memory are identical"
        )
    return "first differing lines: " + " | ".join(line[:160] for line in changed[:4])


def plot_hlo(result: dict[str, tp.Any], path: pathlib.Path, title: str) -> None:
    """One panel per model: op counts by kind, every style beside Linen."""
    plt = _pyplot()
    import numpy as np

    names = list(result["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 6.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        per = result["models"][name]
        ops = {LINEN: per["linen"]["ops"], **{s: c["other"]["ops"] for s, c in per["vs_linen"].items()}}
        kinds = sorted(set().union(*ops.values()), key=lambda k: -ops[LINEN].get(k, 0))
        pos = np.arange(len(kinds))
        height = 0.8 / len(STYLES)
        for i, s in enumerate(STYLES):
            ax.barh(
                pos + i * height, [ops[s].get(k, 0) for k in kinds], height, color=COLORS[s], label=LABELS[s]
            )
        ax.set_yticks(pos + 0.4 - height / 2, kinds, fontsize=7)
        ax.invert_yaxis()
        ax.set(xscale="log", xlabel="instructions", title=f"{name}: {_identity(per['vs_linen'][BRIDGE])}")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------------
# 3. compile time
# ----------------------------------------------------------------------------------
def bench_compile(benches: dict[str, ModelBench], settings: Settings) -> dict[str, tp.Any]:
    """Trace, lower and compile seconds of each style's step, from scratch, interleaved."""
    out: dict[str, tp.Any] = {"units": "seconds", "models": {}, "targets": []}
    rows = []
    rounds = settings.compile_rounds
    for name, bench in benches.items():
        print(f"  compile {name} ...", flush=True)
        splits: dict[str, list[dict[str, float]]] = {s: [] for s in STYLES}

        def sampler(
            style: str, bench: ModelBench = bench, splits: dict[str, list[dict[str, float]]] = splits
        ) -> tp.Callable[[], None]:
            def call() -> None:
                compiled, split = compile_split(bench.fresh(style), *bench.args[style])
                bench.compiled.setdefault(style, compiled)
                splits[style].append(split)

            return call

        bench.warm_up()
        interleave({s: sampler(s) for s in STYLES}, rounds=rounds, number=1, warmup=0)
        timings = {
            phase: {s: Timing(s, tuple(x[phase] for x in splits[s]), 1) for s in STYLES} for phase in PHASES
        }
        ratios = {phase: _ratios(timings[phase]) for phase in PHASES}
        out["models"][name] = {
            "phases": {
                phase: {s: t.summary.to_json() for s, t in per.items()} for phase, per in timings.items()
            },
            "ratio_to_linen": {phase: r[LINEN] for phase, r in ratios.items()},
            "ratio_to_flax_nnx": {phase: r[FLAX_NNX] for phase, r in ratios.items()},
        }
        r = ratios["total"][LINEN][BRIDGE]
        out["targets"].append(
            verdict(
                "compile",
                f"trace+lower+compile {name}: nnx_bridge / Linen",
                f"<= {COMPILE_BOUND:.2f}x",
                _ratio(r),
                r["median"] <= COMPILE_BOUND,
            )
        )
        for s in STYLES:
            rows.append(
                [
                    name if s == LINEN else "",
                    LABELS[s],
                    *(_cell(timings[p][s].summary) for p in ("trace", "lower", "compile")),
                    f"{timings['total'][s].summary.median:.3f}",
                    "" if s == LINEN else _ratio(ratios["total"][LINEN][s]),
                    "" if s == FLAX_NNX else _ratio(ratios["total"][FLAX_NNX][s]),
                    "" if s == LINEN else _ratio(ratios["trace"][LINEN][s]),
                ]
            )
    out["table"] = _table(
        [
            "model",
            "style",
            "trace ms",
            "lower ms",
            "compile ms",
            "total s",
            "total / Linen",
            "total / flax.nnx",
            "trace / Linen",
        ],
        rows,
    )
    return out


def plot_compile(result: dict[str, tp.Any], path: pathlib.Path, title: str) -> None:
    """One panel per model: stacked trace / lower / compile medians per style."""
    plt = _pyplot()
    names = list(result["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    shades = {"trace": 1.0, "lower": 0.65, "compile": 0.35}
    for ax, name in zip(axes[0], names, strict=False):
        phases = result["models"][name]["phases"]
        bottom = [0.0] * len(STYLES)
        for phase, alpha in shades.items():
            heights = [phases[phase][s]["median"] for s in STYLES]
            ax.bar(
                range(len(STYLES)),
                heights,
                bottom=bottom,
                color=[COLORS[s] for s in STYLES],
                alpha=alpha,
                label=phase,
                edgecolor="black",
                linewidth=0.4,
            )
            bottom = [b + h for b, h in zip(bottom, heights, strict=False)]
        for i, s in enumerate(STYLES):
            r = result["models"][name]["ratio_to_linen"]["total"].get(s, {"median": 1.0})["median"]
            ax.annotate(
                f"{r:.2f}x",
                (i, bottom[i]),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 3),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(STYLES)), [LABELS[s] for s in STYLES], fontsize=8)
        ax.set(title=name, ylabel="seconds (median): trace / lower / compile")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------------
# 4. Python overhead by depth (benchmarks.core_overhead)
# ----------------------------------------------------------------------------------
def bench_overhead(settings: Settings) -> dict[str, tp.Any]:
    """`core_overhead` at each depth: partition, merge, conversion, dispatch."""
    rows = []
    for depth in settings.depths:
        print(f"  overhead depth {depth} ...", flush=True)
        fx = core_overhead.Fixture(depth)
        timings = core_overhead.measure(fx, settings.overhead_rounds, settings.overhead_min_batch_s)
        rows.append(core_overhead.summarise(depth, timings))
    checks = core_overhead.check_targets(rows)
    targets = []
    for _key, c in checks.items():
        measured = f"{c['median']:.2f}x [{c['q1']:.2f}-{c['q3']:.2f}]" if "median" in c else "not measured"
        op, bound = c["target"].split()
        ok = "median" in c and (c["median"] >= float(bound) if op == ">=" else c["median"] <= float(bound))
        targets.append(
            verdict(
                "overhead", f"depth {core_overhead.TARGET_DEPTH} {c['what']}", f"{op} {bound}x", measured, ok
            )
        )
    return {
        "units": {"partition": "µs/layer", "merge": "µs/layer", "convert": "µs/layer", "dispatch": "µs/call"},
        "equinox": core_overhead.equinox() is not None,
        "rows": rows,
        "targets": targets,
    }


def plot_overhead(result: dict[str, tp.Any], path: pathlib.Path, title: str) -> None:
    """µs per layer against depth: partition, merge (beside Flax NNX / Equinox), conversion."""
    plt = _pyplot()
    rows = result["rows"]
    depths = [r["depth"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, group in zip(axes, ("partition", "merge", "convert"), strict=False):
        for impl in rows[0][group]:
            med = [r[group][impl]["median"] for r in rows]
            lo = [r[group][impl]["median"] - r[group][impl]["q1"] for r in rows]
            hi = [r[group][impl]["q3"] - r[group][impl]["median"] for r in rows]
            ax.errorbar(depths, med, yerr=[lo, hi], marker="o", capsize=3, label=impl)
        ax.set(xscale="log", yscale="log", xlabel="layers", ylabel="µs per layer (median, IQR)", title=group)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------------
# 5. memory
# ----------------------------------------------------------------------------------
def bench_memory(benches: dict[str, ModelBench]) -> dict[str, tp.Any]:
    """The compiled step's memory analysis per style, with ratios of the peak."""
    out: dict[str, tp.Any] = {"units": "bytes", "models": {}, "targets": []}
    rows = []
    for name, bench in benches.items():
        memory = {s: bridge_overhead.program_facts(bench.compile(s))["memory"] for s in STYLES}
        peak = {s: memory[s].get("peak_memory_in_bytes") or _peak_estimate(memory[s]) for s in STYLES}
        out["models"][name] = {
            "styles": memory,
            "peak_bytes": peak,
            "peak_ratio_to_linen": {s: peak[s] / peak[LINEN] for s in STYLES},
            "peak_ratio_to_flax_nnx": {s: peak[s] / peak[FLAX_NNX] for s in STYLES},
        }
        for s in STYLES:
            m = memory[s]
            rows.append(
                [
                    name if s == LINEN else "",
                    LABELS[s],
                    _kib(peak[s]),
                    _kib(m.get("argument_size_in_bytes", 0)),
                    _kib(m.get("output_size_in_bytes", 0)),
                    _kib(m.get("alias_size_in_bytes", 0)),
                    _kib(m.get("temp_size_in_bytes", 0)),
                    f"{peak[s] / peak[LINEN]:.3f}x",
                    f"{peak[s] / peak[FLAX_NNX]:.3f}x",
                ]
            )
    out["table"] = _table(
        [
            "model",
            "style",
            "peak KiB",
            "arguments",
            "outputs",
            "aliased",
            "temporaries",
            "peak / Linen",
            "peak / flax.nnx",
        ],
        rows,
    )
    return out


def _peak_estimate(memory: dict[str, int]) -> int:
    """Arguments + outputs - aliased + temporaries, where the backend reports no peak."""
    return (
        memory.get("argument_size_in_bytes", 0)
        + memory.get("output_size_in_bytes", 0)
        - memory.get("alias_size_in_bytes", 0)
        + memory.get("temp_size_in_bytes", 0)
    )


def _kib(n: int) -> str:
    return f"{n / 1024:.1f}"


def plot_memory(result: dict[str, tp.Any], path: pathlib.Path, title: str) -> None:
    """One panel per model: peak memory per style, annotated with x Linen."""
    plt = _pyplot()
    names = list(result["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        per = result["models"][name]
        mib = {s: {"median": per["peak_bytes"][s] / 2**20} for s in STYLES}
        _bars(ax, mib, per["peak_ratio_to_linen"])
        ax.set(title=name, ylabel="peak memory of the step, MiB")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------------
# plotting helpers
# ----------------------------------------------------------------------------------
def _pyplot() -> tp.Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax: tp.Any, values: dict[str, dict[str, float]], to_linen: dict[str, float]) -> None:
    """Bars of ``values[style]["median"]`` (IQR whiskers where given) labelled ``x Linen``."""
    styles = [s for s in STYLES if s in values]
    med = [values[s]["median"] for s in styles]
    err = [
        [m - values[s].get("q1", m) for s, m in zip(styles, med, strict=False)],
        [values[s].get("q3", m) - m for s, m in zip(styles, med, strict=False)],
    ]
    ax.bar(range(len(styles)), med, yerr=err, capsize=4, color=[COLORS[s] for s in styles])
    for i, s in enumerate(styles):
        ax.annotate(
            f"{to_linen[s]:.3f}x",
            (i, med[i] + err[1][i]),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax.set_xticks(range(len(styles)), [LABELS[s] for s in styles], fontsize=8)
    ax.set_ylim(0, max(m + e for m, e in zip(med, err[1], strict=False)) * 1.2)


def _save(fig: tp.Any, path: pathlib.Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


# ----------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------
PLOTS = {
    "train_step": plot_train_step,
    "hlo": plot_hlo,
    "compile": plot_compile,
    "overhead": plot_overhead,
    "memory": plot_memory,
}
TITLES = {
    "train_step": "steady train step, interleaved (median, IQR), labelled x Linen",
    "hlo": "optimized HLO of the jitted train step: instructions by kind",
    "compile": "trace / lower / compile of the train step from scratch (median), labelled x Linen",
    "overhead": "Python overhead of the core by depth",
    "memory": "peak memory of the compiled train step (memory_analysis), labelled x Linen",
}


def device() -> dict[str, str]:
    """The device the figures were taken on."""
    d = jax.devices()[0]
    return {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "device": str(d),
        "device_count": str(jax.device_count()),
    }


def run(
    settings: Settings, only: tp.Sequence[str] = BENCHMARKS, out: pathlib.Path = pathlib.Path("results/suite")
) -> dict[str, dict[str, tp.Any]]:
    """Runs the chosen benchmarks, prints their tables, writes JSON, PNG and summary.md."""
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}.")
    out.mkdir(parents=True, exist_ok=True)
    env = {**models.environment(), **device()}
    print(
        f"benchmark suite ({settings.name} settings) on {env['platform']} / {env['device_kind']} "
        f"({env['device_count']} device(s), {env['cpu_count']} CPU cores, "
        f"load {env['load_avg_1min']:.1f}); "
        f"jax {env['jax']}, flax {env['flax']}, nnx_bridge {env['nnx_bridge']}",
        flush=True,
    )
    started = time.perf_counter()
    benches: dict[str, ModelBench] = {}
    if set(only) & {"train_step", "hlo", "compile", "memory"}:
        benches = {name: ModelBench(name, spec) for name, spec in settings.models}
    jobs: dict[str, tp.Callable[[], dict[str, tp.Any]]] = {
        "compile": lambda: bench_compile(benches, settings),
        "train_step": lambda: bench_train_step(benches, settings),
        "hlo": lambda: bench_hlo(benches),
        "memory": lambda: bench_memory(benches),
        "overhead": lambda: bench_overhead(settings),
    }
    results: dict[str, dict[str, tp.Any]] = {}
    for name in RUN_ORDER:
        if name not in only:
            continue
        t0 = time.perf_counter()
        result = jobs[name]()
        result = {
            "benchmark": name,
            "environment": env,
            "settings": settings.to_json(),
            **result,
            "seconds": time.perf_counter() - t0,
        }
        (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
        title = f"{TITLES[name]} — {env['device_kind']} ({env['platform']})"
        PLOTS[name](result, out / f"{name}.png", title)
        results[name] = result
    for name in BENCHMARKS:  # print in the documented order
        if name in results:
            print(f"\n=== {name} ({results[name]['seconds']:.0f} s) ===")
            if name == "overhead":
                core_overhead.print_tables(results[name]["rows"])
            else:
                print(results[name]["table"])
    targets = [t for name in BENCHMARKS if name in results for t in results[name]["targets"]]
    print("\n=== targets ===")
    for t in targets:
        print(f"{t['verdict']:<4}  {t['what']:<58} {t['target']:>10}   measured {t['measured']}")
        if t["note"]:
            print(f"      note: {t['note']}")
    summary = markdown(results, env)
    (out / "summary.md").write_text(summary)
    wall = time.perf_counter() - started
    print(f"\nwrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/ in {wall:.0f} s")
    return results


def markdown(results: dict[str, dict[str, tp.Any]], env: dict[str, tp.Any]) -> str:
    """The README tables: per model step, compile and memory ratios; overhead by depth; targets."""
    lines = [
        f"Device: {env['device_kind']} ({env['platform']}), {env['cpu_count']} CPU cores; "
        f"jax {env['jax']}, flax {env['flax']}. Medians of interleaved rounds, ratios round by round, "
        "[interquartile range].",
        "",
    ]
    step, hlo, comp, mem = (results.get(k) for k in ("train_step", "hlo", "compile", "memory"))
    names = next((list(r["models"]) for r in (step, comp, hlo, mem) if r), [])
    if names:
        lines += [
            "| model | Linen ms/step | nnx_bridge | NNX-style | flax.nnx | nnx_bridge.jit | HLO vs Linen | "
            "compile, bridge / Linen | peak memory, bridge / Linen |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for n in names:
            cells = [n]
            if step:
                per = step["models"][n]
                cells += [
                    f"{per['styles'][LINEN]['median']:.3f}",
                    *(_ratio(per["ratio_to_linen"][s]) for s in (BRIDGE, NNX_STYLE, FLAX_NNX, NNX_JIT)),
                ]
            else:
                cells += ["-"] * 5
            cells.append(_identity(hlo["models"][n]["vs_linen"][BRIDGE]) if hlo else "-")
            cells.append(_ratio(comp["models"][n]["ratio_to_linen"]["total"][BRIDGE]) if comp else "-")
            cells.append(f"{mem['models'][n]['peak_ratio_to_linen'][BRIDGE]:.3f}x" if mem else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if "overhead" in results:
        lines += [
            "| layers | partition µs/layer | flax.nnx.split / partition | merge µs/layer | "
            "flax.nnx.merge / merge |",
            "|---|---|---|---|---|",
        ]
        for r in results["overhead"]["rows"]:
            q = r["ratios"]
            lines.append(
                f"| {r['depth']} | {r['partition']['nnx_bridge']['median']:.2f} | "
                f"{_ratio(q['partition_flax_over_ours'])} | "
                f"{r['merge']['nnx_bridge']['median']:.2f} | "
                f"{_ratio(q['merge_flax_over_ours'])} |"
            )
        lines.append("")
    lines += ["| target | measured | |", "|---|---|---|"]
    for name in BENCHMARKS:
        for t in results.get(name, {}).get("targets", []):
            lines.append(f"| {t['what']} {t['target']} | {t['measured']} | {t['verdict']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: tp.Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line flags."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny models and few rounds: a smoke run")
    p.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        default=list(BENCHMARKS),
        metavar="NAME",
        help=f"benchmarks to run, from {', '.join(BENCHMARKS)}",
    )
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("results/suite"),
        help="folder for the JSON, PNG and summary.md files",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="MODEL",
        help=f"models to run (default: all), from {', '.join(n for n, _ in FULL.models)}",
    )
    return p.parse_args(argv)


def select_models(settings: Settings, names: tp.Sequence[str] | None) -> Settings:
    """`settings` with only the models in `names` (all of them for None), in the settings' order."""
    if names is None:
        return settings
    known = [n for n, _ in settings.models]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {known}.")
    return dataclasses.replace(settings, models=tuple((n, m) for n, m in settings.models if n in names))


def main(argv: tp.Sequence[str] | None = None) -> dict[str, dict[str, tp.Any]]:
    """Parses the flags and runs the suite."""
    args = parse_args(argv)
    started = time.perf_counter()
    results = run(select_models(QUICK if args.quick else FULL, args.models), args.only, args.out)
    if not args.quick and args.models is None and set(args.only) == set(BENCHMARKS):  # the full run only
        figures.publish("suite", results, wall_s=time.perf_counter() - started)
    return results


if __name__ == "__main__":
    main()
