"""The main job: one classifier on scikit-learn's digits, trained three ways.

The same MLP (Dense -> BatchNorm -> ReLU -> Dropout -> Dense) is trained on
the 8x8 digits bundled with scikit-learn (no download), with the same batches,
optimiser and number of steps:

1. **Linen**: the Linen model in a stock ``TrainState`` loop
   (`benchmarks.linen_loop.step`).
2. **bridge**: the nnx_bridge twin through ``nnx_bridge.to_linen``, in the
   *same* loop function; only the line that builds the model differs.
3. **NNX-style**: the nnx_bridge twin mutated in place by a step under
   ``nnx_bridge.jit`` with ``nnx_bridge.value_and_grad`` and an
   ``nnx_bridge.Optimizer`` (`benchmarks.nnx_style.train_step`); each step's
   dropout key comes in as a ``Context``.

Each run compiles its step ahead of time, trains with a progress bar (which
counts steps only: it shows no speed) and is evaluated on the held-out digits.
Only then are the step times measured: the steady step time of the three
compiled steps, and the time to trace, lower and compile each step from
scratch, each interleaved round by round (see `benchmarks.timing`), because
runs one after the other on a small shared machine drift by tens of percent.
It prints a table (``x Linen`` is the ratio of the medians printed beside it)
and writes ``digits.png`` (loss curves, test accuracy, steady step times) and
``digits.json`` (every figure) to ``--out``; the default run also publishes its
figures to ``benchmarks/results/digits_demo.json``.

Run from the repository root::

    python -m benchmarks.digits_demo
    python -m benchmarks.digits_demo --hidden 256 --steps 3000 --batch-size 128 --seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from tqdm import tqdm

import nnx_bridge as nnx
from benchmarks import figures, linen_loop, models, nnx_style
from benchmarks.timing import Timing, compile_split, interleave

STYLES = {  # key -> label shown in the table and the plot
    "linen": "Linen, TrainState loop",
    "bridge": "to_linen, same loop",
    "nnx_style": "NNX-style, nnx.jit",
}
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]{postfix}"  # no rate shown
COLORS = {"linen": "tab:blue", "bridge": "tab:orange", "nnx_style": "tab:green"}


@dataclasses.dataclass
class Data:
    """The digits, scaled to [0, 1], split into train and test (numpy arrays)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @classmethod
    def load(cls, test_fraction: float = 0.22) -> "Data":
        """scikit-learn's 1797 digits, shuffled with a fixed seed (the split never changes)."""
        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(x))
        x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int32)
        split = round(len(x) * (1 - test_fraction))
        return cls(x[:split], y[:split], x[split:], y[split:])


@dataclasses.dataclass
class Schedule:
    """What every run sees: the batch indices and dropout key of each step."""

    indices: np.ndarray  # (steps, batch) int
    keys: np.ndarray  # (steps, 2) uint32 raw PRNG keys

    @classmethod
    def make(cls, seed: int, n_train: int, steps: int, batch: int) -> "Schedule":
        """Batches drawn without replacement within a step; keys split from ``seed``."""
        rng = np.random.default_rng(seed)
        indices = np.stack([rng.choice(n_train, batch, replace=False) for _ in range(steps)])
        keys = np.asarray(jax.random.split(jax.random.PRNGKey(seed + 1), steps))
        return cls(indices, keys)


@dataclasses.dataclass
class Run:
    """The record of one training run, and how to time its step again."""

    style: str
    accuracy: float
    losses: list[float]
    first_compile_s: dict[str, float]  # trace, lower, compile and total of the run's own compile
    call_step: tp.Callable[[], tp.Any]  # one more blocking call of the compiled step
    recompile: tp.Callable[[], tp.Any]  # trace, lower and compile the step again, from scratch

    def to_json(self) -> dict[str, tp.Any]:
        """Plain figures for the JSON file."""
        return {"accuracy": self.accuracy, "first_compile_s": self.first_compile_s, "losses": self.losses}


