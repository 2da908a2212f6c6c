"""`Dropout`, with its randomness from an explicit `Context` passed to the call."""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
from jax import lax, random

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import modes


def dropout_key(ctx: Context | None, stream: str, layer: str) -> jax.Array:
    """A key from ``ctx.make_rng(stream)``, or an error that says how to pass a Context.

    A Context without the stream raises its own `MissingRngStreamError`, which
    says how to add the stream where that Context comes from (``Context({...})``,
    or ``rngs=`` of a Linen ``apply`` for the bridge's Context).

    Example:
        >>> import nnx_bridge as nnx
        >>> from nnx_bridge.nn.dropout import dropout_key
        >>> dropout_key(nnx.Context(0), "dropout", "MyLayer").shape
        (2,)
    """
    if ctx is None:
        raise ValueError(
            f"{layer} is not deterministic and needs randomness, but got no ctx. Pass one, e.g. "
            f"layer(x, deterministic=False, ctx=nnx.Context({{{stream!r}: jax.random.PRNGKey(0)}})), "
            f"or call it with deterministic=True for evaluation."
        )
    return ctx.make_rng(stream)


class Dropout(Module):
    """Zeroes each entry with probability ``rate`` and scales the rest by ``1 / (1 - rate)``.

    Arithmetic and random draws are Linen's ``nn.Dropout``: given the same key,
    the output is bit-for-bit the same. It is the identity when deterministic
    or when ``rate == 0`` (no key needed then).

    Args:
      rate: the probability of dropping an entry (not the keep rate).
      broadcast_dims: axes along which the same mask is shared.
      deterministic: default for the call's argument (None: the call must give it).
      rng_collection: the Context stream the key is drawn from.

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> dropout = nnx.nn.Dropout(0.5)
        >>> dropout(jnp.ones(4), deterministic=True).tolist()
        [1.0, 1.0, 1.0, 1.0]
        >>> y = dropout(jnp.ones(1000), deterministic=False, ctx=nnx.Context({"dropout": 0}))
        >>> sorted(set(y.tolist()))
        [0.0, 2.0]
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: tp.Sequence[int] = (),
        deterministic: bool | None = None,
        rng_collection: str = "dropout",
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"Dropout: rate is a probability in [0, 1]; found rate={rate!r}.")
        self.rate = float(rate)
        self.broadcast_dims = tuple(int(d) for d in broadcast_dims)
        self.deterministic = deterministic
        self.rng_collection = rng_collection

    def __call__(
        self, x: jax.Array, *, deterministic: bool | None = None, ctx: Context | None = None
    ) -> jax.Array:
        """Applies dropout to ``x``; ``ctx`` supplies the key when not deterministic."""
        deterministic = modes.resolve("deterministic", self.deterministic, deterministic, "Dropout")
        if self.rate == 0.0 or deterministic:
            return x
        if self.rate == 1.0:  # keeps gradients finite
            return jnp.zeros_like(x)
        key = dropout_key(ctx, self.rng_collection, "Dropout")
        keep_prob = 1.0 - self.rate
        mask_shape = list(jnp.shape(x))
        for dim in self.broadcast_dims:
            mask_shape[dim] = 1
        keep = random.bernoulli(key, p=keep_prob, shape=mask_shape)
        keep = jnp.broadcast_to(keep, jnp.shape(x))
        return lax.select(keep, x / keep_prob, jnp.zeros_like(x))
