"""Linen modules inside nnx_bridge modules (`from_linen`), and back out through `to_linen`."""

from __future__ import annotations

import functools
import typing as tp

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

import nnx_bridge as nnx
from benchmarks.linen_loop import load_digits_split, train
from nnx_bridge.linen import config
from nnx_bridge.linen.from_linen import FromLinen, from_linen

X = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)


# ---- the old Linen blocks and models ---------------------------------------------------------
class Head(nn.Module):
    """An old Linen block: a two-layer Dense stack."""

    hidden: int = 32
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.classes)(nn.relu(nn.Dense(self.hidden)(x)))


class LinenMLP(nn.Module):
    """The all-Linen twin of `MixedMLP` (the same variable tree)."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Dense(64, name="l1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        x = nn.Dropout(0.2, deterministic=not train)(nn.relu(x))
        return Head(name="head")(x)


class MixedMLP(nnx.Module):
    """A bridged MLP holding Linen blocks (Dense, BatchNorm, a Dense stack) and an nnx Dropout."""

    def __init__(self, features: int, *, ctx: nnx.Context):
        self.l1 = from_linen(nn.Dense(64), jnp.zeros((1, features)), ctx=ctx)
        self.bn = from_linen(
            nn.BatchNorm(momentum=0.9), jnp.zeros((1, 64)), ctx=ctx, use_running_average=True
        )
        self.drop = nnx.Dropout(0.2)
        self.head = from_linen(Head(), jnp.zeros((1, 64)), ctx=ctx)

    def __call__(self, x, *, train: bool, ctx: nnx.Context | None = None):
        x = self.bn(self.l1(x), use_running_average=not train)
        x = self.drop(jax.nn.relu(x), deterministic=not train, ctx=ctx)
        return self.head(x)


class LinenOuter(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool):
        return LinenMLP(name="mlp")(x, train=train)


class MixedOuter(nn.Module):
    """A Linen model containing a bridged model containing Linen blocks."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        return nnx.to_linen(MixedMLP, 64, name="mlp")(x, train=train)


class Noisy(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Dense(3)(x)
        return nn.Dropout(0.5, deterministic=not train)(x)


def _shapes(tree):
    return jax.tree.map(jnp.shape, tree)


# ---- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "block, kwargs",
    [
        (nn.Dense(4), {}),
        (Head(hidden=5, classes=2), {}),
        (nn.BatchNorm(momentum=0.5), {"use_running_average": False}),
        (nn.Dense(4, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))), {}),
    ],
)
def test_linen_to_from_linen_to_linen_round_trip(block, kwargs):
    sample = jax.ShapeDtypeStruct(X.shape, X.dtype)
    linen_vars = block.init(jax.random.PRNGKey(0), X, **kwargs)
    wrapped = nnx.to_linen(functools.partial(from_linen, block, sample, **kwargs))
    wrapped_vars = wrapped.init(jax.random.PRNGKey(1), X, **kwargs)
    assert jax.tree.structure(wrapped_vars) == jax.tree.structure(linen_vars)  # boxes included
    assert _shapes(wrapped_vars) == _shapes(linen_vars)
    mutable = [c for c in linen_vars if c != "params"]
    for variables in (linen_vars, wrapped_vars):
        expected = block.apply(variables, X, mutable=mutable, **kwargs)
        got = wrapped.apply(variables, X, mutable=mutable, **kwargs)
        jax.tree.map(np.testing.assert_array_equal, got, expected)  # bitwise, updates included


def test_variables_are_one_per_leaf_at_the_linen_paths_with_collection_kept():
    class Net(nnx.Module):
        def __init__(self, *, ctx):
            self.block = from_linen(LinenMLP(), X, ctx=ctx, train=False)

    state, _ = Net(ctx=nnx.Context(0)).partition()
    linen_vars = LinenMLP().init(jax.random.PRNGKey(0), X, train=False)
    expected = nnx.from_variables({c: {"block": tree} for c, tree in linen_vars.items()})
    assert list(state) == list(expected)
    assert [type(v) for v in state.values()] == [type(v) for v in expected.values()]
    assert (
        type(state["block/bn/mean"]) is nnx.BatchStat
        and type(state["block/head/Dense_1/kernel"]) is nnx.Param
    )
    assert _shapes(nnx.to_variables(state)) == _shapes(nnx.to_variables(expected))