def compile_timed(fn: tp.Callable[..., tp.Any], *args: tp.Any) -> tuple[tp.Any, dict[str, float]]:
    """`fn` jitted and compiled for `args`, with the trace, lower and compile seconds.

    `fn` is wrapped in a new function object first, so that no JAX cache of an
    earlier compile is reused.
    """

    def fresh(*a: tp.Any) -> tp.Any:
        return fn(*a)

    return compile_split(jax.jit(fresh), *args)


def compile_announced(
    style: str, compile_fn: tp.Callable[[], tuple[tp.Any, dict[str, float]]]
) -> tuple[tp.Any, dict[str, float]]:
    """Runs `compile_fn` between a "compiling ..." line and its duration."""
    print(f"{STYLES[style]}: compiling the train step ...", end="", flush=True)
    compiled, seconds = compile_fn()
    print(f" {seconds['total']:.1f} s", flush=True)
    return compiled, seconds


def progress(style: str, steps: int) -> tqdm:
    """The training bar: steps done and the loss; no speed (step times are measured afterwards)."""
    return tqdm(
        range(steps),
        desc=f"training {STYLES[style]:<22}",
        unit="step",
        bar_format=BAR_FORMAT,
        dynamic_ncols=True,
    )


def train_loop(
    style: str, step: tp.Callable[..., tp.Any], state: tp.Any, data: Data, schedule: Schedule
) -> tuple[tp.Any, Run]:
    """Compiles `step(state, x, y, key) -> (state, loss)` and runs it over the schedule.

    Returns the final state and the Run record (accuracy still 0: the caller
    evaluates the final state its own way).
    """
    first = schedule.indices[0]
    args = (data.x_train[first], data.y_train[first], schedule.keys[0])
    initial = state
    compiled, compile_s = compile_announced(style, lambda: compile_timed(step, state, *args))
    losses = []
    bar = progress(style, len(schedule.indices))
    for i in bar:
        idx = schedule.indices[i]
        x, y, key = data.x_train[idx], data.y_train[idx], schedule.keys[i]
        state, loss = compiled(state, x, y, key)
        losses.append(loss)
        if i % 100 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    final = state
    run = Run(
        style,
        0.0,
        [float(v) for v in np.asarray(jnp.stack(losses))],
        compile_s,
        call_step=lambda: compiled(final, *args)[1].block_until_ready(),  # as in the loop
        recompile=lambda: compile_timed(step, initial, *args),
    )
    return final, run


def warm_up(tx: optax.GradientTransformation) -> None:
    """Traces and lowers a tiny model's step in both loops, untimed.

    The first trace in a process fills JAX's one-time caches; without this the
    first run (Linen) would pay for them and its compile time would look worse.
    """
    twin = models.tiny_mlp()
    x, y = twin.batch(jax.random.PRNGKey(0), 4)
    key = jax.random.PRNGKey(1)
    for model in (twin.linen_model(), twin.bridged_linen()):
        state = linen_loop.make_train_state(model, key, x, tx)
        jax.jit(linen_loop.step).trace(state, x, y, key).lower()
    model = twin.bridge_module(key)
    nnx.jit(nnx_style.train_step).trace(
        model, nnx.Optimizer(model, tx), nnx.Context({"dropout": key}), x, y
    ).lower()


def run_linen_loop(
    style: str, model: tp.Any, data: Data, schedule: Schedule, seed: int, tx: optax.GradientTransformation
) -> Run:
    """The stock TrainState loop (styles ``linen`` and ``bridge``)."""
    sample = data.x_train[schedule.indices[0]]
    state = linen_loop.make_train_state(model, jax.random.PRNGKey(seed), sample, tx)
    state, run = train_loop(style, linen_loop.step, state, data, schedule)
    logits = jax.jit(linen_loop.logits)(state, data.x_test)
    run.accuracy = float((np.asarray(logits).argmax(-1) == data.y_test).mean())
    return run


