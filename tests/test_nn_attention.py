"""Attention, completed: the pure functions, Linen's mask helpers and `MultiHeadAttention`'s
``attention_fn``, ``sow_weights``, ``dropout_rng`` and ``decode`` (the autoregressive cache),
each compared with Flax Linen.

Every comparison here is bit for bit (``assert_array_equal``): the functions perform
Linen's operations in Linen's order, so there is no rounding difference to allow for.
Layers get Linen's variables (random values in the shapes Linen's ``init`` gives) with
``nnx.from_variables`` + ``update_state``.
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
    assert_equal_trees,
    build_abstract,
    load,
    normal,
    random_like,
    rbg_key,
    weighted_sum,
)

import nnx_bridge as nnx
from nnx_bridge import nn

F32, BF16 = jnp.float32, jnp.bfloat16


# ----------------------------------------------------------------------------------
# the pure functions
# ----------------------------------------------------------------------------------
def qkv(
    batch: tuple[int, ...] = (2,),
    q_len: int = 3,
    kv_len: int = 5,
    heads: int = 2,
    depth: int = 4,
    dtype: tp.Any = F32,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    return (
        normal((*batch, q_len, heads, depth), dtype, 1),
        normal((*batch, kv_len, heads, depth), dtype, 2),
        normal((*batch, kv_len, heads, depth + 1), dtype, 3),
    )


MASK = jnp.asarray(np.random.default_rng(4).random((2, 1, 3, 5)) < 0.7)
BIAS = normal((1, 2, 3, 5), seed=5)
FUNCTION_CASES = {
    "float32, bias and mask": (qkv(), dict(bias=BIAS, mask=MASK)),
    "bfloat16 inputs": (qkv(dtype=BF16), dict(mask=MASK)),
    "dtype=bfloat16, fp32 softmax": (qkv(), dict(dtype=BF16, force_fp32_for_softmax=True)),
    "dropout, broadcast": (qkv(), dict(dropout_rate=0.3, deterministic=False, dropout_rng=rbg_key(7))),
    "dropout, per entry": (
        qkv(),
        dict(dropout_rate=0.3, deterministic=False, broadcast_dropout=False, dropout_rng=rbg_key(7)),
    ),
    "two batch dims, highest precision": (qkv(batch=(2, 3)), dict(precision=jax.lax.Precision.HIGHEST)),
}


@pytest.mark.parametrize("case", list(FUNCTION_CASES))
def test_attention_functions_and_their_gradients_match_linen_bit_for_bit(case):
    (q, k, v), options = FUNCTION_CASES[case]

    def outputs(lib: tp.Any, q: jax.Array, k: jax.Array, v: jax.Array) -> tp.Any:
        def loss(q, k, v):
            out = lib.dot_product_attention(q, k, v, **options)
            weights = lib.dot_product_attention_weights(q, k, **options)
            return weighted_sum(out) + weighted_sum(weights), (out, weights)

        return jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)

    both = jax.jit(lambda q, k, v: (outputs(nn, q, k, v), outputs(linen, q, k, v)))
    ours, theirs = both.lower(q, k, v).compile(FAST_COMPILE)(q, k, v)
    assert_equal_trees(ours, theirs)


def test_attention_functions_take_linens_positional_order():
    q, k, v = qkv()
    key = rbg_key(3)
    positional = nn.dot_product_attention(q, k, v, BIAS, MASK, False, key, 0.5, False, None, None)
    keywords = linen.dot_product_attention(
        q,
        k,
        v,
        bias=BIAS,
        mask=MASK,
        broadcast_dropout=False,
        dropout_rng=key,
        dropout_rate=0.5,
        deterministic=False,
    )
    assert_equal_trees(positional, keywords)
    weights = nn.dot_product_attention_weights(q, k, BIAS, MASK, True, key, 0.5, False)
    assert_equal_trees(weights, linen.dot_product_attention_weights(q, k, BIAS, MASK, True, key, 0.5, False))


def test_attention_functions_take_custom_einsums():
    q, k, v = qkv()

    def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.einsum(spec, a, b, precision=jax.lax.Precision.HIGHEST)

    options = dict(qk_attn_weights_einsum=einsum, attn_weights_value_einsum=einsum)
    assert_equal_trees(
        nn.dot_product_attention(q, k, v, **options), linen.dot_product_attention(q, k, v, **options)
    )
    assert_equal_trees(
        nn.dot_product_attention_weights(q, k, einsum=einsum),
        linen.dot_product_attention_weights(q, k, einsum=einsum),
    )


class WeightsProbe(nnx.Module):
    """Calls the function with ``module=self``, as MultiHeadAttention(sow_weights=True) does."""

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return nn.dot_product_attention(q, k, v, mask=MASK, module=self)


class LinenWeightsProbe(linen.Module):
    @linen.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return linen.dot_product_attention(q, k, v, mask=MASK, module=self)


def test_module_argument_sows_the_weights_as_linen():
    q, k, v = qkv()
    probe = WeightsProbe()
    y = probe(q, k, v)
    y_linen, recorded = LinenWeightsProbe().apply({}, q, k, v, mutable=["intermediates"])
    assert_equal_trees(y, y_linen)
    assert_equal_trees(nnx.to_variables(probe.partition()[0]), recorded)
    assert recorded["intermediates"]["attention_weights"][0].shape == (2, 2, 3, 5)


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda q, k, v: nn.dot_product_attention(q, k, v, dropout_rate=0.1),
            r"dropout_rate=0.1 with deterministic=False needs a dropout_rng key",
        ),
        (
            lambda q, k, v: nn.dot_product_attention_weights(q, k, precision="highest", einsum=jnp.einsum),
            r"got einsum= together with precision= or einsum_dot_general=; they exclude each other",
        ),
        (
            lambda q, k, v: nn.dot_product_attention(q, k, v, qk_attn_weights_einsum=jnp.einsum),
            r"qk_attn_weights_einsum and attn_weights_value_einsum go together",
        ),
        (
            lambda q, k, v: nn.dot_product_attention(
                q,
                k,
                v,
                precision="highest",
                qk_attn_weights_einsum=jnp.einsum,
                attn_weights_value_einsum=jnp.einsum,
            ),
            r"together with precision= or einsum_dot_general=; they exclude each other",
        ),
        (
            lambda q, k, v: nn.dot_product_attention(q, k[0], v),
            r"dot_product_attention: ranks must be equal; found query \(4,\), key \(3,\), value \(4,\)",
        ),
        (
            lambda q, k, v: nn.dot_product_attention(q, k[:, :, :1], v),
            r"batch dimensions and heads must be equal; found query \(2, 2\), key \(2, 1\), value \(2, 2\)",
        ),
        (
            lambda q, k, v: nn.dot_product_attention(q, k, v[:, :4]),
            r"lengths must be equal; found key \(5,\), value \(4,\)",
        ),
        (
            lambda q, k, v: nn.dot_product_attention_weights(q, k[..., :3]),
            r"dot_product_attention_weights: batch dimensions, heads and depths must be equal; found "
            r"query \(2, 2, 4\), key \(2, 2, 3\)",
        ),
    ],
    ids=[
        "no dropout key",
        "einsum and precision",
        "one einsum",
        "einsums and precision",
        "rank",
        "heads",
        "lengths",
        "depths",
    ],
)
def test_attention_function_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(*qkv())


# ----------------------------------------------------------------------------------
# mask helpers
# ----------------------------------------------------------------------------------
TOKENS = jnp.array([[3, 1, 0, 0], [2, 2, 5, 0]])
SEGMENTS = jnp.array([[1, 1, 2, 2], [1, 2, 2, 0]])


@pytest.mark.parametrize(
    "name,args,kwargs",
    [
        ("make_attention_mask", (TOKENS > 0, TOKENS > 0), {}),
        ("make_attention_mask", (SEGMENTS, SEGMENTS, jnp.equal), dict(dtype=jnp.bool_)),
        ("make_attention_mask", (TOKENS[:, :3] > 0, TOKENS > 0), dict(extra_batch_dims=2, dtype=BF16)),
        ("make_causal_mask", (TOKENS,), {}),
        ("make_causal_mask", (TOKENS,), dict(extra_batch_dims=1, dtype=jnp.int32)),
        ("combine_masks", (None, jnp.ones((2, 1, 4, 4)), None, jnp.tril(jnp.ones((1, 1, 4, 4)))), {}),
        ("combine_masks", (TOKENS > 0, SEGMENTS > 1), dict(dtype=jnp.bool_)),
        ("combine_masks", (None, None), {}),
    ],
)
def test_mask_helpers_match_linen(name, args, kwargs):
    ours = getattr(nnx, name)(*args, **kwargs)
    theirs = getattr(linen, name)(*args, **kwargs)
    if theirs is None:
        assert ours is None
    else:
        assert_equal_trees(ours, theirs)


def test_combine_masks_rejects_masks_of_different_rank():
    with pytest.raises(
        ValueError,
        match=r"combine_masks: the masks must have the same rank; found "
        r"ranks \(4, 2\)\. Add singleton axes",
    ):
        nn.combine_masks(jnp.ones((2, 1, 4, 4)), TOKENS > 0)


# ----------------------------------------------------------------------------------
# MultiHeadAttention: outputs and gradients, bit for bit
# ----------------------------------------------------------------------------------
def additive_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None, dtype: tp.Any = None
) -> jax.Array:
    """A custom attention_fn with only some of Linen's keywords: mean of tanh scores."""
    del dtype
    scores = jnp.tanh(jnp.einsum("...qhd,...khd->...hqk", query, key))
    if mask is not None:
        scores = jnp.where(mask, scores, 0.0)
    return jnp.einsum("...hqk,...khd->...qhd", scores / key.shape[-3], value)


