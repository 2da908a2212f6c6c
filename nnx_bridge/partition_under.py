"""Build a module under a JAX transform and keep the ModuleDef that the trace made."""

from __future__ import annotations

import typing as tp

import jax

from nnx_bridge.module import Module, ModuleDef
from nnx_bridge.state import State


def partition_under(
    run: tp.Callable[[tp.Callable[[jax.Array], State]], tp.Any],
    make: tp.Callable[[jax.Array], Module],
) -> tuple[tp.Any, ModuleDef[tp.Any]]:
    """Returns ``run(build)`` and the ModuleDef, where ``build(key)`` is ``make(key).partition()[0]``.

    `run` calls `build` under a transform, e.g. ``lambda build: jax.vmap(build)(keys)``.

    A transform (`jax.vmap`, `jax.eval_shape`, `jax.jit`) returns only arrays, so
    the ModuleDef that the build makes while traced is captured on the side.

    Returns:
      ``(result, moduledef)``: what the transformed build returned (a State, or
      its abstract or batched form) and the ModuleDef to merge it with.

    Example:
        >>> import jax, nnx_bridge as nnx
        >>> from nnx_bridge.partition_under import partition_under
        >>> make = lambda key: nnx.Linear(2, 3, ctx=nnx.Context(key))
        >>> key = jax.random.PRNGKey(0)
        >>> abstract, moduledef = partition_under(lambda build: jax.eval_shape(build, key), make)
        >>> abstract["kernel"].value.shape, moduledef.type.__name__
        ((2, 3), 'Linear')
    """
    moduledefs: list[ModuleDef[tp.Any]] = []

    def build(key: jax.Array) -> State:
        state, moduledef = make(key).partition()
        moduledefs.append(moduledef)
        return state

    result = run(build)
    if not moduledefs:
        raise RuntimeError(
            f"partition_under: {run!r} never called the build function it was given, so there is "
            f"no ModuleDef. Pass a function that runs it, e.g. lambda build: jax.eval_shape(build, key)."
        )
    return result, moduledefs[0]
