"""Conv (Linen's full option set), ConvTranspose and ConvLocal against Flax Linen.

Parity: Linen's `init` gives the variables (random values in its shapes are
loaded into ours); the variable trees must be equal, and outputs and
gradients (parameters and inputs) equal bit for bit, since both sides run the
same lax operations in the same order. `check_layer` is shared by the
einsum/PReLU tests. For one configuration of each layer of this issue, the
compiled gradient program must be Linen's, instruction for instruction. The
last test trains every layer through `nnx.to_linen` in the stock Linen
`TrainState` loop.
"""

from __future__ import annotations

import typing as tp

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    FAST_COMPILE,
    build_abstract,
    check_layer,
    linen_params_from_our_keys,
    load,
    normal,
    plain,
    raises,
    random_like,
    rbg_key,
    shardings,
)

import nnx_bridge as nnx
from benchmarks.bridge_overhead import canonical_names, hlo_computations
from benchmarks.linen_loop import create_state, load_digits_split, predict, train_step
from nnx_bridge import nn
from nnx_bridge.nn.spatial import KernelMask

F32, BF16 = jnp.float32, jnp.bfloat16


def tril_mask(shape: tuple[int, ...]) -> np.ndarray:
    return np.tril(np.ones(shape[-2:], np.float32)) * np.ones(shape, np.float32)