def exact_parity(
    linen_layer: linen.Module,
    ours: nnx.Module,
    *inputs: jax.Array,
    linen_call: dict[str, tp.Any],
    our_call: dict[str, tp.Any],
) -> None:
    """Same variable tree; with Linen's variables loaded, bit-for-bit outputs and gradients."""
    variables = random_like(jax.eval_shape(lambda: linen_layer.init(rbg_key(0), *inputs, **linen_call)))
    assert_equal_trees(
        jax.tree.map(jnp.zeros_like, nnx.to_variables(ours.partition()[0])),
        jax.tree.map(jnp.zeros_like, variables),
    )
    load(ours, variables)
    params, moduledef = ours.partition()

    def loss(apply: tp.Callable[..., jax.Array], p: tp.Any, *args: jax.Array) -> tp.Any:
        y = apply(p, *args)
        return weighted_sum(y), y

    def linen_apply(p: tp.Any, *args: jax.Array) -> jax.Array:
        return linen_layer.apply(p, *args, **linen_call)

    def our_apply(p: nnx.State, *args: jax.Array) -> jax.Array:
        return moduledef.apply(p)(*args, **our_call)[0]

    argnums = tuple(range(1, len(inputs) + 2))  # the variables and every input

    def grad(apply: tp.Callable[..., jax.Array], p: tp.Any, *args: jax.Array) -> tp.Any:
        return jax.value_and_grad(loss, argnums, has_aux=True)(apply, p, *args)

    both = jax.jit(lambda v, p, *args: (grad(linen_apply, v, *args), grad(our_apply, p, *args)))
    theirs, mine = both.lower(variables, params, *inputs).compile(FAST_COMPILE)(variables, params, *inputs)
    (_, y_theirs), (g_theirs, *gx_theirs) = theirs
    (_, y_mine), (g_mine, *gx_mine) = mine
    assert_equal_trees(y_mine, y_theirs)
    assert_equal_trees(nnx.to_variables(g_mine), g_theirs)
    assert_equal_trees(gx_mine, gx_theirs)


