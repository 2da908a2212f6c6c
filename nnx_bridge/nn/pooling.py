"""Pooling functions (`pool`, `avg_pool`, `max_pool`, `min_pool`) with Linen's signatures and arithmetic.

Inputs are channels-last, ``(batch..., window dims..., features)``: any number
of leading batch dimensions (or none) is pooled independently, and so is each
feature. Windows are reduced with `jax.lax.reduce_window`, as Linen.
"""

from __future__ import annotations

import math
import typing as tp

import jax
import jax.numpy as jnp
from jax import lax

from nnx_bridge.nn import spatial

_PADDINGS = ("SAME", "VALID")
PoolPadding = str | tp.Sequence[tuple[int, int]]


def _windows(
    inputs: jax.Array,
    window_shape: tp.Sequence[int],
    strides: tp.Sequence[int] | int | None,
    padding: PoolPadding,
    name: str,
) -> tuple[tuple[int, ...], tuple[int, ...], tp.Any]:
    """Checked window, strides and padding over every axis of ``inputs`` (batch and features: 1)."""
    window = spatial.kernel_size_tuple(window_shape, layer=name, argument="window_shape")
    rank = len(window)
    if jnp.ndim(inputs) < rank + 1:
        raise ValueError(
            f"{name}: inputs must be (batch..., {rank} window dims..., features) for "
            f"window_shape={window}; found shape {jnp.shape(inputs)}. Add the features axis "
            f"(e.g. x[..., None])."
        )
    steps = spatial.per_dim(strides, rank, "strides", layer=name)
    pads = spatial.canonical_padding(padding, rank, layer=name, strings=_PADDINGS)
    batch = jnp.ndim(inputs) - rank - 1
    dims = (1,) * batch + window + (1,)
    steps = (1,) * batch + steps + (1,)
    if not isinstance(pads, str):
        pads = ((0, 0),) * batch + pads + ((0, 0),)
    return dims, steps, pads


def pool(
    inputs: jax.Array,
    init: tp.Any,
    reduce_fn: tp.Callable[[tp.Any, tp.Any], tp.Any],
    window_shape: tp.Sequence[int],
    strides: tp.Sequence[int] | int | None,
    padding: PoolPadding,
) -> jax.Array:
    """Reduces every window of ``inputs`` with ``reduce_fn`` (Linen's ``nn.pool``).

    Args:
      inputs: ``(batch..., window dims..., features)``; batch dims may be absent.
      init: the reduction's initial value (and the value of padded entries).
      reduce_fn: a binary reduction such as `jax.lax.add` or `jax.lax.max`.
      window_shape: the window's size, one int per window dimension.
      strides: one int per window dimension (or an int for all; None means 1).
      padding: ``'SAME'``, ``'VALID'`` or one ``(low, high)`` pair (or int) per
        window dimension.

    Returns:
      The reduction of each window slice.

    Example:
        >>> import jax.numpy as jnp
        >>> from jax import lax
        >>> from nnx_bridge.nn import pool
        >>> pool(jnp.arange(4.0).reshape(1, 4, 1), 0.0, lax.add, (2,), (2,), "VALID")[0, :, 0].tolist()
        [1.0, 5.0]
    """
    return _pool(inputs, init, reduce_fn, window_shape, strides, padding, "pool")


def _pool(
    inputs: jax.Array,
    init: tp.Any,
    reduce_fn: tp.Callable[[tp.Any, tp.Any], tp.Any],
    window_shape: tp.Sequence[int],
    strides: tp.Sequence[int] | int | None,
    padding: PoolPadding,
    name: str,
) -> jax.Array:
    dims, steps, pads = _windows(inputs, window_shape, strides, padding, name)
    return lax.reduce_window(inputs, init, reduce_fn, dims, steps, pads)


def avg_pool(
    inputs: jax.Array,
    window_shape: tp.Sequence[int],
    strides: tp.Sequence[int] | int | None = None,
    padding: PoolPadding = "VALID",
    count_include_pad: bool = True,
) -> jax.Array:
    """The mean of every window (Linen's ``nn.avg_pool``).

    Args:
      inputs: ``(batch..., window dims..., features)``.
      window_shape: the window's size, one int per window dimension.
      strides: one int per window dimension (default: 1).
      padding: ``'SAME'``, ``'VALID'`` (default) or ``(low, high)`` pairs.
      count_include_pad: divide by the full window size (True, the default), or
        only by the number of entries that are not padding.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn import avg_pool
        >>> x = jnp.arange(3.0).reshape(1, 3, 1)
        >>> avg_pool(x, (2,), padding="SAME")[0, :, 0].tolist()
        [0.5, 1.5, 1.0]
        >>> avg_pool(x, (2,), padding="SAME", count_include_pad=False)[0, :, 0].tolist()
        [0.5, 1.5, 2.0]
    """
    window = spatial.kernel_size_tuple(window_shape, layer="avg_pool", argument="window_shape")
    y = _pool(inputs, 0.0, lax.add, window, strides, padding, "avg_pool")
    if count_include_pad:
        return y / math.prod(window)
    # How many real entries each window holds: one batch dimension is pooled with size 1
    # (the counts broadcast over it), as Linen; none or several keep their sizes.
    ones_shape = jnp.shape(inputs)[:-1] + (1,)
    if len(ones_shape) - 2 == len(window):
        ones_shape = (1,) + ones_shape[1:]
    return y / _pool(jnp.ones(ones_shape), 0.0, lax.add, window, strides, padding, "avg_pool")


def max_pool(
    inputs: jax.Array,
    window_shape: tp.Sequence[int],
    strides: tp.Sequence[int] | int | None = None,
    padding: PoolPadding = "VALID",
) -> jax.Array:
    """The maximum of every window (Linen's ``nn.max_pool``); padding counts as ``-inf``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn import max_pool
        >>> max_pool(jnp.array([[[1.0], [3.0], [2.0]]]), (2,))[0, :, 0].tolist()
        [3.0, 3.0]
    """
    return _pool(inputs, -jnp.inf, lax.max, window_shape, strides, padding, "max_pool")


def min_pool(
    inputs: jax.Array,
    window_shape: tp.Sequence[int],
    strides: tp.Sequence[int] | int | None = None,
    padding: PoolPadding = "VALID",
) -> jax.Array:
    """The minimum of every window (Linen's ``nn.min_pool``); padding counts as ``+inf``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn import min_pool
        >>> min_pool(jnp.array([[[1.0], [3.0], [2.0]]]), (2,))[0, :, 0].tolist()
        [1.0, 2.0]
    """
    return _pool(inputs, jnp.inf, lax.min, window_shape, strides, padding, "min_pool")
