"""nnx_bridge.nn beyond arithmetic: initial values, sharding names, module structure, errors."""

from __future__ import annotations

import typing as tp

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_trees_close,
    build_abstract,
    linen_params_from_our_keys,
    normal,
    raises,
    rbg_key,
    shardings,
)

import nnx_bridge as nnx
from nnx_bridge import nn

F32 = jnp.float32


# ----------------------------------------------------------------------------------
# Same key, same initial parameters as Linen
# ----------------------------------------------------------------------------------


CASES = {
    "Linear": (
        lambda **i: linen.Dense(4, **i),
        lambda ctx: nn.Linear(3, 4, ctx=ctx),
        2,
        (jnp.ones((1, 3)),),
        ("kernel_init", "bias_init"),
        linen.Dense,
    ),
    "LinearGeneral": (
        lambda **i: linen.DenseGeneral((2, 5), **i),
        lambda ctx: nn.LinearGeneral(3, (2, 5), ctx=ctx),
        2,
        (jnp.ones((1, 3)),),
        ("kernel_init", "bias_init"),
        linen.DenseGeneral,
    ),
    "Conv": (
        lambda **i: linen.Conv(4, (3, 2), **i),
        lambda ctx: nn.Conv(3, 4, (3, 2), ctx=ctx),
        2,
        (jnp.ones((1, 5, 5, 3)),),
        ("kernel_init", "bias_init"),
        linen.Conv,
    ),
    "Embed": (
        lambda **i: linen.Embed(7, 4, **i),
        lambda ctx: nn.Embed(7, 4, ctx=ctx),
        1,
        (jnp.ones((2,), jnp.int32),),
        ("embedding_init",),
        linen.Embed,
    ),
    "LayerNorm": (
        lambda **i: linen.LayerNorm(**i),
        lambda ctx: nn.LayerNorm(4, ctx=ctx),
        2,
        (jnp.ones((1, 4)),),
        ("scale_init", "bias_init"),
        linen.LayerNorm,
    ),
    "MultiHeadAttention": (
        lambda **i: linen.MultiHeadDotProductAttention(num_heads=2, qkv_features=6, **i),
        lambda ctx: nn.MultiHeadAttention(2, 4, qkv_features=6, ctx=ctx),
        8,
        (jnp.ones((1, 3, 4)),),
        ("kernel_init", "bias_init"),
        linen.MultiHeadDotProductAttention,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_keys_give_linens_initial_parameters(case):
    make_linen, make_ours, draws, inputs, init_names, linen_type = CASES[case]
    # The default (threefry) key for one layer; 'rbg' keys (fast to compile) for the rest.
    key = jax.random.PRNGKey(0) if case == "Linear" else rbg_key(0)
    defaults = {name: getattr(linen_type, name) for name in init_names}  # Linen's own defaults
    expected = linen_params_from_our_keys(make_linen, key, draws, *inputs, **defaults)
    ours = make_ours(nnx.Context(key))
    assert_trees_close(nnx.to_variables(ours.partition()[0]), expected)
    for a, b in zip(
        jax.tree.leaves(nnx.to_variables(ours.partition()[0])), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # not just close: the same numbers


def test_default_initialisers_are_linens():
    x = rbg_key(3)
    for ours, theirs, shape in [
        (nn.default_kernel_init, linen.Dense.kernel_init, (5, 7)),
        (nn.default_bias_init, linen.Dense.bias_init, (7,)),
        (nn.default_scale_init, linen.LayerNorm.scale_init, (7,)),
        (nn.default_embed_init, linen.Embed.embedding_init, (5, 7)),
    ]:
        np.testing.assert_array_equal(ours(x, shape, F32), theirs(x, shape, F32))


def test_batch_norm_initial_statistics_are_linens():
    bn = nn.BatchNorm(3, param_dtype=jnp.bfloat16, ctx=nnx.Context(0))
    variables = linen.BatchNorm(param_dtype=jnp.bfloat16).init(
        jax.random.PRNGKey(0), jnp.ones((2, 3)), use_running_average=True
    )
    assert_trees_close(nnx.to_variables(bn.partition()[0]), variables)


# ----------------------------------------------------------------------------------
# Sharding names
# ----------------------------------------------------------------------------------


def test_sharding_names_reach_every_parameter():
    ctx = nnx.Context(0)
    assert shardings(build_abstract(lambda: nn.Linear(3, 4, sharding=("data", "model"), ctx=ctx))) == {
        "bias": ("model",),
        "kernel": ("data", "model"),
    }
    assert shardings(
        build_abstract(lambda: nn.LinearGeneral(3, (2, 5), sharding=("embed", "heads", None), ctx=ctx))
    ) == {"bias": ("heads", None), "kernel": ("embed", "heads", None)}
    assert shardings(
        build_abstract(lambda: nn.Conv(3, 4, (3, 3), sharding=(None, None, "in", "out"), ctx=ctx))
    ) == {"bias": ("out",), "kernel": (None, None, "in", "out")}
    assert shardings(build_abstract(lambda: nn.Embed(7, 4, sharding=("vocab", "embed"), ctx=ctx))) == {
        "embedding": ("vocab", "embed")
    }
    assert shardings(build_abstract(lambda: nn.LayerNorm(4, sharding=("embed",), ctx=ctx))) == {
        "bias": ("embed",),
        "scale": ("embed",),
    }
    assert shardings(build_abstract(lambda: nn.RMSNorm(4, sharding=("embed",), ctx=ctx))) == {
        "scale": ("embed",)
    }
    assert set(shardings(build_abstract(lambda: nn.BatchNorm(4, sharding=("embed",), ctx=ctx))).values()) == {
        ("embed",)
    }
    mha = shardings(
        build_abstract(lambda: nn.MultiHeadAttention(2, 4, sharding=("embed", "heads", "kv"), ctx=ctx))
    )
    for name in ("query", "key", "value"):
        assert mha[f"{name}/kernel"] == ("embed", "heads", "kv") and mha[f"{name}/bias"] == ("heads", "kv")
    assert mha["out/kernel"] == ("heads", "kv", "embed") and mha["out/bias"] == ("embed",)


def test_no_sharding_by_default():
    assert set(
        shardings(build_abstract(lambda: nn.MultiHeadAttention(2, 4, ctx=nnx.Context(0)))).values()
    ) == {None}


# ----------------------------------------------------------------------------------
# Modules: structure, static fields, jit
# ----------------------------------------------------------------------------------
LAYERS = {
    "Linear": lambda ctx: nn.Linear(3, 4, ctx=ctx),
    "LinearGeneral": lambda ctx: nn.LinearGeneral((3, 2), 4, axis=(-2, -1), ctx=ctx),
    "Conv": lambda ctx: nn.Conv(3, 4, (3, 3), padding=((1, 1), (0, 2)), ctx=ctx),
    "Embed": lambda ctx: nn.Embed(7, 4, ctx=ctx),
    "LayerNorm": lambda ctx: nn.LayerNorm(4, ctx=ctx),
    "RMSNorm": lambda ctx: nn.RMSNorm(4, ctx=ctx),
    "BatchNorm": lambda ctx: nn.BatchNorm(4, ctx=ctx),
    "Dropout": lambda ctx: nn.Dropout(0.5, broadcast_dims=[0]),
    "MultiHeadAttention": lambda ctx: nn.MultiHeadAttention(2, 4, normalize_qk=True, ctx=ctx),
    "Sequential": lambda ctx: nn.Sequential(nn.Linear(4, 4, ctx=ctx), jax.nn.relu),
}


def _static_values(moduledef: nnx.ModuleDef) -> tp.Iterator[tp.Any]:
    yield from moduledef.static_fields.values()
    for sub in moduledef.submodules.values():
        if isinstance(sub, nnx.ModuleDef):
            yield from _static_values(sub)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_keep_only_structural_static_fields(name):
    _state, moduledef = build_abstract(lambda: LAYERS[name](nnx.Context(0))).partition()
    _, again = build_abstract(lambda: LAYERS[name](nnx.Context(1))).partition()
    assert moduledef == again and hash(moduledef) == hash(again)  # hashable, key-independent
    for value in _static_values(moduledef):  # no initialiser (or other function) kept
        assert not callable(value) or isinstance(value, type), (name, value)


def test_layers_run_under_jit_with_the_moduledef_static():
    model = nn.Sequential(nn.Linear(3, 4, ctx=nnx.Context(0)), nn.BatchNorm(4, ctx=nnx.Context(1)))
    state, moduledef = model.partition()

    @jax.jit
    def step(state: nnx.State, x: jax.Array) -> tp.Any:
        y, (state, _) = moduledef.apply(state)(x, use_running_average=False)
        return y, state

    x = normal((5, 3))
    y, new_state = step(state, x)
    y_eager, (eager_state, _) = moduledef.apply(state)(x, use_running_average=False)
    np.testing.assert_allclose(y, y_eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        new_state["layers/1/mean"].value, eager_state["layers/1/mean"].value, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(new_state["layers/1/mean"].value, state["layers/1/mean"].value)


def test_sequential_routes_keywords_by_signature():
    seen = []

    def spy(x, **kwargs):
        seen.append(sorted(kwargs))
        return x

    model = nn.Sequential(nn.BatchNorm(2, ctx=nnx.Context(0)), jax.nn.relu, nn.Dropout(0.5), spy)
    x = jnp.array([[1.0, -2.0], [3.0, 4.0]])
    y = model(x, use_running_average=False, deterministic=True)
    assert seen == [["deterministic", "use_running_average"]]
    assert float(model.layers[0].mean.value[0]) != 0.0  # BatchNorm got use_running_average=False
    np.testing.assert_array_equal(y, jax.nn.relu(y))


def test_attention_key_and_value_default_like_linen():
    mha = nn.MultiHeadAttention(2, 4, ctx=nnx.Context(rbg_key(0)))
    q, k = normal((1, 3, 4), seed=1), normal((1, 5, 4), seed=2)
    np.testing.assert_array_equal(mha(q), mha(q, q, q))
    np.testing.assert_array_equal(mha(q, k), mha(q, k, k))


# ----------------------------------------------------------------------------------
# Errors name the argument, what was expected, what was found, and the fix
# ----------------------------------------------------------------------------------


def abstract(make: tp.Callable[[nnx.Context], nnx.Module]) -> nnx.Module:
    return build_abstract(lambda: make(nnx.Context(0)))


def test_input_shape_errors():
    with raises(
        ValueError,
        "Linear(in_features=3, out_features=4) expects inputs whose last dimension is 3",
        "shape (2, 5)",
        "in_features=5",
    ):
        abstract(lambda ctx: nn.Linear(3, 4, ctx=ctx))(jnp.ones((2, 5)))
    with raises(
        ValueError,
        "LinearGeneral(in_features=(3, 2), axis=(-2, -1)) expects input dimensions (3, 2)",
        "found (2, 3)",
        "in_features=(2, 3)",
    ):
        abstract(lambda ctx: nn.LinearGeneral((3, 2), 4, axis=(-2, -1), ctx=ctx))(jnp.ones((5, 2, 3)))
    with raises(
        ValueError,
        "Conv(in_features=3, kernel_size=(3, 3)) expects channels-last inputs",
        "found shape (2, 8, 8, 4)",
        "channels last",
    ):
        abstract(lambda ctx: nn.Conv(3, 4, (3, 3), ctx=ctx))(jnp.ones((2, 8, 8, 4)))
    with raises(ValueError, "found shape (8, 3)"):
        abstract(lambda ctx: nn.Conv(3, 4, (3, 3), ctx=ctx))(jnp.ones((8, 3)))
    with raises(
        ValueError,
        "Embed expects integer ids; found an input of dtype float32",
        "astype(jnp.int32)",
        "attend",
    ):
        abstract(lambda ctx: nn.Embed(5, 3, ctx=ctx))(jnp.ones((2,)))
    with raises(ValueError, "Embed.attend expects a query whose last dimension is features=3", "(2, 4)"):
        abstract(lambda ctx: nn.Embed(5, 3, ctx=ctx)).attend(jnp.ones((2, 4)))
    with raises(
        ValueError,
        "LayerNorm(num_features=4) expects the last axis of its input to have size 4",
        "shape (2, 5)",
        "num_features=5",
    ):
        abstract(lambda ctx: nn.LayerNorm(4, ctx=ctx))(jnp.ones((2, 5)))
    with raises(ValueError, "RMSNorm(num_features=4)", "shape (2, 5)"):
        abstract(lambda ctx: nn.RMSNorm(4, ctx=ctx))(jnp.ones((2, 5)))
    with raises(
        ValueError, "BatchNorm(num_features=4) normalises axis 2 of its input, but the input has shape (2, 4)"
    ):
        abstract(lambda ctx: nn.BatchNorm(4, axis=2, ctx=ctx))(jnp.ones((2, 4)), use_running_average=True)
    with raises(
        ValueError,
        "BatchNorm(num_features=4) expects axis 1 of its input to have size 4",
        "shape (2, 5)",
        "num_features=5",
    ):
        abstract(lambda ctx: nn.BatchNorm(4, axis=1, ctx=ctx))(jnp.ones((2, 5)), use_running_average=True)
    with raises(
        ValueError,
        "MultiHeadAttention expects inputs_k of shape (batch..., length, 6); found shape (1, 3, 4)",
    ):
        abstract(lambda ctx: nn.MultiHeadAttention(2, 4, in_kv_features=6, ctx=ctx))(
            jnp.ones((1, 3, 4)), jnp.ones((1, 3, 4))
        )
    with raises(ValueError, "got inputs_v but no inputs_k"):
        abstract(lambda ctx: nn.MultiHeadAttention(2, 4, ctx=ctx))(
            jnp.ones((1, 3, 4)), inputs_v=jnp.ones((1, 3, 4))
        )


def test_constructor_errors():
    ctx = nnx.Context(0)
    with raises(ValueError, "Conv: padding must be a string", "or 2 entries", "found [1, 2, 3]"):
        nn.Conv(3, 4, (3, 3), padding=[1, 2, 3], ctx=ctx)
    with raises(ValueError, "padding='CAUSAL' is only defined for 1-D convolutions; this one has 2"):
        nn.Conv(3, 4, (3, 3), padding="CAUSAL", ctx=ctx)
    with raises(ValueError, "Conv: strides must be an int or 2 ints", "found (1, 2, 3)"):
        nn.Conv(3, 4, (3, 3), strides=(1, 2, 3), ctx=ctx)
    with raises(ValueError, "Conv: kernel_size must be a positive int", "found (3, 0)"):
        nn.Conv(3, 4, (3, 0), ctx=ctx)
    with raises(
        ValueError,
        "feature_group_count=2 must be a positive divisor of both in_features=3 and out_features=4",
    ):
        nn.Conv(3, 4, (3, 3), feature_group_count=2, ctx=ctx)
    with raises(ValueError, "qkv_features=10 must be divisible by num_heads=4"):
        nn.MultiHeadAttention(4, 10, ctx=ctx)
    with raises(
        ValueError, "LinearGeneral: axis=(-1,) names 1 input axes but in_features=(3, 2) gives 2 sizes"
    ):
        nn.LinearGeneral((3, 2), 4, ctx=ctx)
    with raises(ValueError, "Dropout: rate is a probability in [0, 1]; found rate=1.5"):
        nn.Dropout(1.5)
    with raises(TypeError, "dtype must be a dtype such as jnp.float32", "found 'float33'"):
        nn.Linear(3, 4, dtype="float33", ctx=ctx)
    with raises(ValueError, "Sequential needs at least one layer"):
        nn.Sequential()
    with raises(TypeError, "Sequential: layer 1 is a int, which is not callable"):
        nn.Sequential(jax.nn.relu, 3)


def test_sharding_errors():
    ctx = nnx.Context(0)
    with raises(
        ValueError,
        "Linear: sharding names one axis per dimension of the kernel (in_features, out_features)",
        "needs 2 entries; found 1: ('model',)",
    ):
        nn.Linear(3, 4, sharding=("model",), ctx=ctx)
    with raises(TypeError, "Conv: sharding must be a sequence of 4 axis names", "found 'model'"):
        nn.Conv(3, 4, (3, 3), sharding="model", ctx=ctx)
    with raises(ValueError, "MultiHeadAttention: sharding", "needs 3 entries; found 2"):
        nn.MultiHeadAttention(2, 4, sharding=("embed", "heads"), ctx=ctx)


def test_mode_and_randomness_errors():
    x = jnp.ones((2, 4))
    with raises(
        ValueError,
        "BatchNorm needs use_running_average",
        "use_running_average=False while training",
        "BatchNorm(..., use_running_average=...)",
    ):
        abstract(lambda ctx: nn.BatchNorm(4, ctx=ctx))(x)
    with raises(
        ValueError,
        "Dropout needs deterministic: pass deterministic=True or False to the call",
        "Dropout(..., deterministic=...)",
    ):
        nn.Dropout(0.5)(x)
    with raises(
        ValueError,
        "Dropout is not deterministic and needs randomness, but got no ctx",
        "ctx=nnx.Context({'dropout': jax.random.PRNGKey(0)})",
        "deterministic=True",
    ):
        nn.Dropout(0.5)(x, deterministic=False)
    with raises(
        nnx.MissingRngStreamError,
        "The Context has no RNG stream 'dropout' (streams available: 'params')",
        "'dropout': jax.random.PRNGKey(0)",
    ):
        nn.Dropout(0.5)(x, deterministic=False, ctx=nnx.Context({"params": jax.random.PRNGKey(0)}))
    with raises(ValueError, "MultiHeadAttention is not deterministic and needs randomness, but got no ctx"):
        abstract(lambda ctx: nn.MultiHeadAttention(2, 4, dropout_rate=0.1, ctx=ctx))(
            jnp.ones((1, 3, 4)), deterministic=False
        )
    with raises(ValueError, "The computation dtype must be a floating-point or complex dtype; found int32"):
        nn.dtypes.canonicalize_dtype(jnp.ones(2), dtype=jnp.int32)
    model = nn.Sequential(nn.Linear(4, 4, ctx=nnx.Context(0)), nn.Dropout(0.1))
    with raises(
        TypeError,
        "Sequential got keyword argument(s) ['determinstic'] that none of its layers accepts",
        "(Linear, Dropout)",
    ):
        model(x, determinstic=True)


def test_layers_are_written_on_the_core_alone():
    import ast
    import pathlib

    for path in pathlib.Path(nn.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "flax" for n in names), f"{path.name} imports {names}"