CAUSAL = nn.make_causal_mask(jnp.zeros((2, 5)))
MHA_CASES = {
    "float32, causal mask": (dict(), dict(mask=CAUSAL), F32),
    "dtype=bfloat16": (dict(dtype=BF16), dict(mask=CAUSAL), F32),
    "bfloat16 params and inputs": (dict(param_dtype=BF16), {}, BF16),
    "custom attention_fn": (
        dict(attention_fn=additive_attention, dropout_rate=0.5),
        dict(mask=CAUSAL, deterministic=True),
        F32,
    ),
    "normalize_qk, no bias, other sizes": (
        dict(normalize_qk=True, use_bias=False, qkv_features=12, out_features=5),
        {},
        F32,
    ),
    "dropout_rng argument": (
        dict(dropout_rate=0.4, broadcast_dropout=False),
        dict(deterministic=False, dropout_rng=rbg_key(9)),
        F32,
    ),
}


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_multi_head_attention_matches_linen_bit_for_bit(case):
    options, call, x_dtype = MHA_CASES[case]
    linen_options = dict(options)
    exact_parity(
        linen.MultiHeadDotProductAttention(num_heads=2, **linen_options),
        build_abstract(lambda: nn.MultiHeadAttention(2, 6, ctx=nnx.Context(0), **options)),
        normal((2, 5, 6), x_dtype),
        linen_call=call,
        our_call=call,
    )


