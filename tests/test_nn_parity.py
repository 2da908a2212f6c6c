"""Parity of nnx_bridge.nn with Flax Linen, layer by layer.

For every layer: Linen's `init` gives the variables; their tree (structure,
shapes, dtypes) must equal ours; loaded into ours with `nnx.from_variables` +
`update_state`, both give the same outputs, the same gradients with respect
to parameters and float inputs, and (BatchNorm) the same updated statistics.
"""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close, check_parity, load, normal, rbg_key, replay

import nnx_bridge as nnx
from nnx_bridge import nn

F32, BF16 = jnp.float32, jnp.bfloat16


# ----------------------------------------------------------------------------------
# helpers (also used by test_nn_models.py)
# ----------------------------------------------------------------------------------


DTYPE_CASES = [  # (input dtype, dtype, param_dtype)
    (F32, None, F32),
    (BF16, None, F32),
    (F32, BF16, F32),
    (BF16, None, BF16),
    (F32, BF16, BF16),
]
SHORT_DTYPE_CASES = [DTYPE_CASES[0], DTYPE_CASES[1], DTYPE_CASES[4]]


# ----------------------------------------------------------------------------------
# Linear / LinearGeneral
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("x_dtype,dtype,param_dtype", DTYPE_CASES)
def test_linear(x_dtype, dtype, param_dtype):
    check_parity(
        linen.Dense(5, dtype=dtype, param_dtype=param_dtype),
        lambda: nn.Linear(3, 5, dtype=dtype, param_dtype=param_dtype, ctx=nnx.Context(0)),
        normal((2, 4, 3), x_dtype),
    )


@pytest.mark.parametrize("use_bias", [True, False])
def test_linear_options(use_bias):
    precision = jax.lax.Precision.HIGHEST
    check_parity(
        linen.Dense(4, use_bias=use_bias, precision=precision),
        lambda: nn.Linear(6, 4, use_bias=use_bias, precision=precision, ctx=nnx.Context(0)),
        normal((6,)),
    )


@pytest.mark.parametrize(
    "in_features,out_features,axis,shape",
    [
        (3, (2, 5), -1, (4, 3)),
        ((4, 3), 6, (-2, -1), (2, 4, 3)),
        (4, 6, 1, (2, 4, 3)),
    ],
)
def test_linear_general(in_features, out_features, axis, shape):
    check_parity(
        linen.DenseGeneral(out_features, axis=axis),
        lambda: nn.LinearGeneral(in_features, out_features, axis=axis, ctx=nnx.Context(0)),
        normal(shape),
    )