# ---- the mixed model in the stock TrainState loop (benchmarks/linen_loop.py) -------------------------
@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def test_mixed_model_trains_in_the_trainstate_loop_like_its_linen_twin(digits):
    linen_vars = LinenOuter().init(jax.random.PRNGKey(0), digits[0][:8], train=False)
    mixed_vars = MixedOuter().init(jax.random.PRNGKey(0), digits[0][:8], train=False)
    assert _shapes(mixed_vars) == _shapes(linen_vars)  # the same variable tree
    _, linen_acc = train(LinenOuter(), 0, digits, steps=150)
    state, mixed_acc = train(MixedOuter(), 0, digits, steps=150)
    assert mixed_acc > 0.9, mixed_acc
    assert abs(mixed_acc - linen_acc) <= 0.04, (linen_acc, mixed_acc)
    assert int(state.step) == 150
    trained, initial = state.batch_stats["mlp"]["bn"]["mean"], mixed_vars["batch_stats"]["mlp"]["bn"]["mean"]
    assert not np.allclose(trained, initial)  # BatchNorm's updates reached the loop


def test_mixed_model_outputs_match_the_linen_twin_on_the_same_variables(digits):
    x = digits[0][:16]
    variables = LinenOuter().init(jax.random.PRNGKey(3), x, train=False)
    for train_mode in (False, True):
        rngs = {"dropout": jax.random.PRNGKey(5)} if train_mode else {}
        a, a_upd = LinenOuter().apply(variables, x, train=train_mode, rngs=rngs, mutable=["batch_stats"])
        b, b_upd = MixedOuter().apply(variables, x, train=train_mode, rngs=rngs, mutable=["batch_stats"])
        if not train_mode:  # dropout keys differ between the two in training
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-6), a_upd, b_upd)


def test_batch_stats_need_mutable_through_to_linen(digits):
    x = digits[0][:16]
    model = nnx.to_linen(MixedMLP, 64)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    model.apply(variables, x, train=False)  # evaluation writes nothing
    with pytest.raises(ValueError, match=r"'batch_stats/bn/mean'.*collection 'batch_stats' is not mutable"):
        model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})


# ---- checkpoints of the old block --------------------------------------------------------------
def test_a_checkpoint_of_the_old_linen_block_loads_into_the_composite(digits):
    x = digits[0][:16]
    head_vars = Head().init(jax.random.PRNGKey(7), jnp.zeros((1, 64)))  # the old checkpoint
    hidden = jax.random.normal(jax.random.PRNGKey(8), (16, 64))
    expected = Head().apply(head_vars, hidden)

    composite = MixedMLP(64, ctx=nnx.Context(0))
    composite.update_state(nnx.from_variables({"params": {"head": head_vars["params"]}}))
    np.testing.assert_array_equal(composite.head(hidden), expected)
    jax.tree.map(np.testing.assert_array_equal, composite.head.linen_variables(), head_vars)

    model = nnx.to_linen(MixedMLP, 64)  # the same through Linen's apply
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    variables["params"]["head"] = head_vars["params"]
    y = model.apply(variables, x, train=False)
    state, _ = composite.partition()
    state.update(nnx.from_variables(variables))
    composite.update_state(state)
    np.testing.assert_array_equal(y, composite(x, train=False))


# ---- partition / merge / jit / sharding --------------------------------------------------------
# Linen modules compare by their fields: make initialisers once, so that ModuleDefs compare equal.
SHARDED_INIT = nn.with_partitioning(nn.initializers.lecun_normal(), ("data", "model"))


class Holder(nnx.Module):
    def __init__(self, *, ctx):
        self.dense = from_linen(nn.Dense(4, kernel_init=SHARDED_INIT), X, ctx=ctx)
        self.noisy = from_linen(Noisy(), jnp.zeros((1, 4)), ctx=ctx, train=False)
        self.bn = from_linen(nn.BatchNorm(), jnp.zeros((1, 4)), ctx=ctx, use_running_average=True)

    def __call__(self, x, *, train: bool = False, ctx=None):
        x = self.bn(self.dense(x), use_running_average=not train)
        return self.noisy(x, train=train, ctx=ctx)


def test_partition_merge_and_jit_over_state(assert_states_equal):
    holder = Holder(ctx=nnx.Context(0))
    state, moduledef = holder.partition()
    assert hash(moduledef) == hash(Holder(ctx=nnx.Context(1)).partition()[1])
    assert moduledef == Holder(ctx=nnx.Context(1)).partition()[1]
    assert_states_equal(moduledef.merge(state).partition()[0], state)
    assert state["dense/kernel"].sharding == ("data", "model")
    assert state["dense/bias"].sharding is None

    @jax.jit
    def step(state, x, key):
        out, (new_state, _) = moduledef.apply(state)(x, train=True, ctx=nnx.Context({"dropout": key}))
        return out, new_state

    out, new_state = step(state, X, jax.random.PRNGKey(2))
    eager = moduledef.merge(state)
    eager_out = eager(X, train=True, ctx=nnx.Context({"dropout": jax.random.PRNGKey(2)}))
    np.testing.assert_allclose(out, eager_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_state["bn/mean"].value, eager.bn.mean.value, rtol=1e-6, atol=1e-7)
    assert not np.allclose(new_state["bn/mean"].value, state["bn/mean"].value)
    assert list(new_state) == list(state)
    np.testing.assert_array_equal(holder(X), moduledef.apply(state)(X)[0])  # evaluation: no RNG