# ----------------------------------------------------------------------------------
# Conv: the options the first version lacked, and bfloat16
# ----------------------------------------------------------------------------------
CONV_CASES = {  # id: (in, out, kernel_size, options, input shape, input dtype)
    "mask": (3, 4, (3, 3), dict(mask=tril_mask((3, 3, 3, 4))), (2, 6, 6, 3), F32),
    "mask-groups": (4, 6, (2,), dict(mask=tril_mask((2, 2, 6)), feature_group_count=2), (2, 7, 4), F32),
    "same-lower-strides": (3, 4, (2, 3), dict(padding="SAME_LOWER", strides=(2, 1)), (1, 7, 6, 3), F32),
    "reflect-dilated": (2, 3, (3, 3), dict(padding="REFLECT", kernel_dilation=(1, 2)), (2, 7, 8, 2), F32),
    "circular-3d": (2, 2, (3, 2, 2), dict(padding="CIRCULAR", use_bias=False), (1, 4, 4, 3, 2), F32),
    "bf16-params": (3, 4, (3,), dict(padding="CAUSAL", dtype=BF16, param_dtype=BF16), (2, 9, 3), F32),
    "bf16-input-mask": (3, 4, (3, 3), dict(mask=tril_mask((3, 3, 3, 4)), dtype=BF16), (2, 5, 5, 3), BF16),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_matches_linen_bit_for_bit(case):
    in_features, out_features, kernel_size, options, shape, x_dtype = CONV_CASES[case]
    check_layer(
        linen.Conv(out_features, kernel_size, **options),
        lambda: nn.Conv(in_features, out_features, kernel_size, ctx=nnx.Context(0), **options),
        normal(shape, x_dtype),
    )


def test_conv_takes_strides_positionally_as_flax_nnx():
    conv = nn.Conv(3, 4, (3, 3), 2, ctx=nnx.Context(rbg_key(0)))
    assert conv.strides == (2, 2)
    assert conv(jnp.ones((1, 8, 8, 3))).shape == (1, 4, 4, 4)


def test_conv_mask_zeroes_the_masked_weights():
    mask = tril_mask((3, 1, 2))
    conv = nn.Conv(1, 2, (3,), padding="VALID", use_bias=False, mask=mask, ctx=nnx.Context(rbg_key(0)))
    conv.kernel.value = jnp.ones((3, 1, 2))
    x = jnp.arange(5.0).reshape(1, 5, 1)
    # the mask is lower-triangular over (in=1, out=2) at every tap, i.e. [[1, 0]]: output channel 0
    # sums its three inputs, channel 1 is masked out entirely.
    y = conv(x)
    np.testing.assert_array_equal(y[0, :, 0], [0.0 + 1 + 2, 1 + 2 + 3, 2 + 3 + 4])
    np.testing.assert_array_equal(y[0, :, 1], [0.0, 0.0, 0.0])


# ----------------------------------------------------------------------------------
# ConvTranspose
# ----------------------------------------------------------------------------------
TRANSPOSE_CASES = {  # id: (in, out, kernel_size, options, input shape, input dtype)
    "1d-valid": (3, 4, 3, dict(padding="VALID"), (2, 8, 3), F32),
    "2d-same-stride2": (3, 5, (3, 3), dict(strides=2), (2, 5, 4, 3), F32),
    "2d-circular-transpose-kernel": (
        3,
        4,
        (4, 4),
        dict(strides=(2, 2), padding="CIRCULAR", transpose_kernel=True),
        (1, 5, 5, 3),
        F32,
    ),
    "1d-circular-odd": (2, 3, (3,), dict(strides=3, padding="CIRCULAR"), (2, 4, 2), F32),
    "2d-pairs-dilation": (
        2,
        3,
        (2, 3),
        dict(padding=((1, 0), 2), kernel_dilation=(2, 1), strides=(1, 2)),
        (1, 5, 5, 2),
        F32,
    ),
    "mask-nobias-unbatched": (3, 4, (3,), dict(mask=tril_mask((3, 3, 4)), use_bias=False), (6, 3), F32),
    "two-batch-dims": (2, 3, (2, 2), dict(strides=2, padding=1), (2, 3, 4, 4, 2), F32),
    "bf16": (3, 4, (3, 3), dict(dtype=BF16, strides=2), (2, 4, 4, 3), BF16),
    "bf16-params": (3, 4, (3,), dict(param_dtype=BF16, transpose_kernel=True), (2, 6, 3), F32),
}


@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
def test_conv_transpose_matches_linen_bit_for_bit(case):
    in_features, out_features, kernel_size, options, shape, x_dtype = TRANSPOSE_CASES[case]
    check_layer(
        linen.ConvTranspose(out_features, kernel_size, **options),
        lambda: nn.ConvTranspose(in_features, out_features, kernel_size, ctx=nnx.Context(0), **options),
        normal(shape, x_dtype),
    )


def test_circular_conv_transpose_with_transpose_kernel_is_the_transpose_of_circular_conv():
    ctx = nnx.Context(rbg_key(0))
    conv = nn.Conv(3, 4, (3, 3), strides=2, padding="CIRCULAR", use_bias=False, ctx=ctx)
    up = nn.ConvTranspose(
        4, 3, (3, 3), strides=2, padding="CIRCULAR", use_bias=False, transpose_kernel=True, ctx=ctx
    )
    up.kernel.value = conv.kernel.value
    x, g = normal((1, 6, 6, 3)), normal((1, 3, 3, 4), seed=1)
    _, vjp = jax.vjp(conv, x)
    np.testing.assert_allclose(up(g), vjp(g)[0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------
# ConvLocal
# ----------------------------------------------------------------------------------
LOCAL_CASES = {  # id: (in, out, kernel_size, input_shape, options, input shape, input dtype)
    "1d-valid": (3, 4, (3,), (8,), dict(padding="VALID"), (2, 8, 3), F32),
    "2d-circular-stride2": (3, 4, (3, 3), (6, 5), dict(strides=2, padding="CIRCULAR"), (2, 6, 5, 3), F32),
    "2d-same-mask": (2, 3, (2, 2), (4, 4), dict(mask=tril_mask((4, 4, 8, 3))), (1, 4, 4, 2), F32),
    "1d-causal-dilated": (2, 2, 2, 6, dict(padding="CAUSAL", kernel_dilation=2), (3, 6, 2), F32),
    "2d-pairs-nobias-unbatched": (
        2,
        3,
        (3, 2),
        (5, 4),
        dict(padding=(1, (0, 1)), use_bias=False),
        (5, 4, 2),
        F32,
    ),
    "bf16": (3, 4, (3, 3), (5, 5), dict(dtype=BF16, padding="REFLECT"), (2, 5, 5, 3), BF16),
}


@pytest.mark.parametrize("case", list(LOCAL_CASES))
def test_conv_local_matches_linen_bit_for_bit(case):
    in_features, out_features, kernel_size, input_shape, options, shape, x_dtype = LOCAL_CASES[case]
    check_layer(
        linen.ConvLocal(out_features, kernel_size, **options),
        lambda: nn.ConvLocal(
            in_features, out_features, kernel_size, input_shape, ctx=nnx.Context(0), **options
        ),
        normal(shape, x_dtype),
    )


# ----------------------------------------------------------------------------------
# Default initialisers: our keys, in Linen's initialisers, give our values
# ----------------------------------------------------------------------------------
INIT_CASES = {
    "ConvTranspose": (
        lambda **i: linen.ConvTranspose(4, (3, 2), **i),
        lambda ctx: nn.ConvTranspose(3, 4, (3, 2), ctx=ctx),
        (jnp.ones((1, 5, 5, 3)),),
        linen.ConvTranspose,
    ),
    "ConvLocal": (
        lambda **i: linen.ConvLocal(4, (3,), padding="VALID", **i),
        lambda ctx: nn.ConvLocal(3, 4, (3,), (6,), padding="VALID", ctx=ctx),
        (jnp.ones((1, 6, 3)),),
        linen.ConvLocal,
    ),
    "Einsum": (
        lambda **i: linen.Einsum((3, 2, 5), "abc,cde->abde", **i),
        lambda ctx: nn.Einsum("abc,cde->abde", (3, 2, 5), (2, 5), ctx=ctx),
        (jnp.ones((1, 4, 3)),),
        linen.Einsum,
    ),
}


@pytest.mark.parametrize("case", list(INIT_CASES))
def test_same_keys_give_linens_initial_parameters(case):
    make_linen, make_ours, inputs, linen_type = INIT_CASES[case]
    defaults = {name: getattr(linen_type, name) for name in ("kernel_init", "bias_init")}
    expected = linen_params_from_our_keys(make_linen, rbg_key(0), 2, *inputs, **defaults)
    ours = plain(nnx.to_variables(make_ours(nnx.Context(rbg_key(0))).partition()[0]))
    assert jax.tree.structure(ours) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sharding_names_reach_every_parameter():
    def names(make: tp.Callable[[nnx.Context], nnx.Module]) -> dict[str, tp.Any]:
        return shardings(build_abstract(lambda: make(nnx.Context(0))))

    assert names(lambda ctx: nn.ConvTranspose(3, 4, 3, sharding=(None, "in", "out"), ctx=ctx)) == {
        "bias": ("out",),
        "kernel": (None, "in", "out"),
    }
    assert names(
        lambda ctx: nn.ConvTranspose(3, 4, 3, transpose_kernel=True, sharding=(None, "out", "in"), ctx=ctx)
    ) == {"bias": ("out",), "kernel": (None, "out", "in")}
    assert names(
        lambda ctx: nn.ConvLocal(3, 4, 3, 8, padding="VALID", sharding=("pos", None, "out"), ctx=ctx)
    ) == {"bias": ("pos", "out"), "kernel": ("pos", None, "out")}
    assert names(
        lambda ctx: nn.Einsum("btd,dhk->bthk", (4, 2, 3), (2, 3), sharding=("embed", "heads", "kv"), ctx=ctx)
    ) == {"bias": ("heads", "kv"), "kernel": ("embed", "heads", "kv")}
    assert names(
        lambda ctx: nn.Einsum("bd,...dk->b...k", (2, 4, 3), (2, 3), sharding=("x", "embed", "kv"), ctx=ctx)
    ) == {"bias": ("x", "kv"), "kernel": ("x", "embed", "kv")}


# ----------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------
def test_constructor_errors():
    ctx = nnx.Context(0)
    with raises(
        ValueError,
        "Conv: unknown padding 'SYMMETRIC'",
        "'SAME'",
        "'CAUSAL'",
        "an int, or 2 (low, high) pairs",
    ):
        nn.Conv(3, 4, (3, 3), padding="SYMMETRIC", ctx=ctx)
    with raises(ValueError, "Conv: mask must have the kernel's shape (3, 3, 3, 4); found shape (3, 3, 4)"):
        nn.Conv(3, 4, (3, 3), mask=np.ones((3, 3, 4)), ctx=ctx)
    with raises(ValueError, "Conv: feature_group_count=2 must be a positive divisor of both in_features=3"):
        nn.Conv(3, 4, (3,), feature_group_count=2, ctx=ctx)
    with raises(ValueError, "Conv: input_dilation must be an int or 2 ints", "each at least 1; found (1, 0)"):
        nn.Conv(3, 4, (3, 3), input_dilation=(1, 0), ctx=ctx)
    with raises(ValueError, "ConvTranspose: unknown padding 'REFLECT'", "'CIRCULAR'"):
        nn.ConvTranspose(3, 4, (3, 3), padding="REFLECT", ctx=ctx)
    with raises(
        ValueError, "ConvTranspose: mask must have the kernel's shape (3, 4, 3)", "found shape (3, 3, 4)"
    ):
        nn.ConvTranspose(3, 4, 3, transpose_kernel=True, mask=np.ones((3, 3, 4)), ctx=ctx)
    with raises(
        ValueError, "ConvLocal: input_shape gives the 2 spatial dimensions", "found input_shape=(8, 8, 3)"
    ):
        nn.ConvLocal(3, 4, (3, 3), (8, 8, 3), ctx=ctx)
    with raises(ValueError, "ConvLocal: feature_group_count must be 1", "found 2"):
        nn.ConvLocal(4, 4, (3,), (8,), feature_group_count=2, ctx=ctx)
    with raises(ValueError, "ConvLocal: mask must have the kernel's shape (6, 9, 4); found shape (3, 3, 4)"):
        nn.ConvLocal(3, 4, (3,), (8,), padding="VALID", mask=np.ones((3, 3, 4)), ctx=ctx)
    with raises(ValueError, "ConvLocal: an input of spatial shape (2,) gives an empty output"):
        nn.ConvLocal(3, 4, (3,), (2,), padding="VALID", ctx=ctx)
    with raises(ValueError, "ConvLocal: unknown padding 'circular'"):
        nn.ConvLocal(3, 4, (3,), (8,), padding="circular", ctx=ctx)


def test_input_shape_errors():
    local = build_abstract(lambda: nn.ConvLocal(3, 4, (3, 3), (8, 8), ctx=nnx.Context(0)))
    with raises(
        ValueError,
        "ConvLocal(in_features=3, kernel_size=(3, 3), input_shape=(8, 8)) was built for "
        "inputs of spatial shape (8, 8)",
        "found spatial shape (6, 8)",
        "input_shape=(6, 8)",
    ):
        local(jnp.ones((2, 6, 8, 3)))
    transpose = build_abstract(lambda: nn.ConvTranspose(3, 4, (3, 3), ctx=nnx.Context(0)))
    with raises(
        ValueError,
        "ConvTranspose(in_features=3, kernel_size=(3, 3)) expects channels-last inputs",
        "found shape (2, 8, 8, 4)",
    ):
        transpose(jnp.ones((2, 8, 8, 4)))


def test_masked_layers_keep_the_mask_in_their_moduledef():
    mask = tril_mask((3, 3, 4))

    def build(mask: tp.Any, seed: int = 0) -> nnx.Module:
        return build_abstract(lambda: nn.Conv(3, 4, 3, mask=mask, ctx=nnx.Context(seed)))

    a, b, c = (
        build(mask).partition()[1],
        build(jnp.asarray(mask), 1).partition()[1],
        build(1 - mask).partition()[1],
    )
    assert a == b and hash(a) == hash(b) and a != c
    assert set(nnx.to_variables(build(mask).partition()[0])["params"]) == {"kernel", "bias"}


# ----------------------------------------------------------------------------------
# Zero cost: the compiled gradient program is Linen's
# ----------------------------------------------------------------------------------
MASK = tril_mask((3, 3, 3, 4))
PROGRAM_CASES = {  # id: (Linen layer, our layer, input shape)
    "Conv-mask": (
        linen.Conv(4, (3, 3), mask=MASK),
        lambda: nn.Conv(3, 4, (3, 3), mask=MASK, ctx=nnx.Context(0)),
        (2, 6, 6, 3),
    ),
    "ConvTranspose-circular": (
        linen.ConvTranspose(4, (3, 3), strides=(2, 2), padding="CIRCULAR"),
        lambda: nn.ConvTranspose(3, 4, (3, 3), 2, padding="CIRCULAR", ctx=nnx.Context(0)),
        (2, 5, 5, 3),
    ),
    "ConvLocal": (
        linen.ConvLocal(4, (3, 3)),
        lambda: nn.ConvLocal(3, 4, (3, 3), (6, 6), ctx=nnx.Context(0)),
        (2, 6, 6, 3),
    ),
    "Einsum": (
        linen.Einsum((3, 2, 5), "abc,cde->abde"),
        lambda: nn.Einsum("abc,cde->abde", (3, 2, 5), (2, 5), ctx=nnx.Context(0)),
        (2, 4, 3),
    ),
    "PReLU": (linen.PReLU(), lambda: nn.PReLU(), (2, 4, 3)),
}


@pytest.mark.parametrize("case", list(PROGRAM_CASES))
def test_compiled_gradient_program_is_linens(case):
    linen_layer, make_ours, shape = PROGRAM_CASES[case]
    x = jnp.ones(shape)
    variables = random_like(jax.eval_shape(linen_layer.init, rbg_key(0), x))
    params, moduledef = load(build_abstract(make_ours), variables).partition()

    def linen_grad(p: tp.Any, x: jax.Array) -> tp.Any:
        return jax.grad(lambda p: linen_layer.apply({"params": p}, x).sum())(p)

    def our_grad(p: nnx.State, x: jax.Array) -> tp.Any:
        return jax.grad(lambda p: moduledef.apply(p)(x)[0].sum())(p)

    def program(f: tp.Callable[..., tp.Any], p: tp.Any) -> list[str]:
        return canonical_names(hlo_computations(jax.jit(f).lower(p, x).compile().as_text()))

    assert program(our_grad, params) == program(linen_grad, variables["params"])


# ----------------------------------------------------------------------------------
# Every layer of this issue through to_linen, in the stock TrainState loop (benchmarks/linen_loop.py)
# ----------------------------------------------------------------------------------
def _image(x: jax.Array) -> jax.Array:
    return x.reshape(-1, 8, 8, 1)


BRIDGED = {  # kind: (factory, args, kwargs, forward pass of the bridged layer on 8x8 digits)
    "Conv": (
        nn.Conv,
        (1, 8, (3, 3)),
        dict(mask=KernelMask(tril_mask((3, 3, 1, 8)) + 1)),
        lambda layer, x: nn.max_pool(layer(_image(x)), (2, 2), strides=(2, 2)),
    ),
    "ConvTranspose": (
        nn.ConvTranspose,
        (1, 4, (3, 3)),
        dict(strides=2, padding="CIRCULAR"),
        lambda layer, x: nn.avg_pool(layer(_image(x)), (2, 2), strides=(2, 2)),
    ),
    "ConvLocal": (
        nn.ConvLocal,
        (1, 4, (3, 3), (8, 8)),
        dict(padding="VALID"),
        lambda layer, x: nn.min_pool(-layer(_image(x)), (2, 2), strides=2),
    ),
    "Einsum": (nn.Einsum, ("nhw,wk->nhk", (8, 16), (16,)), {}, lambda layer, x: layer(x.reshape(-1, 8, 8))),
    "PReLU": (nn.PReLU, (0.1,), {}, lambda layer, x: layer(linen.Dense(32)(x))),
}


class LinenDigits(linen.Module):
    """Ordinary Linen code around one bridged layer of this issue (and a pooling function)."""

    kind: str

    @linen.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        factory, args, kwargs, forward = BRIDGED[self.kind]
        x = forward(nnx.to_linen(factory, *args, name="layer", **kwargs), x)
        x = linen.BatchNorm(use_running_average=not train, momentum=0.9)(x.reshape(x.shape[0], -1))
        return linen.Dense(10)(x)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


@pytest.mark.parametrize("kind", list(BRIDGED))
def test_layer_trains_through_to_linen_in_a_train_state_loop(kind, digits):
    x_train, y_train, x_test, y_test = digits
    model = LinenDigits(kind)
    # create_state compiled as one program, with an 'rbg' key; every program at XLA's fastest
    # compile setting (the same for each layer, a third less compile time)
    key, batch = rbg_key(0), slice(0, 64)
    state = (
        jax.jit(create_state, static_argnums=0)
        .lower(model, key, x_train[batch])
        .compile(FAST_COMPILE)(key, x_train[batch])
    )
    assert "layer" in state.params and set(state.batch_stats) == {"BatchNorm_0"}
    step = train_step.lower(state, x_train[batch], y_train[batch], key).compile(FAST_COMPILE)
    for i in range(30):
        batch = slice(64 * i % 1344, 64 * i % 1344 + 64)
        state, loss = step(state, x_train[batch], y_train[batch], rbg_key(i))
    logits = predict.lower(state, x_test).compile(FAST_COMPILE)(state, x_test)
    accuracy = float((logits.argmax(-1) == y_test).mean())
    assert accuracy > 0.75, (kind, float(loss), accuracy)