def test_attention_fn_gets_only_the_keywords_it_names():
    seen: list[tuple[str, ...]] = []

    def spy(query, key, value, mask=None, dropout_rate=None, deterministic=None):
        seen.append((mask is None, dropout_rate, deterministic))
        return nn.dot_product_attention(query, key, value)

    x = normal((1, 3, 4))
    nn.MultiHeadAttention(2, 4, attention_fn=spy, ctx=nnx.Context(0))(x)
    nn.MultiHeadAttention(2, 4, attention_fn=spy, dropout_rate=0.5, ctx=nnx.Context(0))(
        x, mask=jnp.ones((1, 1, 3, 3), bool), deterministic=False, ctx=nnx.Context({"dropout": 0})
    )
    # Linen's rule: `deterministic` is True whenever dropout_rate is 0.
    assert seen == [(True, 0.0, True), (False, 0.5, False)]


def test_constructor_takes_flax_nnx_positional_sizes():
    layer = nn.MultiHeadAttention(2, 4, 6, 3, ctx=nnx.Context(0))
    assert (layer.qkv_features, layer.out_features) == (6, 3)
    assert layer(normal((1, 5, 4))).shape == (1, 5, 3)


def test_attention_fn_must_be_callable():
    with pytest.raises(
        TypeError,
        match=r"attention_fn must be a function \(query, key, value, "
        r"\*\*kwargs\) -> array, like nnx_bridge.nn.dot_product_attention; "
        r"found 'softmax'",
    ):
        nn.MultiHeadAttention(2, 4, attention_fn="softmax", ctx=nnx.Context(0))


# ----------------------------------------------------------------------------------
# sow_weights
# ----------------------------------------------------------------------------------
def test_sow_weights_records_linens_intermediates():
    x = normal((2, 3, 4))
    layer = linen.MultiHeadDotProductAttention(num_heads=2)
    variables = layer.init(rbg_key(0), x)
    y_linen, recorded = layer.apply(variables, x, sow_weights=True, mutable=["intermediates"])
    ours = load(nn.MultiHeadAttention(2, 4, ctx=nnx.Context(0)), variables)
    params, moduledef = ours.partition()
    y, (state, _) = moduledef.apply(params)(x, sow_weights=True)
    assert_equal_trees(y, y_linen)
    assert_equal_trees(nnx.to_variables(state.filter("intermediates")), recorded)
    _, (state, _) = moduledef.apply(params)(x)  # sow_weights=False records nothing, as Linen
    assert not state.filter("intermediates")


def test_sow_weights_needs_an_attention_fn_with_a_module_parameter():
    layer = nn.MultiHeadAttention(2, 4, attention_fn=additive_attention, ctx=nnx.Context(0))
    with pytest.raises(
        TypeError,
        match=r"passes module=self to attention_fn so that it can record the "
        r"weights, but 'additive_attention' has no `module` parameter",
    ):
        layer(normal((1, 3, 4)), sow_weights=True)


