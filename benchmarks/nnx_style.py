"""NNX-style training with `nnx_bridge.jit` + `value_and_grad` + `Optimizer`, against Linen.

Three measurements, each a median over interleaved rounds with ratios taken round
by round in the same process (`benchmarks.timing`):

* ``train_step``: the suite's models (`benchmarks.suite` settings) trained with
  Adam three ways: Linen's ``TrainState`` step under ``jax.jit`` (`linen_loop.step`),
  the nnx_bridge module mutated in place by `train_step` below under
  ``nnx_bridge.jit``, and the Flax NNX twin under ``flax.nnx.jit`` with
  ``nnx.Optimizer``. Targets: nnx_bridge / Linen <= 1.05x on the tiny MLP,
  <= 1.02x on MLP, CNN and Transformer.
* ``dispatch``: a jitted function that takes a 100-layer module and returns
  nothing, against ``jax.jit`` of the same arrays as a plain dict and
  ``flax.nnx.jit`` of a Flax NNX 100-layer module. Target: <= 2x ``jax.jit``.
* ``trajectory``: 50 steps of the digits MLP without dropout from the same
  initial variables; the losses must equal Linen's bit for bit.

Run from the repository root::

    python -m benchmarks.nnx_style              # about 3 minutes on 2 CPU cores
    python -m benchmarks.nnx_style --quick      # small models, few rounds
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx as flax_nnx

import nnx_bridge as nnx
from benchmarks import figures, linen_loop, models
from benchmarks.timing import interleave, ratio

STEP_BOUND = {"tiny_mlp": 1.05}
COMPUTE_BOUND = 1.02
DISPATCH_BOUND = 2.0


def train_step(
    model: nnx.Module, optimizer: nnx.Optimizer, ctx: nnx.Context, x: jax.Array, y: jax.Array
) -> jax.Array:
    """One Adam step of the NNX-style loop; wrap it in ``nnx_bridge.jit``.

    The model's parameters and BatchNorm statistics, the optimiser state and
    the Context are updated in place; the loss is returned.
    """

    def loss_fn(model: nnx.Module) -> jax.Array:
        logits = model(x, train=True, ctx=ctx)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def loaded_twin(
    twin: models.Twin, state: linen_loop.TrainState, tx: optax.GradientTransformation
) -> tuple[nnx.Module, nnx.Optimizer]:
    """The nnx_bridge twin holding the Linen TrainState's variables, with its Optimizer."""
    model = twin.bridge_module(jax.random.PRNGKey(1))
    collections = {"params": state.params}
    if state.batch_stats:
        collections["batch_stats"] = state.batch_stats
    model.update_state(nnx.from_variables(collections))
    return model, nnx.Optimizer(model, tx)


# ----------------------------------------------------------------------------------
# train step
# ----------------------------------------------------------------------------------
def _steppers(spec: tp.Any) -> dict[str, tp.Callable[[], None]]:
    """One blocking step of each style for the suite model `spec`, from the same initial values."""
    twin = spec.twin()
    x, y = twin.batch(jax.random.PRNGKey(0), spec.batch)
    tx = optax.adam(1e-3)
    key = jax.random.PRNGKey(2)
    box = [linen_loop.make_train_state(twin.linen_model(), jax.random.PRNGKey(1), x, tx)]
    model, optimizer = loaded_twin(twin, box[0], tx)
    ctx = nnx.Context({"dropout": key})
    step = nnx.jit(train_step)
    linen_step = jax.jit(linen_loop.step)
    flax_model = twin.flax_module(1)
    flax_optimizer = flax_nnx.Optimizer(flax_model, tx, wrt=flax_nnx.Param)
    flax_step = flax_nnx.jit(models.flax_train_step)

    def linen() -> None:
        box[0], loss = linen_step(box[0], x, y, key)
        jax.block_until_ready(loss)

    return {
        "linen": linen,
        "nnx_bridge": lambda: jax.block_until_ready(step(model, optimizer, ctx, x, y)),
        "flax_nnx": lambda: jax.block_until_ready(flax_step(flax_model, flax_optimizer, x, y)),
    }


