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

# Module.partition: typed by the number of filters (like flax.nnx.split).
whole: tuple[nnx.State, nnx.ModuleDef[Affine]] = model.partition()
one: tuple[nnx.State, nnx.ModuleDef[Affine]] = model.partition("params")
params, rest, affine_def = model.partition("params", ...)
params_state: nnx.State = params
rest_state: nnx.State = rest
three: tuple[nnx.State, nnx.State, nnx.State, nnx.ModuleDef[Affine]] = model.partition(
    "params", "counts", ...
)
many: tuple[nnx.State | nnx.ModuleDef[Affine], ...] = model.partition("params", "counts", "cache", ...)
rebuilt: Affine = affine_def.merge(params, rest)
applied: tuple[object, tuple[nnx.State, nnx.ModuleDef[Affine]]] = affine_def.apply(params, rest)(jnp.ones(2))


# Variables: the built-in fixed-collection classes and a user subclass that fixes its
# collection are built from the value alone; a plain Variable takes the collection first.
class Cache(nnx.Variable[jax.Array], collection="cache"):
    pass


cache: Cache = Cache(jnp.zeros(3))
cache_value: jax.Array = cache.value
stat_value: jax.Array = nnx.BatchStat(jnp.zeros(()), sharding=None).value
sharded: nnx.Param[jax.Array] = nnx.Param(jnp.ones((2, 2)), sharding=("data", None))
opt_state: nnx.OptState = nnx.OptState(jnp.zeros(2))
plain: nnx.Variable[int] = nnx.Variable("counts", 0)
