"""Interleaved timing of several callables, shared by the benchmarks.

Timings on a small shared machine drift by tens of percent from one moment to
the next. Comparing two styles fairly therefore means timing them *together*:
each round runs every callable once (a batch of calls), rotating which one goes
first, and the figures reported are medians over many rounds with their spread.
Ratios are taken round by round (both sides of a ratio saw the same machine
state) and then summarised the same way.

Example:
    >>> from benchmarks.timing import interleave, ratio
    >>> stats = interleave({"a": lambda: sum(range(100)), "b": lambda: sum(range(10))},
    ...                    rounds=5, min_batch_s=1e-4)
    >>> sorted(stats), stats["a"].rounds
    (['a', 'b'], 5)
    >>> ratio(stats["a"], stats["b"]).median > 1.0
    True
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
import typing as tp


@dataclasses.dataclass(frozen=True)
class Summary:
    """Median and spread of a list of samples (seconds per call, or a ratio).

    ``q1``/``q3`` are the quartiles, ``low``/``high`` the extremes.
    """

    median: float
    q1: float
    q3: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, samples: tp.Sequence[float]) -> "Summary":
        """Summarises `samples` (at least one)."""
        if not samples:
            raise ValueError("Summary.of needs at least one sample.")
        ordered = sorted(samples)
        if len(ordered) > 1:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(statistics.median(ordered), q1, q3, ordered[0], ordered[-1], len(ordered))

    @property
    def iqr_pct(self) -> float:
        """The interquartile range as a percentage of the median."""
        return 100.0 * (self.q3 - self.q1) / self.median if self.median else float("nan")

    def scaled(self, factor: float) -> "Summary":
        """The same summary with every figure multiplied by `factor` (e.g. to µs)."""
        return Summary(
            self.median * factor,
            self.q1 * factor,
            self.q3 * factor,
            self.low * factor,
            self.high * factor,
            self.rounds,
        )

    def to_json(self) -> dict[str, float]:
        """A plain dict for JSON output."""
        return {**dataclasses.asdict(self), "iqr_pct": self.iqr_pct}


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call times of one callable: one sample (seconds per call) per round."""

    name: str
    samples: tuple[float, ...]
    number: int  # calls per round

    @property
    def summary(self) -> Summary:
        """Median and spread of the per-call time, in seconds."""
        return Summary.of(self.samples)

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return self.summary.median

    @property
    def rounds(self) -> int:
        """How many rounds were timed."""
        return len(self.samples)


def calibrate(fn: tp.Callable[[], tp.Any], min_batch_s: float) -> int:
    """How many calls of `fn` take at least `min_batch_s` seconds (1, 2, 5, 10, 20, ...)."""
    number, base = 1, 1
    steps = (1, 2, 5)
    step = 0
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - start >= min_batch_s:
            return number
        step += 1
        if step == len(steps):
            step, base = 0, base * 10
        number = steps[step] * base


def interleave(
    callables: tp.Mapping[str, tp.Callable[[], tp.Any]],
    *,
    rounds: int = 30,
    min_batch_s: float = 5e-3,
    warmup: int = 1,
    disable_gc: bool = True,
    number: int | None = None,
    on_round: tp.Callable[[int], tp.Any] | None = None,
) -> dict[str, Timing]:
    """Times `callables` together, round by round, rotating which goes first.

    Args:
        callables: name -> zero-argument callable. Each should block on its own
            results (e.g. with `jax.block_until_ready`) when it launches device work.
        rounds: how many samples to take of each callable.
        min_batch_s: each sample times a batch of calls lasting at least this
            long (the batch size is calibrated per callable, once).
        warmup: untimed calls of each callable before calibration.
        number: calls per batch for every callable, instead of calibrating
            (``number=1, warmup=0`` calls each callable exactly `rounds` times,
            for work too slow to repeat, such as compiling).
        disable_gc: switch Python's garbage collector off while a batch runs
            (as `timeit` does) and free the batch's young garbage after it, so
            that no callable pays for a full collection triggered by another.
        on_round: called with the number of rounds done after each round,
            outside the timed batches (e.g. to advance a progress bar).

    Returns:
        name -> Timing, in the order of `callables`.
    """
    names = list(callables)
    if not names:
        raise ValueError("interleave needs at least one callable.")
    if rounds < 1:
        raise ValueError(f"interleave: rounds must be >= 1; found {rounds}.")
    for name in names:
        for _ in range(warmup):
            callables[name]()
    if number is not None and number < 1:
        raise ValueError(f"interleave: number must be >= 1; found {number}.")
    numbers = {name: number or calibrate(callables[name], min_batch_s) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn, number = callables[name], numbers[name]
                if disable_gc:
                    gc.disable()
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                elapsed = time.perf_counter() - start
                if disable_gc:
                    gc.collect(0)  # the batch's cyclic garbage is all young: cheap to free
                    if gc_was_enabled:
                        gc.enable()
                samples[name].append(elapsed / number)
            if on_round is not None:
                on_round(r + 1)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(name, tuple(samples[name]), numbers[name]) for name in names}


def compile_split(jitted: tp.Any, *args: tp.Any) -> tuple[tp.Any, dict[str, float]]:
    """Traces, lowers and compiles `jitted` for `args`, timing each stage.

    `jitted` is anything with JAX's ahead-of-time API (``jax.jit(f)`` or
    ``flax.nnx.jit(f)``): ``.trace(*args).lower().compile()``. Pass a fresh
    jit object around a fresh function object when the timing must not hit
    JAX's caches.

    Returns:
        The compiled program and ``{"trace", "lower", "compile", "total"}`` in seconds.
    """
    t0 = time.perf_counter()
    traced = jitted.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    return compiled, {"trace": t1 - t0, "lower": t2 - t1, "compile": t3 - t2, "total": t3 - t0}


def ratio(numerator: Timing, denominator: Timing) -> Summary:
    """Round-by-round ratio ``numerator / denominator``, summarised.

    Both Timings must come from the same `interleave` call, so that round i of
    each ran back to back.
    """
    if numerator.rounds != denominator.rounds:
        raise ValueError(
            f"ratio: {numerator.name!r} has {numerator.rounds} rounds and {denominator.name!r} "
            f"has {denominator.rounds}; time them together with one interleave(...) call."
        )
    return Summary.of([a / b for a, b in zip(numerator.samples, denominator.samples, strict=False)])
