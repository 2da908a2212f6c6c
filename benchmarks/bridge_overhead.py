"""What the Linen bridge costs, beside the Linen twin in the same process.

For each model of `benchmarks.models` (twins with identical variables) this
measures, interleaved (see `benchmarks.timing`), the Linen module, the
nnx_bridge module through ``nnx_bridge.to_linen`` and, for comparison, the
Flax NNX twin through Flax's own ``flax.nnx.bridge.to_linen``:

1. **trace + lower** of the jitted train step (`benchmarks.linen_loop.step`
   in a TrainState): a fresh function object and a fresh ``jax.jit`` per
   sample, so JAX's tracing and lowering caches never hit (the bridge's own
   per-configuration structure cache stays warm, as in a real process). The
   trace alone is recorded too. Target: bridge <= 1.1x Linen.
2. **eager** (un-jitted) ``model.apply``: training mode (``mutable=
   ["batch_stats"]``, dropout RNG) and evaluation mode. Target: <= 1.2x Linen.
3. **steady** time of the compiled train step (and the NNX-style step over
   States, for information). Target for the tiny MLP, where dispatch overhead
   dominates: <= 1.1x Linen.
4. **compiled-program identity**: the optimized HLO of the jitted train step,
   bridge vs Linen: op counts by kind, ``cost_analysis()`` flops and bytes,
   ``memory_analysis()``, and the HLO text with debug metadata removed.

Ratios are per round (both sides timed back to back) and summarised as the
median with the interquartile range. It prints tables with PASS/MISS per
target and writes ``<out>/bridge_overhead.json``. ``--profile`` adds a
cProfile of the bridge's trace and eager apply, grouped by package.

Run from the repository root::

    python -m benchmarks.bridge_overhead
    python -m benchmarks.bridge_overhead --models tiny_mlp --profile
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import dataclasses
import difflib
import functools
import json
import pathlib
import pstats
import re
import time
import typing as tp

import jax
import optax

from benchmarks import figures, linen_loop, models
from benchmarks.timing import Summary, Timing, interleave, ratio

LINEN, BRIDGE, FLAX, NNX_STYLE = "linen", "bridge", "flax_bridge", "nnx_style"
LABELS = {LINEN: "Linen", BRIDGE: "nnx_bridge", FLAX: "flax.nnx.bridge", NNX_STYLE: "NNX-style"}
TARGETS = {  # measurement -> (what, bound on the median ratio bridge / Linen)
    "trace_lower": ("trace+lower of the jitted train step", 1.1),
    "eager": ("eager (un-jitted) apply", 1.2),
    "steady": ("steady jitted train step, tiny MLP", 1.1),
}
TWINS: dict[str, tp.Callable[[], models.Twin]] = {
    "digits_mlp": models.digits_mlp,
    "tiny_mlp": models.tiny_mlp,
    "cnn": models.cnn,
    "transformer": models.transformer,
}
MS = 1e3


# ----------------------------------------------------------------------------------
# one model in every style
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    """A twin's Linen-API modules, their variables and TrainStates, and one batch."""

    twin: models.Twin
    x: jax.Array
    y: jax.Array
    key: jax.Array
    modules: dict[str, tp.Any]
    variables: dict[str, tp.Any]
    states: dict[str, linen_loop.TrainState]
    tx: optax.GradientTransformation

    @classmethod
    def make(cls, twin: models.Twin, batch: int, styles: tp.Sequence[str]) -> "Setup":
        """Initialises every style from the same key and batch."""
        x, y = twin.batch(jax.random.PRNGKey(0), batch)
        build = {LINEN: twin.linen_model, BRIDGE: twin.bridged_linen, FLAX: twin.flax_bridged_linen}
        modules = {s: build[s]() for s in styles}
        tx = optax.adam(1e-3)
        variables = {s: m.init(jax.random.PRNGKey(1), x, train=False) for s, m in modules.items()}
        states = {s: linen_loop.make_train_state(m, jax.random.PRNGKey(1), x, tx) for s, m in modules.items()}
        return cls(twin, x, y, jax.random.PRNGKey(2), modules, variables, states, tx)

    def step_args(self, style: str) -> tuple[tp.Any, ...]:
        """The arguments of `linen_loop.step` for `style`."""
        return (self.states[style], self.x, self.y, self.key)


