"""Small nnx_bridge modules shared by the bridge tests (written on the core only)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

import nnx_bridge as nnx


class Dense(nnx.Module):
    """A Linen-named dense layer: params ``kernel`` (in, out) and ``bias`` (out,)."""

    def __init__(self, din: int, dout: int, *, ctx: nnx.Context, sharding=None):
        init = jax.nn.initializers.lecun_normal()
        self.kernel = nnx.Param(init(ctx.make_rng("params"), (din, dout)), sharding=sharding)
        self.bias = nnx.Param(jnp.zeros((dout,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel.value + self.bias.value


class MLP(nnx.Module):
    """Dense layers in a list, a step counter, a noisy method that needs a ``ctx``."""

    def __init__(self, sizes, *, ctx: nnx.Context):
        self.layers = [Dense(a, b, ctx=ctx) for a, b in itertools.pairwise(sizes)]
        self.steps = nnx.Variable("counts", jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        if train:
            self.steps.value = self.steps.value + 1
        return self.layers[-1](x)

    def encode(self, x: jax.Array) -> jax.Array:
        return self.layers[0](x)

    def noisy(self, x: jax.Array, *, ctx: nnx.Context) -> jax.Array:
        return self(x) + jax.random.normal(
            ctx.make_rng("noise"), x.shape[:-1] + (self.layers[-1].bias.value.shape[0],)
        )
