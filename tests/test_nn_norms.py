"""GroupNorm, InstanceNorm, WeightNorm and SpectralNorm against Flax Linen.

For each configuration: Linen's ``init`` gives the variable tree (names, shapes,
dtypes), which must equal ours; Linen's variables (random values in those
shapes) loaded into ours give outputs, gradients (params and input) and updated
statistics that are bit-for-bit Linen's where the arithmetic is the same
operations in the same order (``EXACT``), else within 1e-6 relative in float32
(``CLOSE``). Each test names which. Each layer also trains one jitted
`TrainState` step through `nnx.to_linen`, from the same variables as Linen.
"""

from __future__ import annotations

import typing as tp

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from helpers import (
    FAST_COMPILE,
    assert_same_layout,
    build_abstract,
    load,
    normal,
    plain,
    random_like,
    rbg_key,
    weighted_sum,
)

import nnx_bridge as nnx
from nnx_bridge import nn

F32, BF16 = jnp.float32, jnp.bfloat16
EXACT, CLOSE = "exact", "close"


def assert_match(ours: tp.Any, theirs: tp.Any, how: str) -> None:
    """Same layout; equal bits (EXACT), or within 1e-6 relative in float32 (CLOSE)."""
    assert_same_layout(ours, theirs)
    for a, b in zip(jax.tree.leaves(plain(ours)), jax.tree.leaves(plain(theirs)), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if how == EXACT:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.abs(b).max(initial=1.0)))


def parity(
    linen_layer: linen.Module,
    make_ours: tp.Callable[[], nnx.Module],
    x: jax.Array,
    how: str,
    call: dict[str, tp.Any] | None = None,
    mutable: tuple[str, ...] = (),
) -> None:
    call = call or {}
    shapes = jax.eval_shape(lambda k, x: linen_layer.init(k, x, **call), rbg_key(0), x)
    variables = random_like(shapes)
    if "batch_stats" in variables:  # SpectralNorm's u: any direction; sigma: positive
        variables["batch_stats"] = jax.tree.map(lambda v: v - 1.0 if v.ndim else v, variables["batch_stats"])
    ours = build_abstract(make_ours)
    assert_same_layout(nnx.to_variables(ours.partition()[0]), shapes)
    load(ours, variables)
    params, rest, moduledef = ours.partition("params", ...)
    linen_rest = {c: v for c, v in variables.items() if c != "params"}

    def linen_loss(p: tp.Any, x: jax.Array) -> tp.Any:
        out = linen_layer.apply({"params": p, **linen_rest}, x, mutable=list(mutable) or False, **call)
        y, updates = out if mutable else (out, {})
        return weighted_sum(y), (y, plain(updates))

    def our_loss(p: nnx.State, x: jax.Array) -> tp.Any:
        y, (state, _) = moduledef.apply(p, rest)(x, **call)
        return weighted_sum(y), (y, nnx.to_variables(state.filter(*mutable)) if mutable else {})

    @jax.jit
    def both(linen_params: tp.Any, our_params: nnx.State, x: jax.Array) -> tp.Any:
        return (
            jax.value_and_grad(linen_loss, (0, 1), has_aux=True)(linen_params, x),
            jax.value_and_grad(our_loss, (0, 1), has_aux=True)(our_params, x),
        )

    args = (variables["params"], params, x)
    (linen_out, linen_grads), (our_out, our_grads) = both.lower(*args).compile(FAST_COMPILE)(*args)
    assert_match(our_out[1], linen_out[1], how)  # outputs and updated statistics
    assert_match(nnx.to_variables(our_grads[0])["params"], linen_grads[0], how)
    assert_match(our_grads[1], linen_grads[1], how)


def ctx() -> nnx.Context:
    return nnx.Context(0)