def _fresh_step(*args: tp.Any) -> tp.Any:
    """`linen_loop.step` behind a new function object, so that no JAX cache knows it."""

    def step(*a: tp.Any) -> tp.Any:
        return linen_loop.step(*a)

    return jax.jit(step).trace(*args)


# ----------------------------------------------------------------------------------
# 1. trace and lower
# ----------------------------------------------------------------------------------
def measure_trace_lower(setup: Setup, rounds: int) -> dict[str, dict[str, Timing]]:
    """``{"trace": {style: Timing}, "trace_lower": {style: Timing}}``, one sample per round.

    Each call traces and lowers once; the trace part is recorded on the side,
    round by round, so both figures come from the same interleaved calls.
    """
    trace_samples: dict[str, list[float]] = {}

    def sampler(style: str) -> tp.Callable[[], tp.Any]:
        args = setup.step_args(style)
        samples = trace_samples.setdefault(style, [])

        def call() -> tp.Any:
            start = time.perf_counter()
            traced = _fresh_step(*args)
            samples.append(time.perf_counter() - start)
            return traced.lower()

        return call

    totals = interleave({s: sampler(s) for s in setup.modules}, rounds=rounds, min_batch_s=0.0)
    traces = {s: Timing(s, tuple(trace_samples[s][-rounds:]), 1) for s in setup.modules}
    return {"trace": traces, "trace_lower": totals}


# ----------------------------------------------------------------------------------
# 2. eager apply
# ----------------------------------------------------------------------------------
def eager_call(setup: Setup, style: str, mode: str) -> tp.Callable[[], tp.Any]:
    """One blocking un-jitted ``apply`` in training or evaluation mode."""
    model, variables, x, key = setup.modules[style], setup.variables[style], setup.x, setup.key
    if mode == "train":
        mutable = ["batch_stats"] if "batch_stats" in variables else False
        return lambda: jax.block_until_ready(
            model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=mutable)
        )
    return lambda: jax.block_until_ready(model.apply(variables, x, train=False))


def measure_eager(setup: Setup, rounds: int, min_batch_s: float) -> dict[str, dict[str, Timing]]:
    """``{mode: {style: Timing}}`` for modes ``train`` and ``eval``."""
    return {
        mode: interleave(
            {s: eager_call(setup, s, mode) for s in setup.modules}, rounds=rounds, min_batch_s=min_batch_s
        )
        for mode in ("train", "eval")
    }


# ----------------------------------------------------------------------------------
# 3. steady step, and 4. the compiled programs
# ----------------------------------------------------------------------------------
def compile_steps(setup: Setup) -> dict[str, tp.Any]:
    """The compiled train step of every style, plus the NNX-style step over States."""
    compiled = {s: jax.jit(linen_loop.step).lower(*setup.step_args(s)).compile() for s in setup.modules}
    state, moduledef = models.nnx_init(setup.twin.bridge_module(jax.random.PRNGKey(1)), setup.tx)
    nnx_step = functools.partial(models.nnx_train_step, moduledef, setup.tx)
    compiled[NNX_STYLE] = jax.jit(nnx_step).lower(state, setup.x, setup.y, setup.key).compile()
    setup.states[NNX_STYLE] = state  # type: ignore[assignment]
    return compiled


def measure_steady(
    setup: Setup, compiled: dict[str, tp.Any], rounds: int, min_batch_s: float
) -> dict[str, Timing]:
    """Blocking calls of each compiled step with fixed inputs, interleaved."""
    args = {s: setup.step_args(s) for s in compiled}
    calls = {s: (lambda c=c, a=args[s]: jax.block_until_ready(c(*a))) for s, c in compiled.items()}
    return interleave(calls, rounds=rounds, min_batch_s=min_batch_s)


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%[\w.\-]+\s")
_METADATA = re.compile(r",?\s*metadata=\{[^}]*\}")


