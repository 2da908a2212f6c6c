"""Pooling functions against Linen's: outputs and gradients bit for bit (same lax.reduce_window calls)."""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import pooling as linen_pooling
from helpers import FAST_COMPILE, normal, raises, weighted_sum
from jax import lax

import nnx_bridge as nnx
from nnx_bridge import nn

F32, BF16 = jnp.float32, jnp.bfloat16

CASES = {  # id: (function name, input shape, dtype, keyword arguments)
    "avg-2d-valid-strides": ("avg_pool", (2, 6, 5, 3), F32, dict(window_shape=(2, 2), strides=(2, 2))),
    "avg-2d-same-no-pad-count": (
        "avg_pool",
        (2, 5, 5, 2),
        F32,
        dict(window_shape=(3, 3), strides=(1, 2), padding="SAME", count_include_pad=False),
    ),
    "avg-1d-pairs": (
        "avg_pool",
        (3, 7, 2),
        F32,
        dict(window_shape=(3,), padding=((1, 2),), count_include_pad=False),
    ),
    "avg-1d-same-two-batch-dims": (
        "avg_pool",
        (2, 3, 7, 2),
        F32,
        dict(window_shape=(3,), padding="SAME", count_include_pad=False),
    ),
    "avg-unbatched-same": (
        "avg_pool",
        (5, 4, 3),
        F32,
        dict(window_shape=(2, 3), padding="SAME", count_include_pad=False),
    ),
    "avg-bf16-pad-counted": ("avg_pool", (2, 6, 6, 3), BF16, dict(window_shape=(3, 3), padding="SAME")),
    "max-2d-same-strides": (
        "max_pool",
        (2, 7, 6, 3),
        F32,
        dict(window_shape=(3, 3), strides=(2, 2), padding="SAME"),
    ),
    "max-3d-valid": ("max_pool", (1, 4, 5, 4, 2), F32, dict(window_shape=(2, 2, 2), strides=(2, 1, 2))),
    "max-bf16-pairs": ("max_pool", (2, 6, 3), BF16, dict(window_shape=(2,), padding=((1, 1),))),
    "min-1d-unbatched-pairs": (
        "min_pool",
        (7, 3),
        F32,
        dict(window_shape=(3,), strides=(2,), padding=((2, 0),)),
    ),
    "min-2d-two-batch-dims": ("min_pool", (2, 2, 5, 5, 1), F32, dict(window_shape=(2, 2), padding="SAME")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pooling_matches_linen_bit_for_bit(case):
    name, shape, dtype, kwargs = CASES[case]
    ours, theirs = getattr(nn, name), getattr(linen_pooling, name)  # min_pool is not re-exported by linen
    x = normal(shape, dtype)

    @jax.jit
    def both(x):
        return (
            jax.value_and_grad(lambda x: weighted_sum(ours(x, **kwargs)))(x),
            ours(x, **kwargs),
            jax.value_and_grad(lambda x: weighted_sum(theirs(x, **kwargs)))(x),
            theirs(x, **kwargs),
        )

    (_, g_ours), y_ours, (_, g_linen), y_linen = both.lower(x).compile(FAST_COMPILE)(x)
    assert y_ours.shape == y_linen.shape and y_ours.dtype == y_linen.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y_ours, np.float32), np.asarray(y_linen, np.float32))
    np.testing.assert_array_equal(np.asarray(g_ours, np.float32), np.asarray(g_linen, np.float32))


@pytest.mark.parametrize("name", ["avg_pool", "max_pool"])
def test_explicit_padding_with_two_batch_dims_pools_each_example(name):
    # Linen's pool pads only one batch dimension, so its own function fails on this input;
    # ours pads every batch dimension and agrees with Linen on the batch folded into one.
    x = normal((2, 3, 7, 2))
    kwargs = dict(window_shape=(3,), padding=((1, 2),))
    if name == "avg_pool":
        kwargs["count_include_pad"] = False
    expected = getattr(linen, name)(x.reshape(6, 7, 2), **kwargs).reshape(2, 3, -1, 2)
    np.testing.assert_array_equal(getattr(nn, name)(x, **kwargs), expected)


def test_pool_with_any_reduction_matches_linen():
    x = jnp.abs(normal((2, 6, 4, 3))) + 0.5
    args = (1.0, lax.mul, (2, 2), (2, 1), ((0, 1), (1, 0)))
    np.testing.assert_array_equal(nn.pool(x, *args), linen.pool(x, *args))


def test_pooling_is_exported_at_the_top_level():
    x = normal((1, 4, 4, 1))
    np.testing.assert_array_equal(nnx.max_pool(x, (2, 2)), nn.max_pool(x, (2, 2)))
    assert (nnx.pool, nnx.avg_pool, nnx.min_pool) == (nn.pool, nn.avg_pool, nn.min_pool)


def test_average_without_padding_divides_by_real_entries():
    x = jnp.ones((1, 3, 3, 1))
    counted = nn.avg_pool(x, (3, 3), padding="SAME")[0, :, :, 0]
    np.testing.assert_allclose(
        counted, [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9], [4 / 9, 6 / 9, 4 / 9]], rtol=1e-6
    )
    np.testing.assert_array_equal(nn.avg_pool(x, (3, 3), padding="SAME", count_include_pad=False), x)


def test_pooling_errors():
    x = jnp.ones((2, 6, 6, 3))
    with raises(
        ValueError, "max_pool: inputs must be (batch..., 2 window dims..., features)", "found shape (6,)"
    ):
        nn.max_pool(jnp.ones(6), (2, 2))
    with raises(ValueError, "pool: strides must be an int or 2 ints", "found (1, 2, 1)"):
        nn.pool(x, 0.0, lax.add, (2, 2), (1, 2, 1), "VALID")
    with raises(ValueError, "avg_pool: unknown padding 'CIRCULAR'; expected one of 'SAME', 'VALID'"):
        nn.avg_pool(x, (2, 2), padding="CIRCULAR")
    with raises(ValueError, "min_pool: padding must be a string", "or 2 entries", "found ((1, 1),)"):
        nn.min_pool(x, (2, 2), padding=((1, 1),))
    with raises(
        ValueError, "avg_pool: window_shape must be a positive int or a non-empty tuple", "found (2, 0)"
    ):
        nn.avg_pool(x, (2, 0))