def run_nnx_loop(
    twin: models.Twin, data: Data, schedule: Schedule, seed: int, tx: optax.GradientTransformation
) -> Run:
    """The NNX-style loop: `nnx_style.train_step` under ``nnx_bridge.jit`` updates the model in place."""
    model = twin.bridge_module(jax.random.PRNGKey(seed))
    optimizer = nnx.Optimizer(model, tx)
    first = schedule.indices[0]
    batch = (data.x_train[first], data.y_train[first])

    def fresh(*a: tp.Any) -> tp.Any:  # a new function object: no JAX cache of an earlier compile
        return nnx_style.train_step(*a)

    def recompile() -> tp.Any:
        return compile_split(
            nnx.jit(fresh), model, optimizer, nnx.Context({"dropout": schedule.keys[0]}), *batch
        )

    _, compile_s = compile_announced("nnx_style", recompile)
    step = nnx.jit(nnx_style.train_step)
    losses = []
    bar = progress("nnx_style", len(schedule.indices))
    for i in bar:
        idx = schedule.indices[i]
        ctx = nnx.Context({"dropout": schedule.keys[i]})  # this step's key, as the Linen loop gets it
        loss = step(model, optimizer, ctx, data.x_train[idx], data.y_train[idx])
        losses.append(loss)
        if i % 100 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    logits = nnx.jit(models.nnx_predict)(model, jnp.asarray(data.x_test))
    accuracy = float((np.asarray(logits).argmax(-1) == data.y_test).mean())
    ctx = nnx.Context({"dropout": schedule.keys[0]})
    return Run(
        "nnx_style",
        accuracy,
        [float(v) for v in np.asarray(jnp.stack(losses))],
        compile_s,
        call_step=lambda: step(model, optimizer, ctx, *batch).block_until_ready(),  # as in the loop
        recompile=recompile,
    )


# ----------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------
def summarise(
    runs: dict[str, Run], steady: dict[str, Timing], compiles: dict[str, Timing]
) -> dict[str, dict[str, float]]:
    """Per style: test accuracy, the interleaved step and compile times, and their ratios to Linen.

    ``x Linen`` is the ratio of the medians reported beside it (style's median /
    Linen's median), so the ratio and the times always agree.
    """
    base_step, base_compile = steady["linen"].summary.median, compiles["linen"].summary.median
    out = {}
    for key, run in runs.items():
        s, c = steady[key].summary.scaled(1e3), compiles[key].summary
        out[key] = {
            "accuracy": run.accuracy,
            "step_ms": s.median,
            "step_ms_q1": s.q1,
            "step_ms_q3": s.q3,
            "step_x_linen": steady[key].summary.median / base_step,
            "compile_s": c.median,
            "compile_x_linen": c.median / base_compile,
        }
    return out


def table(rows: dict[str, dict[str, float]], rounds: int, compile_rounds: int) -> str:
    """The printed table (at most 80 columns), with a legend saying what each column measures."""
    head = (
        f"{'style':<22} {'test acc':>8} {'ms/step [IQR]':>22} {'x Linen':>7} {'compile s':>9} {'x Linen':>7}"
    )
    lines = [head, "-" * len(head)]
    for key, r in rows.items():
        digits = 3 if r["step_ms_q3"] < 10 else 2 if r["step_ms_q3"] < 100 else 1  # at most 22 characters
        ms = f"{r['step_ms']:.{digits}f} [{r['step_ms_q1']:.{digits}f}-{r['step_ms_q3']:.{digits}f}]"
        lines.append(
            f"{STYLES[key]:<22} {100 * r['accuracy']:7.1f}% {ms:>22} {r['step_x_linen']:6.3f}x "
            f"{r['compile_s']:9.2f} {r['compile_x_linen']:6.3f}x"
        )
    lines += [
        "",
        f"ms/step: the compiled step after training, median of {rounds} interleaved rounds",
        "  [interquartile range]; compile s: trace + lower + compile from scratch, median",
        f"  of {compile_rounds} interleaved rounds; x Linen: the ratio of the medians beside it.",
    ]
    return "\n".join(lines)