# ----------------------------------------------------------------------------------
# Conv
# ----------------------------------------------------------------------------------
CONV_CASES = {  # id: (in, out, kernel_size, options, input shape)
    "1d-same": (3, 4, 3, {}, (2, 9, 3)),
    "1d-causal-dilated": (3, 4, (3,), dict(padding="CAUSAL", kernel_dilation=2), (2, 9, 3)),
    "2d-valid-stride2": (3, 5, (3, 3), dict(padding="VALID", strides=2), (2, 9, 8, 3)),
    "2d-explicit-groups": (4, 6, (3, 2), dict(padding=((1, 0), (2, 1)), feature_group_count=2), (2, 7, 6, 4)),
    "2d-int-padding-dilations": (
        2,
        3,
        (3, 3),
        dict(padding=1, kernel_dilation=2, input_dilation=(1, 2)),
        (1, 8, 5, 2),
    ),
    "2d-mixed-padding": (2, 3, (3, 3), dict(padding=(1, (0, 2))), (1, 6, 6, 2)),
    "2d-circular": (3, 4, (3, 3), dict(padding="CIRCULAR"), (2, 6, 5, 3)),
    "2d-reflect-strides": (3, 4, (3, 3), dict(padding="REFLECT", strides=(2, 1)), (2, 6, 5, 3)),
    "2d-unbatched": (3, 4, (3, 3), {}, (6, 5, 3)),
    "2d-two-batch-dims": (3, 4, (2, 2), {}, (2, 3, 5, 5, 3)),
    "3d-same-nobias": (2, 3, (2, 2, 2), dict(strides=(1, 2, 1), use_bias=False), (2, 4, 5, 3, 2)),
    "3d-depthwise": (4, 4, (3, 1, 2), dict(feature_group_count=4, padding="VALID"), (1, 4, 3, 3, 4)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case):
    in_features, out_features, kernel_size, options, shape = CONV_CASES[case]
    check_parity(
        linen.Conv(out_features, kernel_size, **options),
        lambda: nn.Conv(in_features, out_features, kernel_size, ctx=nnx.Context(0), **options),
        normal(shape),
    )


@pytest.mark.parametrize("x_dtype,dtype,param_dtype", SHORT_DTYPE_CASES[1:])
def test_conv_dtypes(x_dtype, dtype, param_dtype):
    options = dict(dtype=dtype, param_dtype=param_dtype, strides=2)
    check_parity(
        linen.Conv(4, (3, 3), **options),
        lambda: nn.Conv(3, 4, (3, 3), ctx=nnx.Context(0), **options),
        normal((2, 6, 6, 3), x_dtype),
    )


# ----------------------------------------------------------------------------------
# Embed
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,param_dtype", [(None, F32), (BF16, F32), (None, BF16)])
def test_embed_lookup_and_attend(dtype, param_dtype):
    ids = jnp.array([[0, 3, 6], [6, 1, 1]])
    options = dict(dtype=dtype, param_dtype=param_dtype)
    check_parity(linen.Embed(7, 4, **options), lambda: nn.Embed(7, 4, ctx=nnx.Context(0), **options), ids)
    check_parity(
        linen.Embed(7, 4, **options),
        lambda: nn.Embed(7, 4, ctx=nnx.Context(0), **options),
        normal((2, 5, 4)),
        method="attend",
        init_inputs=(ids,),
    )


def test_embed_single_row_broadcasts():
    check_parity(linen.Embed(1, 3), lambda: nn.Embed(1, 3, ctx=nnx.Context(0)), jnp.zeros((2, 4), jnp.int32))


# ----------------------------------------------------------------------------------
# LayerNorm / RMSNorm
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("x_dtype,dtype,param_dtype", SHORT_DTYPE_CASES)
def test_layer_norm_dtypes(x_dtype, dtype, param_dtype):
    options = dict(dtype=dtype, param_dtype=param_dtype)
    check_parity(
        linen.LayerNorm(**options),
        lambda: nn.LayerNorm(6, ctx=nnx.Context(0), **options),
        normal((3, 4, 6), x_dtype) * 3 + 1,
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(use_bias=False),
        dict(use_scale=False, epsilon=1e-3),
        dict(use_bias=False, use_scale=False),
        dict(reduction_axes=(1, 2)),
        dict(use_fast_variance=False),
    ],
    ids=str,
)
def test_layer_norm_options(options):
    check_parity(
        linen.LayerNorm(**options),
        lambda: nn.LayerNorm(6, ctx=nnx.Context(0), **options),
        normal((3, 4, 6)) * 2 - 1,
    )


def test_layer_norm_mask():
    mask = np.random.default_rng(3).random((3, 4, 6)) < 0.7
    check_parity(
        linen.LayerNorm(),
        lambda: nn.LayerNorm(6, ctx=nnx.Context(0)),
        normal((3, 4, 6)),
        call=dict(mask=mask),
    )


@pytest.mark.parametrize(
    "x_dtype,dtype,param_dtype,use_scale",
    [(*SHORT_DTYPE_CASES[0], True), (*SHORT_DTYPE_CASES[1], False), (*SHORT_DTYPE_CASES[2], True)],
)
def test_rms_norm(x_dtype, dtype, param_dtype, use_scale):
    options = dict(dtype=dtype, param_dtype=param_dtype, use_scale=use_scale)
    check_parity(
        linen.RMSNorm(**options),
        lambda: nn.RMSNorm(5, ctx=nnx.Context(0), **options),
        normal((2, 3, 5), x_dtype) + 0.5,
    )