# ----------------------------------------------------------------------------------
# GroupNorm / InstanceNorm: the same operations as Linen's, so bit for bit.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options,x_dtype",
    [
        (dict(num_groups=3), F32),
        (dict(num_groups=None, group_size=2, epsilon=1e-3, use_bias=False), F32),
        (dict(num_groups=2, dtype=BF16, param_dtype=BF16), F32),
        (dict(num_groups=6, use_scale=False, use_fast_variance=False), BF16),
        (dict(num_groups=1, reduction_axes=(2, -1)), F32),
    ],
    ids=str,
)
def test_group_norm_parity_exact(options, x_dtype):
    parity(
        linen.GroupNorm(**options),
        lambda: nn.GroupNorm(6, ctx=ctx(), **options),
        normal((2, 3, 4, 6), x_dtype) * 2 + 1,
        EXACT,
    )


@pytest.mark.parametrize(
    "options,shape,num_features",
    [
        (dict(), (2, 5, 3), 3),
        (dict(dtype=BF16, epsilon=1e-3), (2, 4, 4, 3), 3),
        (dict(feature_axes=(1, -1), use_bias=False), (2, 3, 4, 5), (3, 5)),
        (dict(feature_axes=1, use_fast_variance=False), (3, 4, 5), 4),
    ],
    ids=str,
)
def test_instance_norm_parity_exact(options, shape, num_features):
    parity(
        linen.InstanceNorm(**options),
        lambda: nn.InstanceNorm(num_features, ctx=ctx(), **options),
        normal(shape) * 3 - 1,
        EXACT,
    )


def test_group_norm_mask_exact():
    x = normal((2, 5, 4))
    mask = np.random.default_rng(4).random((2, 5, 4)) < 0.7
    layer = nn.GroupNorm(4, num_groups=2, ctx=ctx())
    variables = random_like(jax.eval_shape(linen.GroupNorm(num_groups=2).init, rbg_key(0), x))
    load(layer, variables)
    np.testing.assert_array_equal(
        layer(x, mask=mask), linen.GroupNorm(num_groups=2).apply(variables, x, mask=mask)
    )


# ----------------------------------------------------------------------------------
# WeightNorm / SpectralNorm: the same operations as Linen's, so bit for bit.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(variable_filter=None, feature_axes=None, epsilon=1e-6),
        dict(dtype=BF16, param_dtype=BF16),
        dict(use_scale=False, variable_filter={"bias"}),
    ],
    ids=str,
)
def test_weight_norm_dense_parity_exact(options):
    parity(
        linen.WeightNorm(linen.Dense(4), **options),
        lambda: nn.WeightNorm(nn.Linear(3, 4, ctx=ctx()), ctx=ctx(), **options),
        normal((2, 3)),
        EXACT,
    )


def test_weight_norm_covers_every_collection_of_the_layer_exact():
    """Linen maps all the layer's collections: with no filter, batch statistics get scales too."""
    x = normal((4, 3))
    theirs = linen.WeightNorm(linen.BatchNorm(use_running_average=True), variable_filter=None)
    variables = random_like(jax.eval_shape(theirs.init, rbg_key(0), x))
    ours = nn.WeightNorm(
        nn.BatchNorm(3, use_running_average=True, ctx=ctx()), variable_filter=None, ctx=ctx()
    )
    assert_same_layout(nnx.to_variables(ours.partition()[0]), variables)
    assert "layer_instance/mean/scale" in variables["params"]
    load(ours, variables)
    np.testing.assert_array_equal(ours(x), theirs.apply(variables, x))


def test_weight_norm_conv_feature_axes_exact():
    options = dict(feature_axes=(2, 3))
    parity(
        linen.WeightNorm(linen.Conv(4, (3, 3)), **options),
        lambda: nn.WeightNorm(nn.Conv(2, 4, (3, 3), ctx=ctx()), ctx=ctx(), **options),
        normal((2, 5, 5, 2)),
        EXACT,
    )