# ----------------------------------------------------------------------------------
# decode: the autoregressive cache
# ----------------------------------------------------------------------------------
def decode_parity(
    options: dict[str, tp.Any], batch: tuple[int, ...], steps: int, mask: jax.Array | None = None
) -> None:
    """Linen's init then per-token apply, against ours: creating call, then moduledef.apply."""
    features, max_length = 6, steps
    prompt = normal((*batch, max_length, features), seed=11)
    layer = linen.MultiHeadDotProductAttention(num_heads=2, decode=True, **options)
    y_init, variables = jax.jit(layer.init_with_output)(rbg_key(0), prompt)
    params = random_like({"params": variables["params"]})["params"]

    ours = nn.MultiHeadAttention(2, features, decode=True, ctx=nnx.Context(0), **options)
    assert not ours.has_variable("cache", "cached_key")  # made by the first call, not __init__
    load(ours, {"params": variables["params"]})
    built: dict[str, nnx.ModuleDef] = {}

    def create(state: nnx.State, x: jax.Array) -> tp.Any:  # the core's apply may create Variables
        y, (state, built["moduledef"]) = initial_moduledef.apply(state)(x)
        return y, state

    state, initial_moduledef = ours.partition()
    y, state = jax.jit(create)(state, prompt)
    assert_equal_trees(y, y_init)  # the creating call: attention over the whole input, no advance
    assert_equal_trees(nnx.to_variables(state), variables)  # the tree, and a zero cache at index 0
    state = state.merge(nnx.from_variables({"params": params}))
    moduledef = built["moduledef"]

    @jax.jit
    def step(params: tp.Any, cache: tp.Any, state: nnx.State, token: jax.Array) -> tp.Any:
        y_linen, updates = layer.apply(
            {"params": params, "cache": cache}, token, mask=mask, mutable=["cache"]
        )
        y, (state, _) = moduledef.apply(state)(token, mask=mask)
        return (y_linen, updates["cache"]), (y, state)

    cache = variables["cache"]
    tokens = normal((steps, *batch, 1, features), seed=12)
    for token in tokens:
        (y_linen, cache), (y, state) = step(params, cache, state, token)
        assert_equal_trees(y, y_linen)
        assert_equal_trees(nnx.to_variables(state.filter("cache"))["cache"], cache)
    assert int(cache["cache_index"]) == steps
    assert not np.any(np.asarray(cache["cached_key"], np.float32) == 0.0)  # every position written


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_decode_matches_linen_bit_for_bit_over_twelve_steps(dtype):
    decode_parity(dict(dtype=dtype), batch=(2,), steps=12)


def test_decode_with_two_batch_dims_normalize_qk_and_a_padding_mask():
    mask = jnp.asarray(np.random.default_rng(3).random((2, 3, 1, 1, 10)) < 0.8).at[..., 0].set(True)
    decode_parity(dict(normalize_qk=True, qkv_features=8), batch=(2, 3), steps=10, mask=mask)


def test_decode_call_argument_overrides_the_constructor():
    layer = nn.MultiHeadAttention(2, 4, ctx=nnx.Context(0))
    layer(normal((1, 5, 4)), decode=True)
    assert layer.cached_value.value.shape == (1, 5, 2, 2) and int(layer.cache_index.value) == 0
    layer(normal((1, 1, 4)), decode=True)
    assert int(layer.cache_index.value) == 1
    layer(normal((1, 5, 4)))  # decode=False: the cache is left alone
    assert int(layer.cache_index.value) == 1


def test_init_cache_gives_the_cache_of_linens_first_call():
    x, token = normal((2, 6, 4)), normal((2, 1, 4), seed=1)
    layer = linen.MultiHeadDotProductAttention(num_heads=2, decode=True)
    variables = layer.init(rbg_key(0), x)
    ours = load(nn.MultiHeadAttention(2, 4, decode=True, ctx=nnx.Context(0)), {"params": variables["params"]})
    ours.init_cache(x.shape)
    assert_equal_trees(nnx.to_variables(ours.partition()[0]), variables)
    for _ in range(2):  # a second init_cache resets the cache
        y_linen, _ = layer.apply(variables, token, mutable=["cache"])
        assert_equal_trees(ours(token), y_linen)
        ours.init_cache(x.shape)
    with pytest.raises(
        ValueError,
        match=r"init_cache expects the shape of a full-length input, "
        r"\(batch..., max_length, 4\); found \(4,\)",
    ):
        ours.init_cache((4,))


def test_decode_step_with_a_wrong_shape_raises():
    layer = nn.MultiHeadAttention(2, 4, decode=True, ctx=nnx.Context(0))
    layer(normal((3, 8, 4)))
    with pytest.raises(
        ValueError,
        match=(
            r"the cache holds keys of shape \(3, 8, 2, 2\) \(batch..., max_length, num_heads, head_dim\), "
            r"so each decoding call takes one token: queries of shape \(3, 1, 2, 2\), from inputs of "
            r"shape \(3, 1, 4\); found queries of shape \(3, 2, 2, 2\)"
        ),
    ):
        layer(normal((3, 2, 4)))