def test_rms_norm_reduction_axes():
    check_parity(
        linen.RMSNorm(reduction_axes=(1, 2)),
        lambda: nn.RMSNorm(5, reduction_axes=(1, 2), ctx=nnx.Context(0)),
        normal((2, 3, 5)),
    )


# ----------------------------------------------------------------------------------
# BatchNorm
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "train,x_dtype,dtype,param_dtype",
    [(True, *case) for case in DTYPE_CASES] + [(False, *case) for case in SHORT_DTYPE_CASES[:2]],
)
def test_batch_norm(train, x_dtype, dtype, param_dtype):
    options = dict(dtype=dtype, param_dtype=param_dtype, momentum=0.9)
    check_parity(
        linen.BatchNorm(**options),
        lambda: nn.BatchNorm(4, ctx=nnx.Context(0), **options),
        normal((8, 3, 4), x_dtype) * 2 + 1,
        call=dict(use_running_average=not train),
        mutable=("batch_stats",),
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(axis=1),
        dict(use_fast_variance=False, epsilon=1e-3),
        dict(use_bias=False, use_scale=False),
        dict(use_running_average=False),
    ],
    ids=str,
)
def test_batch_norm_options(options):
    call = {} if "use_running_average" in options else dict(use_running_average=False)
    check_parity(
        linen.BatchNorm(**options),
        lambda: nn.BatchNorm(4, ctx=nnx.Context(0), **options),
        normal((5, 4, 4)) * 3,
        call=call,
        mutable=("batch_stats",),
    )


def test_batch_norm_mask():
    mask = np.random.default_rng(3).random((6, 1)) < 0.6
    check_parity(
        linen.BatchNorm(),
        lambda: nn.BatchNorm(4, ctx=nnx.Context(0)),
        normal((6, 4)),
        call=dict(use_running_average=False, mask=mask),
        mutable=("batch_stats",),
    )


def test_batch_norm_training_updates_statistics_in_place():
    bn = nn.BatchNorm(2, momentum=0.5, ctx=nnx.Context(0))
    x = jnp.array([[1.0, 2.0], [3.0, 6.0]])
    bn(x, use_running_average=False)
    np.testing.assert_allclose(bn.mean.value, [1.0, 2.0])  # 0.5 * 0 + 0.5 * [2, 4]
    np.testing.assert_allclose(bn.var.value, [1.0, 2.5])  # 0.5 * 1 + 0.5 * [1, 4]
    bn(x, use_running_average=True)
    np.testing.assert_allclose(bn.mean.value, [1.0, 2.0])


def test_batch_norm_cross_replica_statistics_under_vmap():
    x = normal((2, 5, 3)) * 2 + 1  # 2 "devices" of 5 examples each
    variables = linen.BatchNorm(axis_name="batch").init(
        jax.random.PRNGKey(0), x[0], use_running_average=False
    )

    def run_linen(xi):
        return linen.BatchNorm(axis_name="batch").apply(
            variables, xi, use_running_average=False, mutable=["batch_stats"]
        )

    ours = load(nn.BatchNorm(3, axis_name="batch", ctx=nnx.Context(0)), variables)
    state, moduledef = ours.partition()

    def run_ours(xi):
        y, (new_state, _) = moduledef.apply(state)(xi, use_running_average=False)
        return y, nnx.to_variables(new_state.filter("batch_stats"))

    assert_trees_close(jax.vmap(run_ours, axis_name="batch")(x), jax.vmap(run_linen, axis_name="batch")(x))


# ----------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate,broadcast_dims,dtype,default",
    [
        (0.5, (), F32, None),
        (0.3, (0, 2), BF16, None),
        (0.7, (-1,), F32, True),  # ours: the call's False overrides the constructor (Linen raises)
    ],
)
def test_dropout_matches_linen_bit_for_bit(rate, broadcast_dims, dtype, default):
    (key,) = replay(rbg_key(7))
    check_parity(
        linen.Dropout(rate, broadcast_dims=broadcast_dims),
        lambda: nn.Dropout(rate, broadcast_dims=broadcast_dims, deterministic=default),
        normal((4, 5, 6), dtype),
        linen_call=dict(deterministic=False, rng=key),
        our_call=dict(deterministic=False, ctx=nnx.Context({"dropout": rbg_key(7)})),
        exact=True,
    )