@pytest.mark.parametrize(
    "update_stats,options",
    [
        (True, dict()),
        (False, dict(n_steps=3, epsilon=1e-6)),
        (True, dict(dtype=BF16)),
        (True, dict(collection_name="spectral")),
    ],
    ids=str,
)
def test_spectral_norm_dense_parity_exact(update_stats, options):
    collection = options.get("collection_name", "batch_stats")
    parity(
        linen.SpectralNorm(linen.Dense(4), **options),
        lambda: nn.SpectralNorm(nn.Linear(3, 4, ctx=ctx()), ctx=ctx(), **options),
        normal((2, 3)),
        EXACT,
        call=dict(update_stats=update_stats),
        mutable=(collection,) if update_stats else (),
    )


def test_spectral_norm_conv_flattens_the_kernel_exact():
    parity(
        linen.SpectralNorm(linen.Conv(3, (2, 2))),
        lambda: nn.SpectralNorm(nn.Conv(2, 3, (2, 2), ctx=ctx()), ctx=ctx()),
        normal((2, 4, 4, 2)),
        EXACT,
        call=dict(update_stats=True),
        mutable=("batch_stats",),
    )


def test_wrapper_trees_as_linen_init_stores_them():
    """Linen's init stores the wrapped kernel normalised, in the result dtype: so do we."""
    x = jnp.ones((2, 3))
    for linen_layer, make, call in [
        (
            linen.WeightNorm(linen.Dense(4), dtype=BF16),
            lambda: nn.WeightNorm(nn.Linear(3, 4, ctx=ctx()), dtype=BF16, ctx=ctx()),
            {},
        ),
        (
            linen.SpectralNorm(linen.Dense(4), dtype=BF16),
            lambda: nn.SpectralNorm(nn.Linear(3, 4, ctx=ctx()), dtype=BF16, ctx=ctx()),
            dict(update_stats=False),
        ),
    ]:
        theirs = jax.eval_shape(lambda k, layer=linen_layer, call=call: layer.init(k, x, **call), rbg_key(0))
        mine = jax.eval_shape(lambda make=make: nnx.to_variables(make().partition()[0]))
        assert_same_layout(mine, theirs)
        assert mine["params"]["layer_instance"]["kernel"].dtype == BF16
    wn = nn.WeightNorm(nn.Linear(3, 4, ctx=ctx()), ctx=ctx())
    np.testing.assert_allclose(jnp.linalg.norm(wn.layer_instance.kernel.value, axis=0), 1.0, rtol=1e-6)


def test_wrappers_restore_the_raw_weights_after_a_call():
    layer = nn.Linear(3, 4, ctx=ctx())
    sn = nn.SpectralNorm(layer, ctx=ctx())
    kernel = layer.kernel.value
    u = sn.__dict__["layer_instance/kernel/u"].value
    sn(jnp.ones((1, 3)), update_stats=False)
    assert layer.kernel.value is kernel and sn.__dict__["layer_instance/kernel/u"].value is u
    sn(jnp.ones((1, 3)))  # update_stats defaults to the constructor's True
    assert layer.kernel.value is kernel and sn.__dict__["layer_instance/kernel/u"].value is not u


# ----------------------------------------------------------------------------------
# Round trips of the Linen trees with keys containing "/"
# ----------------------------------------------------------------------------------
def test_wrapper_variables_round_trip_through_from_and_to_variables():
    x = normal((2, 3))
    for linen_layer, call in [
        (linen.WeightNorm(linen.Dense(4)), {}),
        (linen.SpectralNorm(linen.Dense(4)), dict(update_stats=True)),
    ]:
        variables = plain(linen_layer.init(rbg_key(1), x, **call))
        assert nnx.to_variables(nnx.from_variables(variables)) == variables


# ----------------------------------------------------------------------------------
# One jitted TrainState step through to_linen, from the variables Linen starts from
# ----------------------------------------------------------------------------------
class StatsState(train_state.TrainState):
    stats: tp.Any


