"""Helpers shared by the test modules (one place; test modules import nothing from each other).

Parity helpers compare a layer of `nnx_bridge.nn` with its Linen twin; the State
helpers compare States and Variables exactly (types, metadata, values, dtypes).
"""

from __future__ import annotations

import re
import typing as tp

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_bridge as nnx

F32, BF16 = jnp.float32, jnp.bfloat16


def assert_variables_equal(a: tp.Any, b: tp.Any, path: str) -> None:
    """The same Variable subclass, metadata (collection, sharding, ...), values and dtypes."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    assert isinstance(a, nnx.Variable), f"{path}: not a Variable: {a!r}"
    assert {k: v for k, v in vars(a).items() if k != "value"} == {
        k: v for k, v in vars(b).items() if k != "value"
    }, f"{path}: metadata differs: {vars(a)} != {vars(b)}"
    assert type(a.value) is type(b.value) or (hasattr(a.value, "dtype") and hasattr(b.value, "dtype")), (
        f"{path}: value types {type(a.value).__name__} != {type(b.value).__name__}"
    )
    np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), err_msg=path)
    assert np.asarray(a.value).dtype == np.asarray(b.value).dtype, path


def assert_states_equal(a: tp.Any, b: tp.Any) -> None:
    """Two States with the same paths in the same order, and equal Variables."""
    assert type(a) is nnx.State and type(b) is nnx.State, (type(a), type(b))
    assert list(a) == list(b)
    for path in a:
        assert_variables_equal(a[path], b[path], path)


FAST_COMPILE = {"xla_backend_optimization_level": 0}  # both sides alike; compiles ~20% faster


def rbg_key(seed: int) -> jax.Array:
    """An 'rbg' PRNG key. Layers treat every key type alike; XLA compiles random bits from
    it in a fraction of the time threefry's take on CPU (~3 s per program and shape)."""
    return jax.random.key(seed, impl="rbg")


def plain(tree: tp.Any) -> tp.Any:
    """Nested Mappings (FrozenDict included) as plain dicts."""
    if isinstance(tree, tp.Mapping):
        return {k: plain(v) for k, v in tree.items()}
    return tree


def tolerance(dtype: tp.Any) -> dict[str, float]:
    if jnp.dtype(dtype) == jnp.bfloat16:
        return dict(rtol=2e-2, atol=2e-2)
    return dict(rtol=1e-5, atol=1e-6)


def assert_same_layout(ours: tp.Any, theirs: tp.Any) -> None:
    """Same tree structure, and leaves of the same shape and dtype."""
    ours, theirs = plain(ours), plain(theirs)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs), (
        jax.tree.map(jnp.shape, ours),
        jax.tree.map(jnp.shape, theirs),
    )
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert (jnp.shape(a), jnp.result_type(a)) == (jnp.shape(b), jnp.result_type(b))


def assert_trees_close(ours: tp.Any, theirs: tp.Any) -> None:
    assert_same_layout(ours, theirs)
    for a, b in zip(jax.tree.leaves(plain(ours)), jax.tree.leaves(plain(theirs)), strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), **tolerance(jnp.result_type(b))
        )


def random_like(shapes: tp.Any, seed: int = 1) -> tp.Any:
    """Random values for Linen's variable shapes: normal params, positive batch statistics."""
    rng = np.random.default_rng(seed)
    return {
        collection: jax.tree.map(
            lambda leaf, collection=collection: jnp.asarray(
                rng.uniform(0.5, 1.5, leaf.shape)
                if collection == "batch_stats"
                else 0.5 * rng.standard_normal(leaf.shape),
                leaf.dtype,
            ),
            tree,
        )
        for collection, tree in plain(shapes).items()
    }


def load(module: nnx.Module, variables: tp.Any) -> nnx.Module:
    """Loads Linen variables into an nnx_bridge module, the documented way."""
    module.update_state(nnx.from_variables(variables))
    return module


def build_abstract(make: tp.Callable[[], nnx.Module]) -> nnx.Module:
    """``make()``, built under `jax.eval_shape`: its Variables hold ShapeDtypeStructs.

    The constructor (initialisers included) is traced but never compiled or run,
    which keeps these tests fast; `load` then replaces every value.
    """
    built: dict[str, tp.Any] = {}

    def build() -> nnx.State:
        state, built["moduledef"] = make().partition()
        return state

    abstract_state = jax.eval_shape(build)
    return built["moduledef"].merge(abstract_state)