def bench_train_step(
    spec_models: tp.Sequence[tuple[str, tp.Any]], rounds: int, min_batch_s: float
) -> dict[str, tp.Any]:
    """ms per step of Linen, nnx_bridge (jit + value_and_grad + Optimizer) and flax.nnx."""
    out: dict[str, tp.Any] = {"models": {}, "targets": []}
    for name, spec in spec_models:
        print(f"  train_step {name} ...", flush=True)
        timings = interleave(_steppers(spec), rounds=rounds, min_batch_s=min_batch_s)
        ours, theirs = (
            ratio(timings["nnx_bridge"], timings["linen"]),
            ratio(timings["flax_nnx"], timings["linen"]),
        )
        bound = STEP_BOUND.get(name, COMPUTE_BOUND)
        out["models"][name] = {
            "description": spec.description,
            "ms": {s: t.summary.scaled(1e3).to_json() for s, t in timings.items()},
            "nnx_bridge_over_linen": ours.to_json(),
            "flax_nnx_over_linen": theirs.to_json(),
        }
        out["targets"].append(
            {
                "what": f"train step {name}: nnx_bridge.jit / Linen",
                "bound": bound,
                "median": ours.median,
                "ok": ours.median <= bound,
            }
        )
    return out


# ----------------------------------------------------------------------------------
# dispatch of a 100-layer module
# ----------------------------------------------------------------------------------
class Deep(nnx.Module):
    """``depth`` Linear layers in a list."""

    def __init__(self, depth: int):
        self.layers = [nnx.Linear(4, 4, ctx=nnx.Context(i)) for i in range(depth)]


class FlaxDeep(flax_nnx.Module):
    """The Flax NNX twin of `Deep`."""

    def __init__(self, depth: int):
        self.layers = flax_nnx.List([flax_nnx.Linear(4, 4, rngs=flax_nnx.Rngs(i)) for i in range(depth)])


def bench_dispatch(depth: int, rounds: int, min_batch_s: float) -> dict[str, tp.Any]:
    """µs per call of a jitted no-op taking the module (or its arrays as a dict)."""
    print(f"  dispatch depth {depth} ...", flush=True)
    module = Deep(depth)
    arrays = {path: v.value for path, v in module.partition()[0].items()}
    flax_module = FlaxDeep(depth)

    def noop(tree: tp.Any) -> None:
        del tree

    ours, plain, theirs = nnx.jit(noop), jax.jit(noop), flax_nnx.jit(noop)
    timings = interleave(
        {
            "jax_jit_dict": lambda: plain(arrays),
            "nnx_bridge": lambda: ours(module),
            "flax_nnx": lambda: theirs(flax_module),
        },
        rounds=rounds,
        min_batch_s=min_batch_s,
    )
    r = ratio(timings["nnx_bridge"], timings["jax_jit_dict"])
    return {
        "depth": depth,
        "us": {s: t.summary.scaled(1e6).to_json() for s, t in timings.items()},
        "nnx_bridge_over_jax_jit": r.to_json(),
        "flax_nnx_over_jax_jit": ratio(timings["flax_nnx"], timings["jax_jit_dict"]).to_json(),
        "targets": [
            {
                "what": f"jitted no-op over {depth} layers: nnx_bridge.jit / jax.jit(dict)",
                "bound": DISPATCH_BOUND,
                "median": r.median,
                "ok": r.median <= DISPATCH_BOUND,
            }
        ],
    }


# ----------------------------------------------------------------------------------
# loss trajectory
# ----------------------------------------------------------------------------------
def trajectory(steps: int = 50, batch: int = 64) -> dict[str, tp.Any]:
    """Losses of the digits MLP (no dropout) trained by Linen and by nnx_bridge.jit."""
    from sklearn.datasets import load_digits

    print(f"  trajectory {steps} steps ...", flush=True)
    images, labels = load_digits(return_X_y=True)
    x_all, y_all = jnp.asarray(images / 16.0, jnp.float32), jnp.asarray(labels)
    twin = models.mlp(64, (64,), 10, 0.0, True)
    tx = optax.adam(3e-3)
    state = linen_loop.make_train_state(twin.linen_model(), jax.random.PRNGKey(0), x_all[:batch], tx)
    model, optimizer = loaded_twin(twin, state, tx)
    step, linen_step = nnx.jit(train_step), jax.jit(linen_loop.step)
    ctx, key = nnx.Context({"dropout": 0}), jax.random.PRNGKey(0)
    rng = np.random.default_rng(0)
    linen_losses, nnx_losses = [], []
    for _ in range(steps):
        idx = rng.choice(len(x_all), batch, replace=False)
        state, loss = linen_step(state, x_all[idx], y_all[idx], key)
        linen_losses.append(float(loss))
        nnx_losses.append(float(step(model, optimizer, ctx, x_all[idx], y_all[idx])))
    same = [np.float32(a).tobytes() for a in linen_losses] == [np.float32(b).tobytes() for b in nnx_losses]
    return {
        "linen": linen_losses,
        "nnx_bridge": nnx_losses,
        "bitwise_equal": same,
        "targets": [
            {
                "what": f"{steps}-step loss trajectory equals Linen's bit for bit",
                "bound": "equal",
                "median": float(same),
                "ok": same,
            }
        ],
    }