def train_step_matches(
    linen_model: linen.Module,
    bridged: linen.Module,
    x: jax.Array,
    call: dict[str, tp.Any] | None = None,
    mutable: tuple[str, ...] = (),
) -> None:
    call = call or {}
    variables = random_like(jax.eval_shape(lambda k: linen_model.init(k, x, **call), rbg_key(0)))
    assert_same_layout(jax.eval_shape(lambda k: bridged.init(k, x, **call), rbg_key(0)), variables)
    stats = {c: v for c, v in variables.items() if c != "params"}

    @jax.jit
    def step(state: StatsState, x: jax.Array) -> tuple[StatsState, jax.Array]:
        def loss_fn(params: tp.Any) -> tp.Any:
            out = state.apply_fn({"params": params, **state.stats}, x, mutable=list(mutable) or False, **call)
            y, updates = out if mutable else (out, {})
            return jnp.mean(jnp.square(y.astype(F32) - 1.0)), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads).replace(stats={**state.stats, **updates}), loss

    results = []
    for model in (linen_model, bridged):
        state = StatsState.create(
            apply_fn=model.apply, params=variables["params"], stats=stats, tx=optax.sgd(0.1)
        )
        results.append(step(state, x))
    (linen_state, linen_loss), (our_state, our_loss) = results
    assert float(our_loss) == float(linen_loss)
    assert_match(plain(our_state.params), plain(linen_state.params), EXACT)
    assert_match(plain(our_state.stats), plain(linen_state.stats), EXACT)
    assert not np.allclose(jax.tree.leaves(our_state.params)[0], jax.tree.leaves(variables["params"])[0])


def test_group_and_instance_norm_train_through_to_linen():
    x = normal((2, 3, 6))
    train_step_matches(linen.GroupNorm(num_groups=2), nnx.to_linen(nn.GroupNorm, 6, num_groups=2), x)
    train_step_matches(linen.InstanceNorm(), nnx.to_linen(nn.InstanceNorm, 6), x)


def _weight_norm(ctx: nnx.Context) -> nn.WeightNorm:
    return nn.WeightNorm(nn.Linear(3, 4, ctx=ctx), ctx=ctx)


def _spectral_norm(ctx: nnx.Context) -> nn.SpectralNorm:
    return nn.SpectralNorm(nn.Linear(3, 4, ctx=ctx), ctx=ctx)


def test_weight_norm_trains_through_to_linen():
    train_step_matches(linen.WeightNorm(linen.Dense(4)), nnx.to_linen(_weight_norm), normal((2, 3)))


def test_spectral_norm_trains_through_to_linen_with_mutable_batch_stats():
    train_step_matches(
        linen.SpectralNorm(linen.Dense(4)),
        nnx.to_linen(_spectral_norm),
        normal((2, 3)),
        call=dict(update_stats=True),
        mutable=("batch_stats",),
    )


def test_spectral_norm_update_needs_a_mutable_collection_through_to_linen():
    model = nnx.to_linen(_spectral_norm)
    x = jnp.ones((1, 3))
    variables = model.init(rbg_key(0), x, update_stats=False)
    model.apply(variables, x, update_stats=False)  # evaluation: nothing written
    with pytest.raises(
        ValueError,
        match=r"the module updated 'batch_stats/layer_instance/kernel/sigma', "
        r"but collection 'batch_stats' is not mutable\. Pass mutable=\['batch_stats'\]",
    ):
        model.apply(variables, x, update_stats=True)