def weighted_sum(y: jax.Array) -> jax.Array:
    """A scalar whose gradient is a fixed random cotangent (so every output entry matters)."""
    cotangent = np.random.default_rng(42).standard_normal(y.shape).astype(np.float32)
    return jnp.sum(y.astype(F32) * cotangent)


def check_parity(
    linen_layer: linen.Module,
    make_ours: tp.Callable[[], nnx.Module],
    *inputs: tp.Any,
    call: dict[str, tp.Any] | None = None,
    linen_call: dict[str, tp.Any] | None = None,
    our_call: dict[str, tp.Any] | None = None,
    init_call: dict[str, tp.Any] | None = None,
    mutable: tuple[str, ...] = (),
    method: str | None = None,
    init_inputs: tuple[tp.Any, ...] | None = None,
    exact: bool = False,
    values: str = "random",
) -> None:
    """Layout, outputs, gradients (params and float inputs) and mutated collections agree.

    Linen's variables are loaded into ``make_ours()`` with ``nnx.from_variables``
    + ``update_state``. With ``values="random"`` they are random values in the
    shapes Linen's ``init`` gives (so zero biases and unit scales cannot hide a
    bug); with ``values="init"`` they are what ``init`` returns. With ``exact``,
    outputs must be bit-for-bit equal.
    """
    call = call or {}
    linen_call = call if linen_call is None else linen_call
    our_call = call if our_call is None else our_call
    init_call = linen_call if init_call is None else init_call
    linen_method = None if method is None else getattr(type(linen_layer), method)
    init_method = None if init_inputs is not None else linen_method

    def init(key: jax.Array, *args: tp.Any) -> tp.Any:
        return linen_layer.init(key, *args, method=init_method, **init_call)

    # An 'rbg' root key: with threefry keys, compiling Linen's init takes ~10 s on CPU.
    init_args = (rbg_key(0), *(init_inputs or inputs))
    if values == "init":
        variables = plain(jax.jit(init)(*init_args))
    else:
        variables = random_like(jax.eval_shape(init, *init_args))
    ours = build_abstract(make_ours)
    assert_same_layout(nnx.to_variables(ours.partition()[0]), variables)
    load(ours, variables)
    params, rest, moduledef = ours.partition("params", ...)
    linen_rest = {c: v for c, v in variables.items() if c != "params"}

    def linen_loss(p: tp.Any, *args: tp.Any) -> tp.Any:
        out = linen_layer.apply(
            {"params": p, **linen_rest},
            *args,
            method=linen_method,
            mutable=list(mutable) if mutable else False,
            **linen_call,
        )
        y, updates = out if mutable else (out, {})
        return weighted_sum(y), (y, plain(updates))

    def our_loss(p: nnx.State, *args: tp.Any) -> tp.Any:
        apply = moduledef.apply(p, rest)
        y, (state, _) = (getattr(apply, method) if method else apply)(*args, **our_call)
        return weighted_sum(y), (y, nnx.to_variables(state.filter(*mutable)) if mutable else {})

    argnums = (0,) + tuple(
        1 + i for i, x in enumerate(inputs) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    )

    @jax.jit  # one compilation for both sides, instead of one per primitive
    def both(linen_params: tp.Any, our_params: nnx.State, *args: tp.Any) -> tp.Any:
        return (
            jax.value_and_grad(linen_loss, argnums, has_aux=True)(linen_params, *args),
            jax.value_and_grad(our_loss, argnums, has_aux=True)(our_params, *args),
        )

    args = (variables.get("params", {}), params, *inputs)
    compiled = both.lower(*args).compile(FAST_COMPILE)
    ((_, (y_linen, upd_linen)), g_linen), ((_, (y_ours, upd_ours)), g_ours) = compiled(*args)
    assert_trees_close(y_ours, y_linen)
    if exact:
        np.testing.assert_array_equal(np.asarray(y_ours, np.float32), np.asarray(y_linen, np.float32))
    assert_trees_close(upd_ours, upd_linen)
    assert_trees_close(nnx.to_variables(g_ours[0]).get("params", {}), g_linen[0])
    assert_trees_close(g_ours[1:], g_linen[1:])


