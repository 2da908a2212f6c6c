"""Python overhead of the core, by depth, beside Flax NNX in the same process.

For a stack of N small Linear layers (kernel (4, 4), bias (4,)) this measures

1. ``module.partition()`` vs ``flax.nnx.split(model)``,
2. ``moduledef.merge(state)`` vs ``flax.nnx.merge(graphdef, state)``,
   (and, when Equinox is installed, ``equinox.partition``/``combine`` of an
   Equinox twin),
3. ``nnx_bridge.to_variables(state)`` and ``nnx_bridge.from_variables(variables)``,
4. the dispatch cost of an already-compiled `jax.jit` function (trivial body)
   called with a State, with the equivalent plain dict ``{path: array}``, and
   with Linen-style nested variables,

timing each group of callables interleaved (see `benchmarks.timing`), and
checks the depth-100 targets of the core issues: partition >= 15x faster than
``nnx.split``, merge >= 10x faster than ``nnx.merge`` (issue 12, with merge's
Variable-type checks), a State argument <= 1.2x the dispatch cost of a plain
dict. It also times partition and merge per Variable in a graph of 100,000
Variables (50,000 two-Variable modules in a list) and a 10,000-deep chain of
modules (``--large``).

Run from the repository root::

    python -m benchmarks.core_overhead                 # depths 1 10 100 1000
    python -m benchmarks.core_overhead --depths 100 --rounds 60 --profile
    python -m benchmarks.core_overhead --layer nn        # nnx_bridge.nn.Linear layers
    python -m benchmarks.core_overhead --depths 100 --large   # also 100,000 Variables

It prints tables and writes ``<out>/core_overhead.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import sys
import time
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx as flax_nnx

import nnx_bridge as nnx
from benchmarks import figures
from benchmarks.models import environment
from benchmarks.timing import Timing, interleave, ratio

US = 1e6
TARGETS = {  # at TARGET_DEPTH: name -> (what, comparison, bound on the median ratio)
    "partition": ("partition speed-up over flax.nnx.split", ">=", 15.0),
    "merge": ("merge speed-up over flax.nnx.merge", ">=", 10.0),
    "dispatch": ("jit dispatch, State / plain dict", "<=", 1.2),
}
TARGET_DEPTH = 100
NOISY_IQR = 0.2  # a ratio whose IQR exceeds this fraction of its median is flagged


# ----------------------------------------------------------------------------------
# the models
# ----------------------------------------------------------------------------------
class Linear(nnx.Module):
    """A small dense layer: ``x @ kernel + bias``."""

    def __init__(self, din: int, dout: int, *, ctx: nnx.Context):
        self.kernel = nnx.Param(jax.random.normal(ctx.make_rng("params"), (din, dout)) / din**0.5)
        self.bias = nnx.Param(jnp.zeros((dout,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel.value + self.bias.value


def layer_class(name: str) -> type[nnx.Module]:
    """The nnx_bridge layer to stack: ``minimal`` (kernel and bias only, defined
    here) or ``nn`` (``nnx_bridge.nn.Linear``, with static fields like Flax's)."""
    if name == "minimal":
        return Linear
    from nnx_bridge.nn import Linear as NNLinear  # the standard-layer package

    return NNLinear


class Stack(nnx.Module):
    """`depth` Linear(4, 4) layers held in a list attribute."""

    def __init__(self, depth: int, *, ctx: nnx.Context, layer: type[nnx.Module] = Linear):
        self.layers = [layer(4, 4, ctx=ctx) for _ in range(depth)]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x


def equinox() -> tp.Any:
    """The ``equinox`` module, or None when it is not installed (it is an optional extra)."""
    try:
        import equinox as eqx
    except ImportError:
        return None
    return eqx


def equinox_stack(depth: int) -> tp.Any:
    """An Equinox twin of `Stack` (a module holding a list of ``eqx.nn.Linear(4, 4)``)."""
    eqx = equinox()

    class EqxStack(eqx.Module):  # type: ignore[misc, name-defined]
        layers: list[tp.Any]

    keys = jax.random.split(jax.random.PRNGKey(0), depth)
    return EqxStack([eqx.nn.Linear(4, 4, key=k) for k in keys])


class FlaxStack(flax_nnx.Module):
    """The Flax NNX twin of `Stack` (Flax 0.12 needs `nnx.List` for a list of modules)."""

    def __init__(self, depth: int, *, rngs: flax_nnx.Rngs):
        self.layers = flax_nnx.List([flax_nnx.Linear(4, 4, rngs=rngs) for _ in range(depth)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x


def _first_leaf_sum(tree: tp.Any) -> jax.Array:
    """Trivial work, so that a jitted call costs its dispatch only."""
    return jax.tree_util.tree_leaves(tree)[0].sum()


class Fixture:
    """Both models at one depth, their split forms, and the three jit inputs."""

    def __init__(self, depth: int, layer: type[nnx.Module] = Linear):
        self.depth = depth
        self.model = Stack(depth, ctx=nnx.Context(0), layer=layer)
        self.state, self.moduledef = self.model.partition()
        self.flax_model = FlaxStack(depth, rngs=flax_nnx.Rngs(0))
        self.graphdef, self.flax_state = flax_nnx.split(self.flax_model)
        self.variables = nnx.to_variables(self.state)
        self.plain = {path: variable.value for path, variable in self.state.items()}
        self.jitted = {kind: jax.jit(_first_leaf_sum) for kind in ("state", "dict", "linen")}
        eqx = equinox()
        self.eqx_model = equinox_stack(depth) if eqx is not None else None
        if eqx is not None:
            self.eqx_params, self.eqx_static = eqx.partition(self.eqx_model, eqx.is_array)
        self._check()

    def _check(self) -> None:
        n_ours = len(jax.tree_util.tree_leaves(self.state))
        n_flax = len(jax.tree_util.tree_leaves(self.flax_state))
        if n_ours != n_flax or n_ours != 2 * self.depth:
            raise AssertionError(f"depth {self.depth}: {n_ours} leaves vs Flax's {n_flax}.")
        if nnx.from_variables(self.variables).keys() != self.state.keys():
            raise AssertionError("to_variables/from_variables did not round-trip.")
        merged = self.moduledef.merge(self.state)
        if len(merged.layers) != self.depth:
            raise AssertionError("merge did not rebuild the stack.")

    def dispatch(self, kind: str) -> tp.Callable[[], tp.Any]:
        """A zero-argument callable making one blocking jitted call with input `kind`."""
        fn = self.jitted[kind]
        arg = {"state": self.state, "dict": self.plain, "linen": self.variables}[kind]
        return lambda: jax.block_until_ready(fn(arg))


# ----------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------
def measure(fx: Fixture, rounds: int, min_batch_s: float) -> dict[str, dict[str, Timing]]:
    """All four groups at one depth, each group timed interleaved."""
    state, moduledef, variables = fx.state, fx.moduledef, fx.variables
    graphdef, flax_state, flax_model = fx.graphdef, fx.flax_state, fx.flax_model
    groups = {
        "partition": {
            "nnx_bridge": fx.model.partition,
            "flax.nnx": lambda: flax_nnx.split(flax_model),
        },
        "merge": {
            "nnx_bridge": lambda: moduledef.merge(state),
            "flax.nnx": lambda: flax_nnx.merge(graphdef, flax_state),
        },
        "convert": {
            "to_variables": lambda: nnx.to_variables(state),
            "from_variables": lambda: nnx.from_variables(variables),
        },
        "dispatch": {kind: fx.dispatch(kind) for kind in ("state", "dict", "linen")},
    }
    eqx = equinox()
    if eqx is not None and fx.eqx_model is not None:
        groups["partition"]["equinox"] = lambda: eqx.partition(fx.eqx_model, eqx.is_array)
        groups["merge"]["equinox"] = lambda: eqx.combine(fx.eqx_params, fx.eqx_static)
    return {name: interleave(group, rounds=rounds, min_batch_s=min_batch_s) for name, group in groups.items()}


def summarise(depth: int, timings: dict[str, dict[str, Timing]]) -> dict[str, tp.Any]:
    """JSON-ready figures: µs per layer (per call for dispatch) and the ratios."""
    per_layer = US / depth
    out: dict[str, tp.Any] = {"depth": depth}
    for group, per in timings.items():
        scale = US if group == "dispatch" else per_layer
        out[group] = {
            name: {**t.summary.scaled(scale).to_json(), "calls_per_round": t.number}
            for name, t in per.items()
        }
    out["ratios"] = {
        "partition_flax_over_ours": ratio(
            timings["partition"]["flax.nnx"], timings["partition"]["nnx_bridge"]
        ).to_json(),
        "merge_flax_over_ours": ratio(timings["merge"]["flax.nnx"], timings["merge"]["nnx_bridge"]).to_json(),
        "dispatch_state_over_dict": ratio(
            timings["dispatch"]["state"], timings["dispatch"]["dict"]
        ).to_json(),
        "dispatch_linen_over_dict": ratio(
            timings["dispatch"]["linen"], timings["dispatch"]["dict"]
        ).to_json(),
    }
    for group in ("partition", "merge"):
        if "equinox" in timings[group]:
            out["ratios"][f"{group}_equinox_over_ours"] = ratio(
                timings[group]["equinox"], timings[group]["nnx_bridge"]
            ).to_json()
    return out


def check_targets(rows: list[dict[str, tp.Any]]) -> dict[str, dict[str, tp.Any]]:
    """PASS/MISS for each target at `TARGET_DEPTH`, from the round-by-round ratios."""
    row = next((r for r in rows if r["depth"] == TARGET_DEPTH), None)
    keys = {
        "partition": "partition_flax_over_ours",
        "merge": "merge_flax_over_ours",
        "dispatch": "dispatch_state_over_dict",
    }
    results = {}
    for name, (what, op, bound) in TARGETS.items():
        if row is None:
            results[name] = {"what": what, "target": f"{op} {bound}", "verdict": "NOT MEASURED"}
            continue
        r = row["ratios"][keys[name]]
        ok = r["median"] >= bound if op == ">=" else r["median"] <= bound
        results[name] = {
            "what": what,
            "target": f"{op} {bound}",
            "median": r["median"],
            "q1": r["q1"],
            "q3": r["q3"],
            "verdict": "PASS" if ok else "MISS",
        }
    return results


# ----------------------------------------------------------------------------------
# large graphs: 100,000 Variables, a 10,000-deep chain
# ----------------------------------------------------------------------------------
class Pair(nnx.Module):
    """Two scalar Params (numpy values: building 50,000 of them stays fast)."""

    def __init__(self, i: int):
        self.a = nnx.Param(np.float32(i))
        self.b = nnx.Param(np.float32(-i))


class Link(nnx.Module):
    """One link of a chain: a Param and, but for the last, the next link."""

    def __init__(self, i: int):
        self.w = nnx.Param(np.float32(i))


def large_graphs(n_modules: int = 50_000, depth: int = 10_000, repeats: int = 3) -> dict[str, tp.Any]:
    """Best-of-`repeats` partition/merge/update_state time per Variable of two large graphs."""
    wide = Stack(0, ctx=nnx.Context(0))
    wide.layers = [Pair(i) for i in range(n_modules)]
    root = node = Link(0)
    for i in range(1, depth):
        node.next = Link(i)
        node = node.next
    out: dict[str, tp.Any] = {}
    for name, model in (("wide_100k_variables", wide), ("chain_10k_deep", root)):
        state, moduledef = model.partition()
        n = len(state)
        best = {"partition": float("inf"), "merge": float("inf"), "update_state": float("inf")}
        jobs = (
            ("partition", model.partition),
            ("merge", functools.partial(moduledef.merge, state)),
            ("update_state", functools.partial(model.update_state, state)),
        )
        for _ in range(repeats):
            for what, fn in jobs:
                t0 = time.perf_counter()
                fn()
                best[what] = min(best[what], time.perf_counter() - t0)
        out[name] = {"variables": n, **{f"{k}_us_per_variable": v / n * US for k, v in best.items()}}
    return out


def print_large(large: dict[str, tp.Any]) -> None:
    """The large-graph figures, µs per Variable (best of a few runs)."""
    print("\nLarge graphs, µs per Variable (best of 3)")
    for name, row in large.items():
        print(
            f"  {name:<20} {row['variables']:>7} Variables | partition "
            f"{row['partition_us_per_variable']:6.2f} | merge {row['merge_us_per_variable']:6.2f} | "
            f"update_state {row['update_state_us_per_variable']:6.2f}"
        )


# ----------------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------------
def _cell(s: dict[str, float]) -> str:
    return f"{s['median']:9.3f} ±{s['iqr_pct']:3.0f}%"


def _ratio(s: dict[str, float]) -> str:
    return f"{s['median']:6.2f}x [{s['q1']:5.2f}-{s['q3']:5.2f}]"


def print_tables(rows: list[dict[str, tp.Any]]) -> None:
    """The figures as three tables (medians; ± is the IQR as % of the median)."""
    print(
        "\nPartition and merge, µs per layer (median ±IQR%), ratio = flax.nnx / nnx_bridge "
        "[IQR of round-by-round ratios]"
    )
    print(
        f"{'depth':>5} | {'partition':>15} {'nnx.split':>15} {'ratio':>21} | "
        f"{'merge':>15} {'nnx.merge':>15} {'ratio':>21}"
    )
    for r in rows:
        p, m, q = r["partition"], r["merge"], r["ratios"]
        print(
            f"{r['depth']:>5} | {_cell(p['nnx_bridge'])} {_cell(p['flax.nnx'])} "
            f"{_ratio(q['partition_flax_over_ours']):>21} | {_cell(m['nnx_bridge'])} "
            f"{_cell(m['flax.nnx'])} {_ratio(q['merge_flax_over_ours']):>21}"
        )
    if any("partition_equinox_over_ours" in r["ratios"] for r in rows):
        print("\nEquinox (optional extra), µs per layer, ratio = equinox / nnx_bridge")
        print(f"{'depth':>5} | {'eqx.partition':>15} {'ratio':>21} | {'eqx.combine':>15} {'ratio':>21}")
        for r in rows:
            q = r["ratios"]
            print(
                f"{r['depth']:>5} | {_cell(r['partition']['equinox'])} "
                f"{_ratio(q['partition_equinox_over_ours']):>21} | {_cell(r['merge']['equinox'])} "
                f"{_ratio(q['merge_equinox_over_ours']):>21}"
            )
    print("\nLinen layout conversion, µs per layer")
    print(f"{'depth':>5} | {'to_variables':>15} {'from_variables':>15}")
    for r in rows:
        c = r["convert"]
        print(f"{r['depth']:>5} | {_cell(c['to_variables'])} {_cell(c['from_variables'])}")
    print("\nCompiled jax.jit call (trivial body, blocking), µs per call")
    print(
        f"{'depth':>5} | {'State':>15} {'plain dict':>15} {'Linen vars':>15} | "
        f"{'State/dict':>21} {'Linen/dict':>21}"
    )
    for r in rows:
        d, q = r["dispatch"], r["ratios"]
        print(
            f"{r['depth']:>5} | {_cell(d['state'])} {_cell(d['dict'])} {_cell(d['linen'])} | "
            f"{_ratio(q['dispatch_state_over_dict']):>21} "
            f"{_ratio(q['dispatch_linen_over_dict']):>21}"
        )


def print_targets(targets: dict[str, dict[str, tp.Any]]) -> None:
    """One PASS/MISS line per depth-100 target."""
    print(f"\nTargets at depth {TARGET_DEPTH}:")
    for t in targets.values():
        got = f"{t['median']:.2f}x [IQR {t['q1']:.2f}-{t['q3']:.2f}]" if "median" in t else "-"
        noisy = "median" in t and (t["q3"] - t["q1"]) > NOISY_IQR * t["median"]
        note = "  (noisy: wide IQR; rerun on an idle machine)" if noisy else ""
        print(f"  {t['verdict']:<4}  {t['what']:<42} {t['target']:>7}x   measured {got}{note}")


# ----------------------------------------------------------------------------------
# profiling (optional)
# ----------------------------------------------------------------------------------
def profile(fx: Fixture, calls: int, top: int) -> None:
    """cProfile of nnx_bridge's partition, merge and State dispatch at one depth."""
    jobs = {
        "partition": fx.model.partition,
        "merge": lambda: fx.moduledef.merge(fx.state),
        "dispatch(State)": fx.dispatch("state"),
    }
    for name, fn in jobs.items():
        fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
        print(f"\n--- cProfile: {name} at depth {fx.depth}, {calls} calls, by own time ---")
        pstats.Stats(prof, stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(top)


# ----------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------
def parse_args(argv: tp.Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line flags."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--depths", type=int, nargs="+", default=[1, 10, 100, 1000], help="numbers of Linear layers"
    )
    p.add_argument(
        "--rounds", type=int, default=40, help="interleaved rounds per comparison (samples per median)"
    )
    p.add_argument(
        "--min-batch-ms",
        type=float,
        default=5.0,
        help="each sample times a batch of calls lasting at least this long",
    )
    p.add_argument(
        "--layer",
        choices=["minimal", "nn"],
        default="minimal",
        help="nnx_bridge layer: a kernel+bias Linear, or nnx_bridge.nn.Linear "
        "(static fields too, like flax.nnx.Linear); Flax always uses nnx.Linear",
    )
    p.add_argument(
        "--out",
        default="results",
        help="folder for core_overhead.json (core_overhead_nn.json with --layer nn)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help=f"also cProfile nnx_bridge at depth {TARGET_DEPTH} (or the largest depth)",
    )
    p.add_argument("--profile-calls", type=int, default=200, help="calls per profiled operation")
    p.add_argument(
        "--large",
        action="store_true",
        help="also time partition/merge per Variable at 100,000 Variables and a 10,000-deep chain",
    )
    return p.parse_args(argv)


def main(argv: tp.Sequence[str] | None = None) -> dict[str, tp.Any]:
    """Runs the benchmark, prints the tables and targets, writes the JSON."""
    args = parse_args(argv)
    env = environment()
    print(
        f"core_overhead on {env['device']} ({env['cpu_count']} CPUs), jax {env['jax']}, "
        f"flax {env['flax']}; layer {args.layer}; {args.rounds} interleaved rounds per comparison, "
        f"batches >= {args.min_batch_ms} ms; load average {env['load_avg_1min']:.2f}"
    )
    start = time.perf_counter()
    rows, fixtures = [], {}
    for depth in args.depths:
        t0 = time.perf_counter()
        fx = fixtures[depth] = Fixture(depth, layer_class(args.layer))
        rows.append(summarise(depth, measure(fx, args.rounds, args.min_batch_ms / 1e3)))
        print(f"  depth {depth:>4}: {time.perf_counter() - t0:5.1f} s", flush=True)
    print_tables(rows)
    targets = check_targets(rows)
    print_targets(targets)
    result = {
        "benchmark": "core_overhead",
        "environment": env,
        "settings": {
            "rounds": args.rounds,
            "min_batch_ms": args.min_batch_ms,
            "depths": args.depths,
            "layer": args.layer,
        },
        "units": {"partition": "µs/layer", "merge": "µs/layer", "convert": "µs/layer", "dispatch": "µs/call"},
        "rows": rows,
        "targets": targets,
        "wall_s": time.perf_counter() - start,
    }
    if args.large:
        result["large"] = large_graphs()
        print_large(result["large"])
    os.makedirs(args.out, exist_ok=True)
    suffix = "" if args.layer == "minimal" else f"_{args.layer}"
    path = os.path.join(args.out, f"core_overhead{suffix}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {path} ({result['wall_s']:.0f} s)")
    if args.layer == "nn" and vars(args) == {
        **vars(parse_args([])),
        "layer": "nn",
        "out": args.out,
        "profile": args.profile,
    }:  # the published run
        figures.publish("core_overhead", result, wall_s=result["wall_s"])
    if args.profile:
        depth = TARGET_DEPTH if TARGET_DEPTH in fixtures else max(fixtures)
        profile(fixtures[depth], args.profile_calls, top=18)
    return result


if __name__ == "__main__":
    main()