def test_sharding_metadata_reaches_partition_specs_through_to_linen():
    sample = jax.ShapeDtypeStruct(X.shape, X.dtype)
    kernel_init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
    factory = functools.partial(from_linen, nn.Dense(4, kernel_init=kernel_init), sample)
    variables = nnx.to_linen(factory).init(jax.random.PRNGKey(0), X)
    assert isinstance(variables["params"]["kernel"], meta.Partitioned)
    specs = nn.get_partition_spec(variables)
    assert specs["params"]["kernel"] == jax.sharding.PartitionSpec(None, "model")


def test_other_methods_through_method():
    class Coder(nn.Module):
        def setup(self):
            self.enc, self.dec = nn.Dense(2), nn.Dense(3)

        def __call__(self, x):
            return self.decode(self.encode(x))

        def encode(self, x):
            return self.enc(x)

        def decode(self, z):
            return self.dec(z)

    coder = from_linen(Coder(), X, ctx=nnx.Context(0))
    variables = coder.linen_variables()
    np.testing.assert_array_equal(coder(X, method="encode"), Coder().apply(variables, X, method="encode"))
    np.testing.assert_array_equal(coder(X, method=Coder.encode), Coder().apply(variables, X, method="encode"))
    assert coder.linen_module == Coder()


def test_the_structure_is_rebuilt_abstractly_after_a_restart():
    model = nnx.to_linen(MixedMLP, 3)
    variables = model.init(jax.random.PRNGKey(0), X, train=False)
    expected = model.apply(variables, X, train=False)
    config._structures.clear()  # as in a new process that never ran init
    np.testing.assert_array_equal(nnx.to_linen(MixedMLP, 3).apply(variables, X, train=False), expected)


# ---- errors ------------------------------------------------------------------------------------
def test_missing_rng_stream_errors_name_the_stream():
    block = from_linen(Noisy(), X, ctx=nnx.Context(0), train=False)
    with pytest.raises(
        nnx.MissingRngStreamError,
        match=r"from_linen\(Noisy\) needs the RNG stream 'dropout', but the call got no "
        r"ctx\. Pass one, e\.g\. block\(x, ctx=nnx\.Context\(\{'dropout'",
    ):
        block(X, train=True)
    with pytest.raises(
        nnx.MissingRngStreamError,
        match=r"The Context has no RNG stream 'dropout' \(streams available: 'noise'\)",
    ):
        block(X, train=True, ctx=nnx.Context({"noise": 0}))
    strict = from_linen(Noisy(), X, ctx=nnx.Context(0), train=False, rng_streams=())
    with pytest.raises(
        nnx.MissingRngStreamError,
        match=r"needs the RNG stream 'dropout', which is not among its rng_streams \(\)\. "
        r"Pass rng_streams=\('dropout', \.\.\.\) to from_linen",
    ):
        strict(X, train=True, ctx=nnx.Context(0))
    assert block(X, train=True, ctx=nnx.Context(1)).shape == (4, 3)


def test_missing_rng_stream_through_to_linen_says_which_rngs_to_pass():
    class Net(nnx.Module):
        def __init__(self, *, ctx):
            self.noisy = from_linen(Noisy(), X, ctx=ctx, train=False)

        def __call__(self, x, *, ctx):
            return self.noisy(x, train=True, ctx=ctx)

    model = nnx.to_linen(Net)
    variables = model.init(jax.random.PRNGKey(0), X)
    with pytest.raises(
        nnx.MissingRngStreamError, match=r"needs the RNG stream 'dropout'.*rngs=\{'dropout': key\}"
    ):
        model.apply(variables, X)
    assert model.apply(variables, X, rngs={"dropout": jax.random.PRNGKey(1)}).shape == (4, 3)