# ----------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------
def table(results: dict[str, tp.Any]) -> str:
    """The README table: ms per step and ratios to Linen, then the dispatch row and targets."""
    lines = ["| model | Linen ms/step | nnx_bridge.jit / Linen | flax.nnx.jit / Linen |", "|---|---|---|---|"]
    for name, per in results["train_step"]["models"].items():
        a, b = per["nnx_bridge_over_linen"], per["flax_nnx_over_linen"]
        lines.append(
            f"| {name} | {per['ms']['linen']['median']:.3f} | {a['median']:.3f}x "
            f"[{a['q1']:.2f}-{a['q3']:.2f}] | {b['median']:.2f}x [{b['q1']:.2f}-{b['q3']:.2f}] |"
        )
    d = results["dispatch"]
    lines += ["", f"| jitted no-op, {d['depth']} layers | µs/call | / jax.jit(dict) |", "|---|---|---|"]
    for s, label in (
        ("jax_jit_dict", "jax.jit, arrays as a dict"),
        ("nnx_bridge", "nnx_bridge.jit"),
        ("flax_nnx", "flax.nnx.jit"),
    ):
        r = {
            "jax_jit_dict": "1",
            "nnx_bridge": f"{d['nnx_bridge_over_jax_jit']['median']:.2f}",
            "flax_nnx": f"{d['flax_nnx_over_jax_jit']['median']:.1f}",
        }[s]
        lines.append(f"| {label} | {d['us'][s]['median']:.1f} | {r}x |")
    lines += ["", "| target | bound | measured | |", "|---|---|---|---|"]
    for t in all_targets(results):
        lines.append(f"| {t['what']} | {t['bound']} | {t['median']:.3f} | {'PASS' if t['ok'] else 'MISS'} |")
    return "\n".join(lines)


def all_targets(results: dict[str, tp.Any]) -> list[dict[str, tp.Any]]:
    """Every target of the run, in order."""
    return [
        t
        for key in ("train_step", "dispatch", "trajectory")
        if key in results
        for t in results[key]["targets"]
    ]


def run(quick: bool = False, out: pathlib.Path | None = None) -> dict[str, tp.Any]:
    """Runs the three measurements, prints the table, writes ``<out>/nnx_style.json`` and ``.md``."""
    from benchmarks import suite

    settings = suite.QUICK if quick else suite.FULL
    env = models.environment()
    print(
        f"NNX-style training ({settings.name}) on {env['device_kind']}, {env['cpu_count']} CPU cores, "
        f"load {env['load_avg_1min']:.1f}",
        flush=True,
    )
    results: dict[str, tp.Any] = {"environment": env}
    results["train_step"] = bench_train_step(settings.models, settings.step_rounds, settings.step_min_batch_s)
    results["dispatch"] = bench_dispatch(100, settings.overhead_rounds, settings.overhead_min_batch_s)
    results["trajectory"] = trajectory(50)
    text = table(results)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "nnx_style.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "nnx_style.md").write_text(text + "\n")
    return results


def main(argv: tp.Sequence[str] | None = None) -> dict[str, tp.Any]:
    """Parses the flags and runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models and few rounds")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/nnx_style"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run(args.quick, args.out)
    if not args.quick:  # the full run only
        figures.publish("nnx_style", results, wall_s=time.perf_counter() - started)
    return results


if __name__ == "__main__":
    main()