def test_dropout_with_default_prng_keys_matches_linen_bit_for_bit():
    x = normal((4, 5, 6))
    (key,) = replay(jax.random.PRNGKey(3))
    y_linen = linen.Dropout(0.4).apply({}, x, deterministic=False, rng=key)
    y_ours = nn.Dropout(0.4)(x, deterministic=False, ctx=nnx.Context({"dropout": jax.random.PRNGKey(3)}))
    np.testing.assert_array_equal(y_ours, y_linen)
    assert 0 < int((y_ours == 0).sum()) < x.size


@pytest.mark.parametrize("rate,deterministic", [(0.0, False), (0.5, True), (1.0, False)])
def test_dropout_edge_cases_need_no_key(rate, deterministic):
    x = normal((3, 4))
    y_linen = linen.Dropout(rate).apply({}, x, deterministic=deterministic)
    np.testing.assert_array_equal(nn.Dropout(rate)(x, deterministic=deterministic), y_linen)
    np.testing.assert_array_equal(nn.Dropout(rate, deterministic=deterministic)(x), y_linen)


# ----------------------------------------------------------------------------------
# MultiHeadAttention
# ----------------------------------------------------------------------------------
def causal_mask(length: int) -> jax.Array:
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


@pytest.mark.parametrize("x_dtype,dtype,param_dtype", [DTYPE_CASES[3]])  # float32: the other tests
def test_attention_self(x_dtype, dtype, param_dtype):
    options = dict(dtype=dtype, param_dtype=param_dtype)
    check_parity(
        linen.MultiHeadDotProductAttention(num_heads=2, **options),
        lambda: nn.MultiHeadAttention(2, 8, ctx=nnx.Context(0), **options),
        normal((2, 5, 8), x_dtype),
        call=dict(mask=causal_mask(5)),
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(
            qkv_features=12,
            out_features=6,
            use_bias=False,
            normalize_qk=True,
            dropout_rate=0.5,
            deterministic=True,
        ),
        dict(force_fp32_for_softmax=True, dtype=BF16),
    ],
    ids=str,
)
def test_attention_options(options):
    check_parity(
        linen.MultiHeadDotProductAttention(num_heads=3, **options),
        lambda: nn.MultiHeadAttention(3, 9, ctx=nnx.Context(0), **options),
        normal((2, 4, 9)),
    )


def test_attention_cross_with_separate_key_and_value():
    q, k, v = normal((2, 3, 8), seed=1), normal((2, 6, 5), seed=2), normal((2, 6, 5), seed=3)
    mask = np.random.default_rng(4).random((2, 1, 3, 6)) < 0.8
    check_parity(
        linen.MultiHeadDotProductAttention(num_heads=4),
        lambda: nn.MultiHeadAttention(4, 8, in_kv_features=5, ctx=nnx.Context(0)),
        q,
        k,
        v,
        call=dict(mask=mask),
    )


@pytest.mark.parametrize("broadcast_dropout", [True, False])
def test_attention_dropout_in_training(broadcast_dropout):
    (key,) = replay(rbg_key(5))
    options = dict(dropout_rate=0.3, broadcast_dropout=broadcast_dropout)
    check_parity(
        linen.MultiHeadDotProductAttention(num_heads=2, **options),
        lambda: nn.MultiHeadAttention(2, 6, ctx=nnx.Context(0), **options),
        normal((3, 4, 6)),
        linen_call=dict(deterministic=False, dropout_rng=key),
        our_call=dict(deterministic=False, ctx=nnx.Context({"dropout": rbg_key(5)})),
        init_call=dict(deterministic=True),
        exact=True,
    )