def plot(
    runs: dict[str, Run],
    steady: dict[str, Timing],
    rows: dict[str, dict[str, float]],
    path: pathlib.Path,
    title: str,
) -> None:
    """Loss curves, test accuracy, and the interleaved steady step times (the table's figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_bar) = plt.subplots(
        1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.4, 0.8, 0.9]}
    )
    keys = list(runs)
    for key, run in runs.items():
        steps = np.arange(1, len(run.losses) + 1)
        ax_loss.plot(
            steps,
            _smooth(run.losses, 25),
            color=COLORS[key],
            lw=1.3,
            label=f"{STYLES[key]}: test accuracy {100 * run.accuracy:.1f}%",
        )
    ax_loss.set(
        xlabel="step", ylabel="training loss (moving average of 25)", yscale="log", title="training loss"
    )
    ax_loss.legend(fontsize=8)
    accuracy = [100 * runs[k].accuracy for k in keys]
    acc_bars = ax_acc.bar(range(len(keys)), accuracy, color=[COLORS[k] for k in keys])
    for bar, value in zip(acc_bars, accuracy, strict=True):
        ax_acc.annotate(
            f"{value:.1f}%",
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax_acc.set_xticks(range(len(keys)), ["Linen", "to_linen", "NNX-style"])
    ax_acc.set(ylabel="accuracy on the held-out digits (%)", title="test accuracy after training")
    ax_acc.set_ylim(max(0.0, min(accuracy) - 10), 100)
    medians = [rows[k]["step_ms"] for k in keys]
    errors = np.array(
        [[m - rows[k]["step_ms_q1"], rows[k]["step_ms_q3"] - m] for k, m in zip(keys, medians, strict=True)]
    ).T
    bars = ax_bar.bar(range(len(keys)), medians, yerr=errors, capsize=4, color=[COLORS[k] for k in keys])
    for bar, key in zip(bars, keys, strict=True):
        ax_bar.annotate(
            f"{rows[key]['step_x_linen']:.3f}x Linen",
            (bar.get_x() + bar.get_width() / 2, rows[key]["step_ms_q3"]),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 6),
            textcoords="offset points",
        )
    ax_bar.set_xticks(range(len(keys)), ["Linen", "to_linen", "NNX-style"])
    rounds = len(next(iter(steady.values())).samples)
    ax_bar.set(
        ylabel="ms per compiled step: median, bars = IQR",
        title=f"step time after training,\n{rounds} interleaved rounds (x Linen: ratio of medians)",
    )
    ax_bar.set_ylim(0, max(rows[k]["step_ms_q3"] for k in keys) * 1.25)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(values: tp.Sequence[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    window = max(1, min(window, len(values)))
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    head = cumsum[1:window] / np.arange(1, window)  # growing window at the start
    return np.concatenate([head, (cumsum[window:] - cumsum[:-window]) / window])


def timed(what: str, rounds: int, measure: tp.Callable[[tqdm], tp.Any]) -> tp.Any:
    """Runs `measure(bar)` under a progress bar of `rounds` interleaved rounds."""
    with tqdm(
        total=rounds, desc=f"{what} (interleaved rounds)", bar_format=BAR_FORMAT, dynamic_ncols=True
    ) as bar:
        return measure(bar)


# ----------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------
def parse_args(argv: tp.Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line flags."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--hidden", type=int, default=128, help="width of the hidden layer")
    p.add_argument("--steps", type=int, default=2000, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=64, help="examples per step")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and dropout")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--rounds", type=int, default=40, help="rounds of the interleaved step timing")
    p.add_argument(
        "--compile-rounds", type=int, default=3, help="rounds of the interleaved trace+lower+compile timing"
    )
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("results/digits"),
        help="folder for digits.png and digits.json",
    )
    return p.parse_args(argv)


def main(argv: tp.Sequence[str] | None = None) -> dict[str, tp.Any]:
    """Trains the three ways, prints the table, writes the plot and the JSON."""
    args = parse_args(argv)
    started = time.perf_counter()
    data = Data.load()
    twin = models.digits_mlp(args.hidden)
    schedule = Schedule.make(args.seed, len(data.x_train), args.steps, args.batch_size)
    tx = optax.adam(args.lr)
    env = models.environment()
    print(
        f"digits: {len(data.x_train)} train / {len(data.x_test)} test, MLP 64-{args.hidden}-10 "
        f"with BatchNorm and Dropout, {args.steps} steps of {args.batch_size}, Adam({args.lr}), "
        f"seed {args.seed}, on {env['device']} ({env['cpu_count']} CPUs)"
    )

    warm_up(tx)
    runs = {
        "linen": run_linen_loop("linen", twin.linen_model(), data, schedule, args.seed, tx),
        "bridge": run_linen_loop("bridge", twin.bridged_linen(), data, schedule, args.seed, tx),
        "nnx_style": run_nnx_loop(twin, data, schedule, args.seed, tx),
    }
    steady = timed(
        "timing the three compiled steps",
        args.rounds,
        lambda bar: interleave(
            {k: run.call_step for k, run in runs.items()},
            rounds=args.rounds,
            min_batch_s=0.05,
            on_round=lambda _: bar.update(),
        ),
    )
    compiles = timed(
        "timing trace+lower+compile of each step",
        args.compile_rounds,
        lambda bar: interleave(
            {k: run.recompile for k, run in runs.items()},
            rounds=args.compile_rounds,
            min_batch_s=0.0,
            warmup=0,
            on_round=lambda _: bar.update(),
        ),
    )
    rows = summarise(runs, steady, compiles)
    print()
    print(table(rows, args.rounds, args.compile_rounds))

    args.out.mkdir(parents=True, exist_ok=True)
    title = (
        f"digits MLP 64-{args.hidden}-10 (BatchNorm, Dropout), batch {args.batch_size}, "
        f"{args.steps} steps, seed {args.seed} - {env['device']}, jax {env['jax']}, "
        f"flax {env['flax']}"
    )
    plot(runs, steady, rows, args.out / "digits.png", title)
    result = {
        "benchmark": "digits_demo",
        "environment": env,
        "config": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
        "model": {
            "features": 64,
            "hidden": args.hidden,
            "classes": 10,
            "dropout": 0.2,
            "batch_norm_momentum": 0.9,
        },
        "runs": {k: run.to_json() for k, run in runs.items()},
        "steady_step": {
            "unit": "ms",
            **{
                k: {**t.summary.scaled(1e3).to_json(), "calls_per_round": t.number} for k, t in steady.items()
            },
        },
        "compile": {
            "unit": "s (trace + lower + compile)",
            **{k: {**t.summary.to_json(), "calls_per_round": t.number} for k, t in compiles.items()},
        },
        "ratios_to_linen": {  # ratios of the medians above, as printed
            k: {
                "steady_step": rows[k]["step_x_linen"],
                "compile": rows[k]["compile_x_linen"],
                "accuracy_points": 100 * (run.accuracy - runs["linen"].accuracy),
            }
            for k, run in runs.items()
            if k != "linen"
        },
    }
    (args.out / "digits.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out / 'digits.png'} and {args.out / 'digits.json'}")
    if {**vars(args), "out": None} == {**vars(parse_args([])), "out": None}:  # the default run only
        figures.publish("digits_demo", result, wall_s=time.perf_counter() - started)
    return result


if __name__ == "__main__":
    main()