def test_collision_of_two_collections_at_one_path():
    class Clash(nn.Module):
        @nn.compact
        def __call__(self, x):
            self.param("w", nn.initializers.zeros, (1,))
            self.variable("batch_stats", "w", jnp.zeros, (1,))
            return x

    with pytest.raises(
        ValueError,
        match=r"from_linen\(Clash\): the Linen variables 'batch_stats/w' and "
        r"'params/w' share the path 'w'.*rename one of them",
    ):
        from_linen(Clash(), X, ctx=nnx.Context(0))

    variables = {"params": {"sub": {"w": jnp.ones(2)}}, "cache": {"sub": jnp.zeros(())}}
    with pytest.raises(ValueError, match=r"'cache/sub' and 'params/sub/w' share the path 'sub'"):
        FromLinen(nn.Dense(2), variables)


def test_other_errors_by_text():
    with pytest.raises(TypeError, match=r"from_linen takes a flax\.linen\.Module.*found Linear"):
        from_linen(nnx.Linear(3, 2, ctx=nnx.Context(0)), X, ctx=nnx.Context(0))
    with pytest.raises(TypeError, match=r"ctx must be an nnx_bridge Context.*found int"):
        from_linen(nn.Dense(2), X, ctx=0)
    with pytest.raises(TypeError, match=r"rng_streams must be a sequence of stream names.*'dropout'"):
        from_linen(nn.Dense(2), X, ctx=nnx.Context(0), rng_streams="dropout")
    with pytest.raises(nnx.MissingRngStreamError, match=r"no RNG stream 'params'"):
        from_linen(nn.Dense(2), X, ctx=nnx.Context({"dropout": 0}))

    class Listy(nn.Module):
        sizes: tp.Any

        @nn.compact
        def __call__(self, x):
            return nn.Dense(self.sizes[0])(x)

    with pytest.raises(
        TypeError,
        match=r"from_linen\(Listy\): the Linen module is unhashable.*tuples "
        r"instead of lists",
    ):
        from_linen(Listy(sizes=[2]), X, ctx=nnx.Context(0))

    class Reserved(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="partition")(x)

    with pytest.raises(
        ValueError,
        match=r"'params/partition/kernel' is named 'partition', which FromLinen "
        r"uses itself",
    ):
        from_linen(Reserved(), X, ctx=nnx.Context(0))

    class Lazy(nn.Module):
        @nn.compact
        def __call__(self, x, *, train: bool):
            self.variable("batch_stats", "count", jnp.zeros, ())
            if train:
                self.variable("batch_stats", "seen", jnp.zeros, ())
            return x

    lazy = from_linen(Lazy(), X, ctx=nnx.Context(0), train=False)
    assert lazy(X, train=False) is X
    with pytest.raises(
        ValueError,
        match=r"from_linen\(Lazy\): the call created the new Linen variable "
        r"'batch_stats/seen', which init did not create",
    ):
        lazy(X, train=True)

    class Boxed(meta.AxisMetadata):
        def __init__(self, value):
            self.value = value

        def unbox(self):
            return self.value

        def replace_boxed(self, value):
            return Boxed(value)

        def add_axis(self, index, params):
            return self

        def remove_axis(self, index, params):
            return self

    with pytest.raises(
        TypeError,
        match=r"'params/w' is boxed in Boxed; from_linen understands "
        r"nn\.Partitioned",
    ):
        FromLinen(nn.Dense(2), {"params": {"w": Boxed(jnp.ones(2))}})
    with pytest.raises(TypeError, match=r"'params/w'.*sharding entries must be str or None"):
        FromLinen(nn.Dense(2), {"params": {"w": meta.Partitioned(jnp.ones(2), names=(1,))}})

    holder = from_linen(nn.Dense(2), X, ctx=nnx.Context(0))
    with pytest.raises(
        TypeError,
        match=r"from_linen\(Dense\): rngs= is not an argument of the call: "
        r"RNG keys come from ctx=",
    ):
        holder(X, rngs={"dropout": jax.random.PRNGKey(0)})
    holder.note = [1]
    with pytest.raises(
        TypeError,
        match=r"attribute 'note' holds a list; a FromLinen holds only the Linen "
        r"variables",
    ):
        holder(X)


def test_from_linen_is_itself_a_to_linen_factory():
    block, sample = nn.Dense(4), jax.ShapeDtypeStruct(X.shape, X.dtype)  # shapes are configuration
    model = nnx.to_linen(from_linen, block, sample)
    twin = nnx.to_linen(from_linen, nn.Dense(4), sample)
    assert model == twin and hash(model) == hash(twin)
    variables = model.init(jax.random.PRNGKey(0), X)
    assert _shapes(variables) == {"params": {"bias": (4,), "kernel": (3, 4)}}
    np.testing.assert_array_equal(model.apply(variables, X), block.apply(variables, X))