def hlo_computations(text: str) -> list[str]:
    """The computations of an HLO module's text, without debug metadata.

    Drops the module header, the file/function/stack-frame tables and every
    ``metadata={...}`` (source lines and op names, which name the Python
    functions and so always differ between styles).
    """
    lines, inside = [], False
    for line in text.splitlines():
        if not inside and _COMPUTATION.match(line):
            inside = True
        if inside:
            lines.append(_METADATA.sub("", line))
            if line.startswith("}"):
                inside = False
    return lines


_NAME = re.compile(r"%?\b([A-Za-z_][\w\-]*(?:\.\d+)+)\b")
_CONSTANT = re.compile(r"constant\([^)]*\)")


def canonical_names(lines: list[str]) -> list[str]:
    """`lines` with every numbered name (``%add.40``, ``param_0.43``) replaced by ``%v<n>``.

    Names are numbered in order of first appearance, so two programs that
    differ only in how instructions and computations are numbered
    (``%region_16.30`` vs ``%region_17.31``) become equal.
    """
    names: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        return names.setdefault(match.group(1), f"%v{len(names)}")

    return [_NAME.sub(rename, line) for line in lines]


def without_constants(lines: list[str]) -> list[str]:
    """`lines` with the literal of every ``constant(...)`` blanked out."""
    return [_CONSTANT.sub("constant(_)", line) for line in lines]


def hlo_op_counts(text: str) -> dict[str, int]:
    """How many instructions of each kind (``add``, ``dot``, ``fusion`` ...), fusions included."""
    counts: collections.Counter[str] = collections.Counter()
    for line in hlo_computations(text):
        match = _INSTRUCTION.match(line)
        if match:
            counts[match.group(1)] += 1
    return dict(sorted(counts.items()))