# ----------------------------------------------------------------------------------
# Errors for bad configurations
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(num_groups=None),
            r"GroupNorm: give exactly one of num_groups and group_size; found "
            r"num_groups=None, group_size=None\. To give group_size, pass num_groups=None as well",
        ),
        (
            dict(group_size=2),
            r"give exactly one of num_groups and group_size; found num_groups=32, group_size=2",
        ),
        (
            dict(num_groups=4),
            r"GroupNorm: the number of groups \(4\) does not divide num_features \(6\)\. "
            r"Pick num_groups dividing 6",
        ),
        (
            dict(num_groups=None, group_size=4),
            r"GroupNorm: num_features \(6\) is not a multiple of the "
            r"group size \(4\)\. Pick a group_size that divides 6\.",
        ),
        (dict(num_groups=0), r"the number of groups \(0\) does not divide"),
    ],
)
def test_group_norm_configuration_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.GroupNorm(6, ctx=ctx(), **kwargs)


def test_group_norm_call_errors():
    layer = nn.GroupNorm(6, num_groups=2, reduction_axes=(1,), ctx=ctx())
    with pytest.raises(
        ValueError,
        match=r"GroupNorm: reduction_axes=\(1,\) must include the last axis "
        r"\(the channel axis\) of the 3-D input; add -1 to them\.",
    ):
        layer(jnp.ones((2, 3, 6)))
    with pytest.raises(
        ValueError,
        match=r"GroupNorm\(num_features=6\) expects the last axis of its "
        r"input to have size 6; found shape \(2, 5\)\.",
    ):
        layer(jnp.ones((2, 5)))
    with pytest.raises(
        NotImplementedError, match=r"GroupNorm: axis_index_groups=\[\[0, 1\]\] is not supported"
    ):
        nn.GroupNorm(6, num_groups=2, axis_index_groups=[[0, 1]], ctx=ctx())


def test_instance_norm_errors():
    with pytest.raises(
        ValueError,
        match=r"InstanceNorm: feature_axes=\(1, 0\) include axis 0 of the 3-D "
        r"input, which is the batch axis\.",
    ):
        nn.InstanceNorm((2, 3), feature_axes=(1, 0), ctx=ctx())(jnp.ones((2, 3, 4)))
    with pytest.raises(
        ValueError,
        match=r"InstanceNorm: num_features=3 must give one size per feature "
        r"axis of feature_axes=\(1, 2\); pass a tuple of 2 sizes\.",
    ):
        nn.InstanceNorm(3, feature_axes=(1, 2), ctx=ctx())
    with pytest.raises(
        ValueError,
        match=r"InstanceNorm\(num_features=\(3,\)\) expects feature axes "
        r"\(2,\) of sizes \(3,\); found \(4,\) in shape \(2, 3, 4\)\.",
    ):
        nn.InstanceNorm(3, ctx=ctx())(jnp.ones((2, 3, 4)))


def test_wrapper_errors():
    with pytest.raises(
        ValueError,
        match=r"SpectralNorm: the variable 'layer_instance/kernel' is 4-D "
        r"\(shape \(2, 2, 2, 3\)\) but error_on_non_matrix is True\. Pass "
        r"error_on_non_matrix=False to normalise it as a matrix of shape \(-1, 3\)",
    ):
        nn.SpectralNorm(nn.Conv(2, 3, (2, 2), ctx=ctx()), error_on_non_matrix=True, ctx=ctx())
    with pytest.raises(
        TypeError,
        match=r"WeightNorm: variable_filter='kernel' is one string; Linen reads "
        r"it as a collection of names .* Pass \{'kernel'\} instead\.",
    ):
        nn.WeightNorm(nn.Linear(3, 4, ctx=ctx()), variable_filter="kernel", ctx=ctx())
    with pytest.raises(
        ValueError,
        match=r"WeightNorm: feature_axes=\(2,\) do not fit the 2-D variable "
        r"'layer_instance/kernel'\.",
    ):
        nn.WeightNorm(nn.Linear(3, 4, ctx=ctx()), feature_axes=2, ctx=ctx())
    with pytest.raises(
        TypeError,
        match=r"WeightNorm wraps a layer instance \(an nnx_bridge Module\); "
        r"found Dense\. Build the layer first",
    ):
        nn.WeightNorm(linen.Dense(3), ctx=ctx())  # type: ignore[arg-type]