def normal(shape: tuple[int, ...], dtype: tp.Any = F32, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def replay(key: jax.Array, stream: str = "dropout", draws: int = 1) -> list[jax.Array]:
    """The keys ``nnx.Context({stream: key})`` hands out, in order: given to Linen directly."""
    ctx = nnx.Context({stream: key})
    return [ctx.make_rng(stream) for _ in range(draws)]


def fed(init: tp.Callable[..., jax.Array], keys: tp.Iterator[jax.Array]) -> tp.Callable[..., jax.Array]:
    """`init` called with the next key of `keys` instead of the key Linen derives."""
    return lambda _key, shape, dtype=F32: init(next(keys), shape, dtype)


def linen_params_from_our_keys(
    make_linen: tp.Callable[..., linen.Module],
    key: jax.Array,
    draws: int,
    *inputs: jax.Array,
    **init_names: tp.Any,
) -> tp.Any:
    """Linen's params when its initialisers get, in Linen's creation order, the keys our
    ``Context(key)`` hands out. ``init_names`` maps each init attribute to Linen's default."""
    keys = iter(replay(key, "params", draws))
    layer = make_linen(**{name: fed(init, keys) for name, init in init_names.items()})
    variables = plain(layer.init(rbg_key(123), *inputs))
    assert next(keys, None) is None, "Linen drew fewer keys than ours"
    return variables


def shardings(module: nnx.Module) -> dict[str, tp.Any]:
    return {path: v.sharding for path, v in module.partition()[0].items()}


def raises(error: type[Exception], *fragments: str) -> tp.Any:
    return pytest.raises(error, match=".*".join(re.escape(f) for f in fragments))


def assert_equal_trees(ours: tp.Any, theirs: tp.Any) -> None:
    """Same structure, shapes and dtypes, and bit-for-bit equal leaves."""
    ours, theirs = plain(ours), plain(theirs)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs), (
        jax.tree.map(jnp.shape, ours),
        jax.tree.map(jnp.shape, theirs),
    )
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert (jnp.shape(a), jnp.result_type(a)) == (jnp.shape(b), jnp.result_type(b))
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def check_layer(
    linen_layer: linen.Module,
    make_ours: tp.Callable[[], nnx.Module],
    *inputs: tp.Any,
    linen_call: dict[str, tp.Any] | None = None,
    our_call: dict[str, tp.Any] | None = None,
) -> None:
    """Same variable tree as Linen; with Linen's variables, the same outputs and gradients.

    Outputs and gradients with respect to the parameters and every float input
    must be equal bit for bit: every layer of this issue runs Linen's arithmetic.
    """
    linen_call, our_call = linen_call or {}, our_call or {}
    shapes = jax.eval_shape(lambda key, *a: linen_layer.init(key, *a, **linen_call), rbg_key(0), *inputs)
    variables = random_like(shapes)
    ours = build_abstract(make_ours)
    ours_tree = plain(nnx.to_variables(ours.partition()[0]))
    assert jax.tree.map(jnp.shape, ours_tree) == jax.tree.map(jnp.shape, variables)
    assert_same_layout(ours_tree, variables)
    load(ours, variables)
    params, rest, moduledef = ours.partition("params", ...)
    argnums = (0,) + tuple(
        1 + i for i, x in enumerate(inputs) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    )

    def linen_loss(p: tp.Any, *args: tp.Any) -> tp.Any:
        y = linen_layer.apply({"params": p}, *args, **linen_call)
        return weighted_sum(y), y

    def our_loss(p: nnx.State, *args: tp.Any) -> tp.Any:
        y, _ = moduledef.apply(p, rest)(*args, **our_call)
        return weighted_sum(y), y

    @jax.jit
    def both(linen_params: tp.Any, our_params: nnx.State, *args: tp.Any) -> tp.Any:
        return (
            jax.value_and_grad(linen_loss, argnums, has_aux=True)(linen_params, *args),
            jax.value_and_grad(our_loss, argnums, has_aux=True)(our_params, *args),
        )

    args = (variables.get("params", {}), params, *inputs)
    ((_, y_linen), g_linen), ((_, y_ours), g_ours) = both.lower(*args).compile(FAST_COMPILE)(*args)
    theirs = (y_linen, plain(g_linen[0]), g_linen[1:])
    mine = (y_ours, plain(nnx.to_variables(g_ours[0]).get("params", {})), g_ours[1:])
    assert_same_layout(mine, theirs)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))  # bit for bit
