"""LoRA and LoRALinear against flax.nnx (Linen has no LoRA), and freezing the base with optax.

flax.nnx's variables (names, shapes, dtypes) must equal ours; loaded into ours
they give bit-for-bit flax.nnx's outputs and gradients (the same operations).
"""

from __future__ import annotations

import typing as tp

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx as fnnx
from flax.training import train_state
from helpers import assert_same_layout, normal, plain, rbg_key, weighted_sum

import nnx_bridge as nnx
from nnx_bridge import nn

F32, BF16 = jnp.float32, jnp.bfloat16


def parity_with_flax_nnx(theirs: fnnx.Module, ours: nnx.Module, x: jax.Array) -> None:
    graphdef, their_params = fnnx.split(theirs, fnnx.Param)
    variables = {"params": their_params.to_pure_dict()}
    assert_same_layout(nnx.to_variables(ours.partition()[0]), variables)
    ours.update_state(nnx.from_variables(variables))
    params, moduledef = ours.partition()
    # The LoRA factors keep their type after loading.
    assert {type(params[p]) for p in params if "lora_" in p} == {nn.LoRAParam}

    def their_loss(p: tp.Any, x: jax.Array) -> tp.Any:
        y = fnnx.merge(graphdef, p)(x)
        return weighted_sum(y), y

    def our_loss(p: nnx.State, x: jax.Array) -> tp.Any:
        y, _ = moduledef.apply(p)(x)
        return weighted_sum(y), y

    @jax.jit
    def both(their_params: tp.Any, our_params: nnx.State, x: jax.Array) -> tp.Any:
        return (
            jax.value_and_grad(their_loss, (0, 1), has_aux=True)(their_params, x),
            jax.value_and_grad(our_loss, (0, 1), has_aux=True)(our_params, x),
        )

    ((_, y_theirs), g_theirs), ((_, y_ours), g_ours) = both(their_params, params, x)
    assert y_ours.dtype == y_theirs.dtype
    np.testing.assert_array_equal(np.asarray(y_ours, np.float32), np.asarray(y_theirs, np.float32))
    ours_g, theirs_g = nnx.to_variables(g_ours[0])["params"], g_theirs[0].to_pure_dict()
    assert_same_layout(ours_g, theirs_g)
    for a, b in zip(jax.tree.leaves(ours_g), jax.tree.leaves(theirs_g), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    np.testing.assert_array_equal(np.asarray(g_ours[1], np.float32), np.asarray(g_theirs[1], np.float32))


def randomize(module: fnnx.Module) -> None:
    """Non-zero values everywhere (lora_b starts at zero), so no factor can hide."""
    rng = np.random.default_rng(7)
    for _, variable in fnnx.iter_graph(module):
        if isinstance(variable, fnnx.Param):
            variable.value = jnp.asarray(rng.standard_normal(variable.value.shape), variable.value.dtype)


@pytest.mark.parametrize(
    "options,x_dtype",
    [
        (dict(), F32),
        (dict(dtype=BF16), F32),
        (dict(param_dtype=BF16), F32),
        (dict(), BF16),
    ],
    ids=str,
)
def test_lora_parity_with_flax_nnx_exact(options, x_dtype):
    theirs = fnnx.LoRA(3, 2, 4, rngs=fnnx.Rngs(0), **options)
    randomize(theirs)
    parity_with_flax_nnx(theirs, nn.LoRA(3, 2, 4, ctx=nnx.Context(0), **options), normal((5, 3), x_dtype))


def test_lora_with_a_base_module_parity_exact():
    theirs = fnnx.LoRA(3, 2, 4, base_module=fnnx.Linear(3, 4, rngs=fnnx.Rngs(1)), rngs=fnnx.Rngs(0))
    randomize(theirs)
    ctx = nnx.Context(0)
    ours = nn.LoRA(3, 2, 4, base_module=nn.Linear(3, 4, ctx=ctx), ctx=ctx)
    parity_with_flax_nnx(theirs, ours, normal((2, 5, 3)))


@pytest.mark.parametrize(
    "options", [dict(), dict(lora_dtype=BF16, use_bias=False), dict(lora_param_dtype=BF16)], ids=str
)
def test_lora_linear_parity_with_flax_nnx_exact(options):
    theirs = fnnx.LoRALinear(3, 4, lora_rank=2, rngs=fnnx.Rngs(0), **options)
    randomize(theirs)
    parity_with_flax_nnx(
        theirs, nn.LoRALinear(3, 4, lora_rank=2, ctx=nnx.Context(0), **options), normal((5, 3))
    )


def test_lora_linear_loads_linear_weights_and_starts_as_the_linear_layer():
    """lora_b starts at zero (flax.nnx's default), so a fresh LoRALinear computes its Linear."""
    layer = nn.LoRALinear(3, 4, lora_rank=2, ctx=nnx.Context(0))
    assert not np.any(layer.lora.lora_b.value)
    variables = plain(linen.Dense(4).init(rbg_key(0), jnp.ones((1, 3))))
    layer.update_state(nnx.from_variables(variables))
    x = normal((2, 3))
    np.testing.assert_array_equal(layer(x), linen.Dense(4).apply(variables, x))


def test_a_type_filter_tells_lora_factors_from_base_weights():
    layer = nn.LoRALinear(3, 4, lora_rank=2, ctx=nnx.Context(0))
    lora, base, _ = layer.partition(nn.LoRAParam, ...)
    assert list(lora) == ["lora/lora_a", "lora/lora_b"]
    assert list(base) == ["bias", "kernel"]
    assert all(v.collection == "params" for v in lora.values())


def test_optax_multi_transform_with_type_labels_trains_only_the_lora_factors():
    layer = nn.LoRALinear(3, 4, lora_rank=2, ctx=nnx.Context(0))
    params, moduledef = layer.partition()
    labels = nnx.labels(params, {"lora": nn.LoRAParam}, default="frozen")
    tx = optax.multi_transform({"lora": optax.sgd(0.5), "frozen": optax.set_to_zero()}, labels)
    opt_state = tx.init(params)
    x, target = normal((8, 3)), normal((8, 4), seed=1)

    @jax.jit
    def step(params: nnx.State, opt_state: tp.Any) -> tuple[nnx.State, tp.Any]:
        def loss(p: nnx.State) -> jax.Array:
            y, _ = moduledef.apply(p)(x)
            return jnp.mean((y - target) ** 2)

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new, opt_state = step(params, opt_state)
    new, _ = step(new, opt_state)  # twice: lora_a only gets a gradient once lora_b is non-zero
    for path in ("kernel", "bias"):
        np.testing.assert_array_equal(new[path].value, params[path].value)
    for path in ("lora/lora_a", "lora/lora_b"):
        assert type(new[path]) is nn.LoRAParam
        assert not np.allclose(new[path].value, params[path].value)


def test_lora_linear_trains_through_to_linen_in_a_train_state():
    model = nnx.to_linen(nn.LoRALinear, 3, 4, lora_rank=2)
    x, target = normal((8, 3)), normal((8, 4), seed=1)
    variables = model.init(rbg_key(0), x)
    assert jax.tree.map(jnp.shape, variables) == {
        "params": {"bias": (4,), "kernel": (3, 4), "lora": {"lora_a": (3, 2), "lora_b": (2, 4)}}
    }
    state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optax.sgd(0.1))

    @jax.jit
    def step(state: train_state.TrainState) -> tuple[train_state.TrainState, jax.Array]:
        def loss(p: tp.Any) -> jax.Array:
            return jnp.mean((state.apply_fn({"params": p}, x) - target) ** 2)

        value, grads = jax.value_and_grad(loss)(state.params)
        return state.apply_gradients(grads=grads), value

    state, first = step(state)
    state, second = step(state)
    assert float(second) < float(first)
    assert np.any(state.params["lora"]["lora_b"])


def test_lora_errors():
    with pytest.raises(
        TypeError,
        match=r"LoRA: lora_param_type must be a Variable class with a fixed "
        r"collection \(such as nnx\.nn\.LoRAParam or nnx\.Param\); found <class "
        r"'nnx_bridge\.variables\.Variable'>\.",
    ):
        nn.LoRA(3, 2, 4, lora_param_type=nnx.Variable, ctx=nnx.Context(0))
    with pytest.raises(TypeError, match=r"LoRA: base_module must be a callable module; found int\."):
        nn.LoRA(3, 2, 4, base_module=3, ctx=nnx.Context(0))  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"LoRA\(in_features=3, lora_rank=2, out_features=4\) expects "
        r"inputs whose last dimension is 3; found shape \(2, 5\)\.",
    ):
        nn.LoRA(3, 2, 4, ctx=nnx.Context(0))(jnp.ones((2, 5)))
