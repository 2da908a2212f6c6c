"""Type-checked by mypy in CI (not collected by pytest): the public API as documented."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import nnx_bridge as nnx

param: nnx.Param[jax.Array] = nnx.Param(jnp.ones(2))
stat = nnx.BatchStat(jnp.zeros(()), sharding=None)
counts = nnx.Variable("counts", 0)


class Affine(nnx.Module):
    def __init__(self, n: int, *, ctx: nnx.Context) -> None:
        self.w = nnx.Param(jax.random.normal(ctx.make_rng("params"), (n, n)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w.value


model = Affine(2, ctx=nnx.Context(0))
state, moduledef = model.partition()
same: Affine = moduledef.merge(state)
