"""Einsum and PReLU against Flax Linen: variable trees, outputs and gradients bit for bit."""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import build_abstract, check_layer, normal, plain, raises, rbg_key

import nnx_bridge as nnx
from nnx_bridge import nn

F32, BF16 = jnp.float32, jnp.bfloat16

EINSUM_CASES = {  # id: (einsum_str, kernel_shape, bias_shape or None, input shape, input dtype, options)
    "matmul-like": ("abc,cde->abde", (3, 4, 5), (4, 5), (2, 6, 3), F32, {}),
    "heads": ("nta,hab->nthb", (8, 2, 4), (8, 4), (3, 5, 2), F32, {}),
    "kernel-axis-first-in-output": ("bd,dk->kb", (5, 6), (6,), (4, 5), F32, {}),
    "ellipsis-input": ("...d,dk->...k", (5, 6), (6,), (2, 3, 5), F32, {}),
    "ellipsis-kernel": ("bd,...dk->b...k", (3, 5, 6), (3, 6), (4, 5), F32, {}),
    "spaces-no-bias": (
        "b t d , d k -> b t k",
        (4, 3),
        None,
        (2, 3, 4),
        F32,
        dict(precision=jax.lax.Precision.HIGHEST),
    ),
    "bf16-compute": ("abc,cd->abd", (3, 4), (4,), (2, 5, 3), F32, dict(dtype=BF16)),
    "bf16-params-and-input": ("abc,cd->abd", (3, 4), (4,), (2, 5, 3), BF16, dict(param_dtype=BF16)),
}


@pytest.mark.parametrize("case", list(EINSUM_CASES))
def test_einsum_matches_linen_bit_for_bit(case):
    einsum_str, kernel_shape, bias_shape, shape, x_dtype, options = EINSUM_CASES[case]
    check_layer(
        linen.Einsum(kernel_shape, einsum_str, use_bias=bias_shape is not None, **options),
        lambda: nn.Einsum(einsum_str, kernel_shape, bias_shape, ctx=nnx.Context(0), **options),
        normal(shape, x_dtype),
    )


def test_einsum_equation_given_at_call_time():
    check_layer(
        linen.Einsum((3, 4)),
        lambda: nn.Einsum(None, (3, 4), (4,), ctx=nnx.Context(0)),
        normal((2, 3)),
        linen_call=dict(einsum_str="ab,bc->ac"),
        our_call=dict(einsum_str="ab,bc->ac"),
    )
    layer = nn.Einsum("ab,bc->ac", (3, 3), (3,), ctx=nnx.Context(0))
    x = normal((2, 3))
    np.testing.assert_allclose(layer(x, "ab,cb->ac"), x @ layer.kernel.value.T + layer.bias.value, rtol=1e-6)


def test_einsum_errors():
    ctx = nnx.Context(0)
    with raises(ValueError, "Einsum: einsum_str must be explicit and include '->'", "found 'ab,bc'"):
        nn.Einsum("ab,bc", (3, 4), ctx=ctx)
    with raises(ValueError, "Einsum: einsum_str must have exactly two operands", "found 2 in 'ab,bc,cd->ad'"):
        nn.Einsum("ab,bc,cd->ad", (3, 4), ctx=ctx)
    with raises(ValueError, "bias_shape must be (5, 6); found (6, 5)", "Pass bias_shape=(5, 6)"):
        nn.Einsum("ab,bcd->acd", (4, 5, 6), (6, 5), ctx=ctx)
    with raises(ValueError, "the kernel term of 'ab,bc->ac' must name each of the 3 dimensions"):
        nn.Einsum("ab,bc->ac", (4, 5, 6), (5,), ctx=ctx)
    layer = build_abstract(lambda: nn.Einsum(None, (3, 4), (4,), ctx=nnx.Context(0)))
    with raises(ValueError, "Einsum: no einsum_str was given to the constructor or to this call"):
        layer(jnp.ones((2, 3)))
    with raises(ValueError, "bias_shape must be (3,); found (4,)"):
        layer(jnp.ones((2, 3)), "ab,cb->ac")


# ----------------------------------------------------------------------------------
# PReLU
# ----------------------------------------------------------------------------------
PRELU_CASES = {  # id: (options, input dtype)
    "float32": ({}, F32),
    "bf16-input": ({}, BF16),
    "bf16-param": (dict(param_dtype=BF16), F32),
    "slope-init": (dict(negative_slope_init=0.25), F32),
}


@pytest.mark.parametrize("case", list(PRELU_CASES))
def test_prelu_matches_linen_bit_for_bit(case):
    options, x_dtype = PRELU_CASES[case]
    check_layer(linen.PReLU(**options), lambda: nn.PReLU(**options), normal((3, 4, 5), x_dtype))


@pytest.mark.parametrize("options", [{}, dict(negative_slope_init=0.3, param_dtype=BF16)], ids=str)
def test_prelu_initial_slope_is_linens(options):
    expected = plain(linen.PReLU(**options).init(rbg_key(0), jnp.ones(3)))
    ours = plain(nnx.to_variables(nn.PReLU(**options).partition()[0]))
    assert jax.tree.structure(ours) == jax.tree.structure(expected) and list(ours["params"]) == [
        "negative_slope"
    ]
    np.testing.assert_array_equal(ours["params"]["negative_slope"], expected["params"]["negative_slope"])
    assert ours["params"]["negative_slope"].dtype == expected["params"]["negative_slope"].dtype


def test_prelu_with_a_computation_dtype_promotes_as_flax_nnx():
    act = nn.PReLU(0.5, dtype=BF16)
    y = act(jnp.array([-2.0, 4.0]))
    assert y.dtype == BF16
    np.testing.assert_array_equal(np.asarray(y, np.float32), [-1.0, 4.0])
    assert nnx.PReLU is nn.PReLU and nnx.Einsum is nn.Einsum