def program_facts(compiled: tp.Any) -> dict[str, tp.Any]:
    """Op counts, cost analysis and memory analysis of one compiled program."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    memory_fields = (
        "peak_memory_in_bytes",
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    return {
        "ops": hlo_op_counts(compiled.as_text()),
        "cost": {
            k: float(v)
            for k, v in sorted((cost or {}).items())
            if k in ("flops", "bytes accessed", "transcendentals", "optimal_seconds")
        },
        "memory": {f: int(getattr(memory, f)) for f in memory_fields if hasattr(memory, f)},
    }


def compare_programs(reference: tp.Any, other: tp.Any) -> dict[str, tp.Any]:
    """Whether two compiled programs are the same, and where they differ if not."""
    ref_text, other_text = reference.as_text(), other.as_text()
    ref, oth = program_facts(reference), program_facts(other)
    ref_cost = reference.cost_analysis()
    oth_cost = other.cost_analysis()
    ref_lines, other_lines = hlo_computations(ref_text), hlo_computations(other_text)
    diff = [
        line
        for line in difflib.unified_diff(
            canonical_names(ref_lines), canonical_names(other_lines), n=0, lineterm=""
        )
        if not line.startswith(("---", "+++"))
    ]
    op_delta = {
        k: oth["ops"].get(k, 0) - ref["ops"].get(k, 0)
        for k in sorted(set(ref["ops"]) | set(oth["ops"]))
        if oth["ops"].get(k, 0) != ref["ops"].get(k, 0)
    }
    return {
        "ops_identical": ref["ops"] == oth["ops"],
        "cost_identical": ref_cost == oth_cost,
        "memory_identical": ref["memory"] == oth["memory"],
        "text_identical": ref_lines == other_lines,
        "text_identical_up_to_names": canonical_names(ref_lines) == canonical_names(other_lines),
        "text_identical_up_to_names_and_constants": (
            without_constants(canonical_names(ref_lines)) == without_constants(canonical_names(other_lines))
        ),
        "op_count_delta": op_delta,
        "diff_lines": len(diff),
        "diff_head": diff[:20],
        "reference": ref,
        "other": oth,
    }


# ----------------------------------------------------------------------------------
# profiling (where the bridge's Python time goes)
# ----------------------------------------------------------------------------------
def profile_bridge(setup: Setup, calls: int = 20, top: int = 12) -> dict[str, tp.Any]:
    """cProfile of the bridge's trace+lower and eager train apply.

    For each: the time per call, the self time by package, the time inside
    ``ToLinen.__call__`` split into the wrapped module's own method
    (``_call_method``: the layers' arithmetic, which Linen pays too) and the
    bridge machinery around it (merge, checks, partition, write-back), and the
    heaviest nnx_bridge functions outside the layers (``nnx_bridge/nn``).
    """
    out = {}
    work = {
        "trace_lower": lambda: _fresh_step(*setup.step_args(BRIDGE)).lower(),
        "eager_train": eager_call(setup, BRIDGE, "train"),
    }
    for name, fn in work.items():
        fn()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            fn()
        profiler.disable()
        rows = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        total = sum(row[2] for row in rows.values())
        by_package: collections.Counter[str] = collections.Counter()
        cum: dict[str, float] = {}
        ours = []
        for (filename, line, function), (_, ncalls, tottime, cumtime, _) in rows.items():
            by_package[_package(filename)] += tottime
            if filename.endswith("nnx_bridge/linen/to_linen.py"):
                cum[function] = cum.get(function, 0.0) + cumtime
            if "nnx_bridge" in filename and "nnx_bridge/nn/" not in filename:
                ours.append((cumtime, tottime, ncalls, f"{_short(filename)}:{line}({function})"))
        ours.sort(reverse=True)
        wrapper, method = cum.get("__call__", 0.0), cum.get("_call_method", 0.0)
        out[name] = {
            "calls": calls,
            "ms_per_call": MS * total / calls,
            "to_linen_call_ms": MS * wrapper / calls,
            "module_method_ms": MS * method / calls,
            "bridge_machinery_ms": MS * (wrapper - method) / calls,
            "self_time_share_by_package": {k: v / total for k, v in by_package.most_common()},
            "nnx_bridge_functions": [
                {
                    "function": f,
                    "cum_ms_per_call": MS * c / calls,
                    "self_ms_per_call": MS * t / calls,
                    "calls_per_call": n / calls,
                }
                for c, t, n, f in ours[:top]
            ],
        }
    return out


def _package(filename: str) -> str:
    for name in ("nnx_bridge", "flax", "jax", "jaxlib", "optax", "benchmarks"):
        if f"/{name}/" in filename:
            return name
    return "python/other"


def _short(filename: str) -> str:
    index = filename.find("nnx_bridge/")
    return filename[index:] if index >= 0 else filename


# ----------------------------------------------------------------------------------
# printing and verdicts
# ----------------------------------------------------------------------------------
def _ms(t: Timing) -> str:
    s = t.summary.scaled(MS)
    return f"{s.median:8.2f} ±{s.iqr_pct:3.0f}%"


def _ratio(r: Summary) -> str:
    return f"{r.median:5.3f} [{r.q1:.2f}-{r.q3:.2f}]"


def timing_table(
    title: str, rows: dict[str, dict[str, Timing]], styles: tp.Sequence[str], bound: float | None
) -> list[str]:
    """One table: per row, ms per call of each style and the ratios to Linen."""
    others = [s for s in styles if s != LINEN]
    head = f"{title:<24}" + "".join(f"{LABELS[s] + ' ms':>20}" for s in styles)
    head += "".join(f"{LABELS[s] + ' / Linen':>26}" for s in others)
    lines = [head, "-" * len(head)]
    for row, timings in rows.items():
        line = f"{row:<24}" + "".join(f"{_ms(timings[s]):>20}" for s in styles if s in timings)
        for s in others:
            if s in timings:
                r = ratio(timings[s], timings[LINEN])
                mark = ""
                if bound is not None and s == BRIDGE:
                    mark = " ok" if r.median <= bound else " !!"
                line += f"{_ratio(r) + mark:>26}"
        lines.append(line)
    return lines


def verdicts(results: dict[str, tp.Any]) -> dict[str, dict[str, tp.Any]]:
    """PASS/MISS per target: the worst median ratio bridge / Linen over the rows it covers."""
    out = {}
    for key, (what, bound) in TARGETS.items():
        ratios = {row: r for row, r in results["ratios"][key].items()}
        if not ratios:
            out[key] = {"what": what, "target": f"<= {bound}", "verdict": "NOT MEASURED"}
            continue
        worst_row = max(ratios, key=lambda r: ratios[r]["median"])
        worst = ratios[worst_row]["median"]
        out[key] = {
            "what": what,
            "target": f"<= {bound}",
            "worst_row": worst_row,
            "worst_median": worst,
            "verdict": "PASS" if worst <= bound else "MISS",
        }
    programs = results["programs"]
    same = all(p[BRIDGE]["ops_identical"] and p[BRIDGE]["cost_identical"] for p in programs.values())
    out["hlo"] = {
        "what": "optimized HLO of the train step, bridge vs Linen (op counts and cost)",
        "target": "identical",
        "verdict": "PASS" if same else "MISS" if programs else "NOT MEASURED",
    }
    return out


# ----------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------
def parse_args(argv: tp.Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line flags."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--models", nargs="+", choices=sorted(TWINS), default=list(TWINS), help="models to measure"
    )
    p.add_argument("--batch-size", type=int, default=32, help="examples per call")
    p.add_argument("--trace-rounds", type=int, default=10, help="rounds of trace+lower")
    p.add_argument("--eager-rounds", type=int, default=15, help="rounds of eager apply")
    p.add_argument("--steady-rounds", type=int, default=40, help="rounds of the steady step")
    p.add_argument("--no-flax", action="store_true", help="skip Flax's own bridge")
    p.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the bridge's trace+lower and eager apply (first model)",
    )
    p.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("results"), help="folder for bridge_overhead.json"
    )
    return p.parse_args(argv)


def main(argv: tp.Sequence[str] | None = None) -> dict[str, tp.Any]:
    """Measures, prints the tables and verdicts, writes the JSON."""
    args = parse_args(argv)
    styles = [LINEN, BRIDGE] + ([] if args.no_flax else [FLAX])
    env = models.environment()
    print(
        f"bridge overhead on {env['device']} ({env['cpu_count']} CPUs, load {env['load_avg_1min']:.1f}), "
        f"jax {env['jax']}, flax {env['flax']}, batch {args.batch_size}"
    )
    started = time.perf_counter()
    timings: dict[str, dict[str, dict[str, Timing]]] = {
        "trace": {},
        "trace_lower": {},
        "eager_train": {},
        "eager_eval": {},
        "steady": {},
    }
    programs: dict[str, dict[str, tp.Any]] = {}
    profiles: dict[str, tp.Any] = {}
    for name in args.models:
        twin = TWINS[name]()
        setup = Setup.make(twin, args.batch_size, styles)
        print(f"  {name}: trace+lower ...", end="", flush=True)
        traced = measure_trace_lower(setup, args.trace_rounds)
        timings["trace"][name], timings["trace_lower"][name] = traced["trace"], traced["trace_lower"]
        print(" eager ...", end="", flush=True)
        eager = measure_eager(setup, args.eager_rounds, min_batch_s=0.02)
        timings["eager_train"][name], timings["eager_eval"][name] = eager["train"], eager["eval"]
        print(" compile ...", end="", flush=True)
        compiled = compile_steps(setup)
        programs[name] = {s: compare_programs(compiled[LINEN], c) for s, c in compiled.items() if s != LINEN}
        print(" steady ...", end="", flush=True)
        timings["steady"][name] = measure_steady(setup, compiled, args.steady_rounds, min_batch_s=0.02)
        if args.profile and not profiles:
            print(" profile ...", end="", flush=True)
            profiles = {"model": name, **profile_bridge(setup)}
        print(" done", flush=True)

    ratios = {
        "trace_lower": {m: ratio(t[BRIDGE], t[LINEN]).to_json() for m, t in timings["trace_lower"].items()},
        "eager": {
            f"{m} ({mode})": ratio(t[BRIDGE], t[LINEN]).to_json()
            for mode in ("train", "eval")
            for m, t in timings[f"eager_{mode}"].items()
        },
        "steady": {
            m: ratio(t[BRIDGE], t[LINEN]).to_json() for m, t in timings["steady"].items() if m == "tiny_mlp"
        },
    }
    results: dict[str, tp.Any] = {"ratios": ratios, "programs": programs}
    checks = verdicts(results)

    print()
    for title, key, bound in (("trace (ms)", "trace", None), ("trace+lower (ms)", "trace_lower", 1.1)):
        print("\n".join(timing_table(title, timings[key], styles, bound)), end="\n\n")
    eager_rows = {
        f"{m} ({mode})": t for mode in ("train", "eval") for m, t in timings[f"eager_{mode}"].items()
    }
    print("\n".join(timing_table("eager apply (ms)", eager_rows, styles, 1.2)), end="\n\n")
    steady_rows = {m: t for m, t in timings["steady"].items()}
    print("\n".join(timing_table("steady step (ms)", steady_rows, styles + [NNX_STYLE], None)), end="\n\n")
    print(
        f"{'compiled train step vs Linen':<28}{'ops':>6}{'cost':>6}{'memory':>8}{'text':>8}"
        f"{'flops':>14}{'bytes':>14}  op-count delta"
    )
    for name, per in programs.items():
        for style, cmp in per.items():
            yes = lambda b: "same" if b else "DIFF"  # noqa: E731
            facts = cmp["other"]["cost"]
            print(
                f"{name + ' ' + LABELS[style]:<28}"
                f"{yes(cmp['ops_identical']):>6}{yes(cmp['cost_identical']):>6}"
                f"{yes(cmp['memory_identical']):>8}{_text(cmp):>8}"
                f"{facts.get('flops', float('nan')):>14.0f}{facts.get('bytes accessed', float('nan')):>14.0f}"
                f"  {cmp['op_count_delta'] or ''}"
            )
    print()
    for check in checks.values():
        worst = f" (worst {check['worst_row']}: {check['worst_median']:.3f}x)" if "worst_row" in check else ""
        print(f"{check['verdict']:<5} {check['what']}: target {check['target']}{worst}")
    if profiles:
        print_profile(profiles)

    payload = {
        "benchmark": "bridge_overhead",
        "environment": env,
        "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
        "units": "ms per call",
        "timings": {
            kind: {
                row: {
                    s: {**t.summary.scaled(MS).to_json(), "calls_per_round": t.number} for s, t in per.items()
                }
                for row, per in rows.items()
            }
            for kind, rows in timings.items()
        },
        "ratios_to_linen": {
            kind: {
                row: {s: ratio(t[s], t[LINEN]).to_json() for s in t if s != LINEN} for row, t in rows.items()
            }
            for kind, rows in timings.items()
        },
        "programs": programs,
        "targets": checks,
        "profile": profiles,
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bridge_overhead.json"
    path.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {path} ({payload['seconds']:.0f} s)")
    if {**vars(args), "out": None, "profile": None} == {**vars(parse_args([])), "out": None, "profile": None}:
        figures.publish("bridge_overhead", payload, wall_s=payload["seconds"])  # the default run only
    return payload


def _text(cmp: dict[str, tp.Any]) -> str:
    if cmp["text_identical"]:
        return "same"
    if cmp["text_identical_up_to_names"]:
        return "names"
    return "consts" if cmp["text_identical_up_to_names_and_constants"] else "DIFF"


def print_profile(profiles: dict[str, tp.Any]) -> None:
    """The profile summary: where the bridge's time goes."""
    print(f"\ncProfile of the bridge ({profiles['model']}; times under the profiler, per call):")
    for name in ("trace_lower", "eager_train"):
        p = profiles[name]
        shares = ", ".join(
            f"{k} {100 * v:.0f}%" for k, v in p["self_time_share_by_package"].items() if v >= 0.005
        )
        print(
            f"  {name}: {p['ms_per_call']:.1f} ms; inside ToLinen.__call__ {p['to_linen_call_ms']:.2f} ms "
            f"= module's own method {p['module_method_ms']:.2f} ms + bridge machinery "
            f"{p['bridge_machinery_ms']:.2f} ms"
        )
        print(f"    self time by package: {shares}")
        for row in p["nnx_bridge_functions"][:8]:
            print(
                f"    {row['cum_ms_per_call']:7.2f} ms cum {row['self_ms_per_call']:6.2f} ms self "
                f"{row['calls_per_call']:6.1f}x  {row['function']}"
            )


if __name__ == "__main__":
    main()