# ----------------------------------------------------------------------------------
# through the bridge, in a jitted TrainState step
# ----------------------------------------------------------------------------------
def train_step_both(
    our_model: linen.Module,
    linen_model: linen.Module,
    x: jax.Array,
    mutable: tuple[str, ...] = (),
    **call: tp.Any,
) -> None:
    """One jitted TrainState step on each side from the same variables: the same loss, new
    params and (with ``mutable``) the same updated collections, bit for bit."""
    variables = our_model.init(rbg_key(0), x, **call)
    assert_equal_trees(
        jax.tree.map(jnp.zeros_like, variables),
        jax.tree.map(jnp.zeros_like, linen_model.init(rbg_key(0), x, **call)),
    )

    @jax.jit
    def step(state: train_state.TrainState, x: jax.Array, key: jax.Array) -> tp.Any:
        def loss_fn(params: tp.Any) -> tp.Any:
            y, updates = state.apply_fn(
                {"params": params}, x, rngs={"dropout": key}, mutable=list(mutable), **call
            )
            return weighted_sum(y), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), loss, updates

    results = []
    for model in (our_model, linen_model):
        state = train_state.TrainState.create(
            apply_fn=model.apply, params=variables["params"], tx=optax.sgd(0.1)
        )
        args = (state, x, rbg_key(1))
        state, loss, updates = step.lower(*args).compile(FAST_COMPILE)(*args)
        results.append((loss, state.params, updates))
    assert_equal_trees(results[0], results[1])
    if mutable:
        assert set(results[0][2]) == set(mutable)


def test_bridged_attention_with_attention_fn_masks_and_dropout_in_a_train_step():
    tokens = jnp.array([[4, 2, 7, 0], [1, 3, 0, 0]])
    mask = nn.combine_masks(nn.make_attention_mask(tokens > 0, tokens > 0), nn.make_causal_mask(tokens))
    options = dict(dropout_rate=0.25, deterministic=False, attention_fn=additive_attention)
    train_step_both(
        nnx.to_linen(nn.MultiHeadAttention, 2, 6, **options),
        linen.MultiHeadDotProductAttention(num_heads=2, **options),
        normal((2, 4, 6)),
        mask=mask,
    )


def test_bridged_attention_sows_its_weights_in_a_train_step():
    options = dict(dropout_rate=0.25, deterministic=False)  # the weights are recorded before dropout
    train_step_both(
        nnx.to_linen(nn.MultiHeadAttention, 2, 6, **options),
        linen.MultiHeadDotProductAttention(num_heads=2, **options),
        normal((2, 4, 6)),
        mutable=("intermediates",),
        mask=CAUSAL[:, :, :4, :4],
        sow_weights=True,
    )


def test_bridged_decode_needs_the_cache_that_init_made():
    model = nnx.to_linen(nn.MultiHeadAttention, 2, 6, decode=True)
    variables = model.init(rbg_key(0), normal((2, 5, 6)))
    token = normal((2, 1, 6))
    with pytest.raises(
        KeyError,
        match=r"missing variable 'cache/cached_key': MultiHeadAttention.variable\("
        r"'cache', 'cached_key', ...\) would have to create it during apply",
    ):
        model.apply({"params": variables["params"]}, token, mutable=["cache"])
    with pytest.raises(
        ValueError,
        match=r"the module updated 'cache/cache_index', but collection 'cache' is "
        r"not mutable. Pass mutable=\['cache'\]",
    ):
        model.apply(variables, token)


class LinenParent(linen.Module):
    """A Linen model whose attention is Linen's, or a bridged nnx_bridge one under the same name."""

    bridged: bool

    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = linen.Dense(6)(x)
        if self.bridged:
            return nnx.to_linen(nn.MultiHeadAttention, 2, 6, decode=True, name="attention")(x)
        return linen.MultiHeadDotProductAttention(2, decode=True, name="attention")(x)


def test_bridged_decode_nested_in_a_linen_parent():
    prompt, tokens = normal((2, 5, 3)), normal((3, 2, 1, 3), seed=1)
    variables = LinenParent(bridged=True).init(rbg_key(0), prompt)
    assert_equal_trees(variables["cache"], LinenParent(bridged=False).init(rbg_key(0), prompt)["cache"])

    @jax.jit
    def step(params: tp.Any, caches: tp.Any, token: jax.Array) -> tp.Any:
        return [
            LinenParent(bridged=b).apply({"params": params, "cache": c}, token, mutable=["cache"])
            for b, c in zip((True, False), caches, strict=True)
        ]

    caches = (variables["cache"], variables["cache"])
    for token in tokens:
        (y, ours), (y_linen, theirs) = step(variables["params"], caches, token)
        assert_equal_trees((y, ours), (y_linen, theirs))
        caches = (ours["cache"], theirs["cache"])
    assert int(caches[0]["attention"]["cache_index"]) == 3
