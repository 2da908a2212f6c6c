"""Linen's init semantics through the bridge: lazy Variables, is_initializing, sow, as-constructed init.

Also the behaviours Flax's own bridge tests check, in nnx_bridge's API: a counter
reads as constructed after init, BatchNorm statistics stay 0/1 at init, methods
by name and by function, nesting in Linen parents, RNG streams.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_bridge as nnx
from nnx_bridge.linen import config

KEY = jax.random.PRNGKey(0)
X = jnp.linspace(-1.0, 1.0, 8).reshape(2, 4)


class Counter(nnx.Module):
    """Counts calls in a Variable made in __init__."""

    def __init__(self, *, ctx):
        self.count = nnx.Variable("counts", jnp.array(0))

    def __call__(self):
        self.count.value += 1
        return self.count.value


class Running(nnx.Module):
    """A running sum sized from the first input: a lazily created Variable."""

    def __init__(self, scale, *, ctx):
        self.scale = scale
        self.w = nnx.Param(jnp.full((), scale))

    def __call__(self, x, *, update=False):
        total = self.variable("stats", "total", jnp.zeros, x.shape[-1:])
        if update and not self.is_initializing():
            total.value = total.value + x.sum(0)
        self.sow("intermediates", "doubled", x * 2)
        return x * self.w.value + total.value


class Outer(nnx.Module):
    def __init__(self, *, ctx):
        self.inner = Running(1.5, ctx=ctx)
        self.items = [Running(2.0, ctx=ctx)]

    def __call__(self, x, *, update=False):
        return self.items[0](self.inner(x, update=update), update=update)


def test_init_returns_variables_as_constructed():
    model = nnx.to_linen(Counter)
    out, variables = model.init_with_output(KEY)
    assert int(out) == 1  # the call ran ...
    assert int(variables["counts"]["count"]) == 0  # ... but init returns the constructed value
    _, updates = model.apply(variables, mutable=["counts"])
    assert int(updates["counts"]["count"]) == 1
    assert int(model.apply({**variables, **updates}, mutable="counts")[1]["counts"]["count"]) == 2


def test_batchnorm_statistics_are_not_moved_at_init():
    class Net(nnx.Module):
        def __init__(self, *, ctx):
            self.dense = nnx.Linear(4, 3, ctx=ctx)
            self.bn = nnx.BatchNorm(3, use_running_average=False, ctx=ctx)

        def __call__(self, x):
            return self.bn(self.dense(x))

    model = nnx.to_linen(Net)
    variables = model.init(KEY, X)
    np.testing.assert_array_equal(variables["batch_stats"]["bn"]["mean"], np.zeros(3))
    np.testing.assert_array_equal(variables["batch_stats"]["bn"]["var"], np.ones(3))
    linen = nn.BatchNorm(use_running_average=False).init(KEY, X)  # Linen's own BatchNorm agrees
    np.testing.assert_array_equal(linen["batch_stats"]["mean"], np.zeros(4))
    _, updates = model.apply(variables, X, mutable=["batch_stats"])
    assert not np.allclose(updates["batch_stats"]["bn"]["mean"], 0.0)


def test_batchnorm_skips_the_cross_device_mean_while_initialising():
    model = nnx.to_linen(nnx.BatchNorm, 4, use_running_average=False, axis_name="batch")
    variables = jax.jit(model.init)(KEY, X)  # outside pmap: no 'batch' axis is bound
    with pytest.raises(NameError, match="unbound axis name: batch"):
        model.apply(variables, X, mutable=["batch_stats"])
    _, updates = jax.vmap(lambda x: model.apply(variables, x, mutable=["batch_stats"]), axis_name="batch")(
        X[None]
    )
    assert updates["batch_stats"]["mean"].shape == (1, 4)


def test_lazy_variables_are_created_at_init_and_claimed_at_apply():
    model = nnx.to_linen(Outer)
    variables = model.init(KEY, X)
    assert jax.tree.map(jnp.shape, variables) == {
        "params": {"inner": {"w": ()}, "items": {"0": {"w": ()}}},
        "stats": {"inner": {"total": (4,)}, "items": {"0": {"total": (4,)}}},
    }
    assert "intermediates" not in variables  # init's default mutable excludes it, as in Linen
    out, updates = model.apply(variables, X, update=True, mutable=["stats"])
    module = Outer(ctx=nnx.Context(0))
    module.update_state(nnx.from_variables({"params": variables["params"]}))
    np.testing.assert_allclose(out, module(X, update=True), rtol=1e-6)  # eager: same arithmetic
    np.testing.assert_allclose(updates["stats"]["inner"]["total"], X.sum(0), rtol=1e-6)


def test_jitted_init_and_apply_with_lazy_variables():
    model = nnx.to_linen(Outer)
    variables = jax.jit(model.init)(KEY, X)
    step = jax.jit(lambda v, x: model.apply(v, x, update=True, mutable=["stats"]))
    out, updates = step(variables, X)
    eager_out, eager_updates = model.apply(variables, X, update=True, mutable=["stats"])
    np.testing.assert_allclose(out, eager_out, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, eager_updates)
    _, twice = step({**variables, **updates}, X)
    np.testing.assert_allclose(
        twice["stats"]["inner"]["total"], 2 * updates["stats"]["inner"]["total"], rtol=1e-6
    )  # the inner sum sees X both times


def test_apply_in_a_fresh_process_builds_the_structure_without_lazy_variables():
    model = nnx.to_linen(Outer)
    variables = model.init(KEY, X)
    expected = model.apply(variables, X)
    config._structures.clear()  # as in a new process: structure from eval_shape
    np.testing.assert_array_equal(nnx.to_linen(Outer).apply(variables, X), expected)


def test_apply_after_restore_in_a_new_interpreter(tmp_path):
    script = textwrap.dedent(f"""
        import sys, pickle
        sys.path[:0] = [{str(tmp_path)!r}, {str(_tests_dir())!r}, {str(_root_dir())!r}]
        import jax, jax.numpy as jnp, numpy as np
        import nnx_bridge as nnx
        from test_linen_init import Outer, X
        variables = pickle.load(open({str(tmp_path / "v.pkl")!r}, 'rb'))
        print('OUT', np.asarray(nnx.to_linen(Outer).apply(variables, X)).tolist())
    """)
    variables = jax.device_get(nnx.to_linen(Outer).init(KEY, X))
    import pickle

    (tmp_path / "v.pkl").write_bytes(pickle.dumps(variables))
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("OUT "))
    np.testing.assert_allclose(np.array(eval(line[4:])), nnx.to_linen(Outer).apply(variables, X), rtol=1e-6)


def _tests_dir():
    import pathlib

    return pathlib.Path(__file__).parent


def _root_dir():
    return _tests_dir().parent


def test_sow_records_into_mutable_collections_only():
    model = nnx.to_linen(Running, 1.0)
    variables = model.init(KEY, X)
    out, updates = model.apply(variables, X, mutable=["intermediates"])
    (doubled,) = updates["intermediates"]["doubled"]
    np.testing.assert_array_equal(doubled, X * 2)
    np.testing.assert_array_equal(model.apply(variables, X), out)  # immutable: nothing recorded
    # Sown values passed back in are claimed by sow and accumulate, as in Linen.
    _, again = model.apply({**variables, **updates}, X, mutable=["intermediates"])
    assert len(again["intermediates"]["doubled"]) == 2
    model.apply({**variables, **updates}, X)  # given but immutable: accepted, unchanged


def test_sow_at_init_when_intermediates_are_mutable():
    model = nnx.to_linen(Running, 1.0)
    variables = model.init(KEY, X, mutable=True)
    np.testing.assert_array_equal(variables["intermediates"]["doubled"][0], X * 2)


def test_is_initializing_true_only_during_init_also_nested_in_linen():
    seen = []

    class Probe(nnx.Module):
        def __init__(self, *, ctx):
            self.w = nnx.Param(jnp.ones(()))

        def __call__(self, x):
            seen.append(self.is_initializing())
            return x * self.w.value

    class Parent(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nnx.to_linen(Probe, name="probe")(x))

    variables = Parent().init(KEY, X)
    Parent().apply(variables, X)
    assert seen == [True, False]
    assert not nnx.Module().is_initializing()


def test_counter_in_a_linen_parent_setup_and_method_call():
    class Foo(nn.Module):
        def setup(self):
            self.embedding = nnx.to_linen(nnx.Embed, 2, 3)

        def __call__(self, x):
            return self.embedding(x)

        def attend(self, z):
            return self.embedding.attend(z)

    ids = jnp.ones((1,), jnp.int32)
    y, variables = Foo().init_with_output(KEY, ids)
    assert y.shape == (1, 3) and variables["params"]["embedding"]["embedding"].shape == (2, 3)
    assert Foo().apply(variables, jnp.ones((1, 3)), method="attend").shape == (1, 2)
    embed = nnx.to_linen(nnx.Embed, 2, 3)
    params = embed.init(KEY, ids)
    by_name = embed.apply(params, jnp.ones((1, 3)), method="attend")
    np.testing.assert_array_equal(embed.apply(params, jnp.ones((1, 3)), method=nnx.Embed.attend), by_name)


def test_method_function_of_the_wrapped_class_at_init_and_apply():
    class Coder(nnx.Module):
        def __init__(self, *, ctx):
            self.enc = nnx.Linear(4, 2, ctx=ctx)
            self.dec = nnx.Linear(2, 4, ctx=ctx)

        def encode(self, x):
            return self.enc(x)

        def __call__(self, x):
            return self.dec(self.encode(x))

    model = nnx.to_linen(Coder)
    variables = model.init(KEY, X)
    codes = model.apply(variables, X, method=Coder.encode)
    np.testing.assert_array_equal(codes, model.apply(variables, X, method="encode"))
    np.testing.assert_array_equal(model.apply(variables, X, method=Coder.__call__), model.apply(variables, X))
    only_enc = model.init(KEY, X, method=Coder.encode)  # Variables of the whole module are created
    assert set(only_enc["params"]) == {"enc", "dec"}


def test_dropout_rngs_from_a_linen_parent():
    class Inner(nnx.Module):
        def __init__(self, din, dout, *, ctx):
            self.w = nnx.Param(jax.random.normal(ctx.make_rng("params"), (din, dout)))
            self.drop = nnx.Dropout(0.5)

        def __call__(self, x, *, ctx):
            return self.drop(x @ self.w.value, deterministic=False, ctx=ctx)

    class Parent(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nnx.to_linen(Inner, 4, 3)(x)

    y1, variables = Parent().init_with_output({"params": KEY, "dropout": jax.random.PRNGKey(1)}, X)
    y2 = Parent().apply(variables, X, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(y1, y2)
    assert list(variables["params"]) == ["Inner_0"]  # named as the Linen twin would be


def test_structure_of_a_linen_twin_matches():
    class Inner(nnx.Module):
        def __init__(self, din, dout, *, ctx):
            self.w = nnx.Param(jax.random.normal(ctx.make_rng("params"), (din, dout)))

        def __call__(self, x):
            return x @ self.w.value

    class Middle(nnx.Module):
        def __init__(self, din, dout, *, ctx):
            self.dot = Inner(din, dout, ctx=ctx)
            self.b = nnx.Variable("bias", jnp.zeros((1, dout)))

        def __call__(self, x):
            return self.dot(x) + self.b.value

    class LinenMiddle(nn.Module):
        @nn.compact
        def __call__(self, x):
            dot = nnx.to_linen(Inner, x.shape[-1], 3, name="dot")
            b = self.variable("bias", "b", jnp.zeros, (1, 3))
            return dot(x) + b.value

    top = nnx.to_linen(Middle, din=4, dout=3).init(KEY, X)
    middle = LinenMiddle().init(KEY, X)
    assert jax.tree.structure(top) == jax.tree.structure(middle)


# ----------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------
def test_apply_without_the_lazy_variable_is_a_missing_variable_error():
    model = nnx.to_linen(Outer)
    variables = model.init(KEY, X)
    with pytest.raises(
        KeyError,
        match=r"ToLinen\(Outer\) at '/': missing variable 'stats/inner/total': "
        r"Running\.variable\('stats', 'total', \.\.\.\) would have to "
        r"create it during apply\. Variables are created by init",
    ):
        model.apply({"params": variables["params"]}, X)

    class Parent(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nnx.to_linen(Outer, name="body")(x)

    nested = Parent().init(KEY, X)
    with pytest.raises(KeyError, match=r"missing variable 'stats/body/inner/total'"):
        Parent().apply({"params": nested["params"]}, X)


def test_unclaimed_given_variable_is_unexpected():
    model = nnx.to_linen(Outer)
    variables = model.init(KEY, X)
    extra = jax.tree.map(lambda x: x, variables)
    extra["stats"]["inner"]["other"] = jnp.zeros(4)
    with pytest.raises(
        KeyError,
        match=r"unexpected variable\(s\) 'stats/inner/other': the module has "
        r"no such variable",
    ):
        model.apply(extra, X)
    extra = jax.tree.map(lambda x: x, variables)
    extra["stats"]["inner"]["scale"] = jnp.zeros(4)  # a static attribute's name: cannot be placed
    with pytest.raises(KeyError, match=r"unexpected variable\(s\) 'stats/inner/scale'"):
        model.apply(extra, X)
    extra = {
        **variables,
        "stats": {
            **variables["stats"],
            "items": {"0": {"total": jnp.zeros(4)}, "1": {"total": jnp.zeros(4)}},
        },
    }
    with pytest.raises(KeyError, match=r"unexpected variable\(s\) 'stats/items/1/total'"):
        model.apply(extra, X)


def test_a_call_that_changes_a_shape_or_dtype_raises():
    class Grows(nnx.Module):
        def __init__(self, *, ctx):
            self.cache = nnx.Variable("cache", jnp.zeros((1, 4)))

        def __call__(self, x):
            self.cache.value = jnp.concatenate([self.cache.value, x])
            return x

    pattern = (
        r"ToLinen\(.*Grows\) at '/': calling '__call__' changed variable 'cache/cache' from shape "
        r"\(1, 4\) dtype float32 to shape \(3, 4\) dtype float32\. .*self\.variable\('cache', name, "
        r"init_fn, \*init_args\)"
    )
    with pytest.raises(ValueError, match=pattern):
        nnx.to_linen(Grows).init(KEY, X)

    class Casts(Counter):
        def __call__(self):
            self.count.value = self.count.value * 1.5

    variables = nnx.to_linen(Counter).init(KEY)
    with pytest.raises(
        ValueError,
        match=r"changed variable 'counts/count' from shape \(\) dtype int32 to "
        r"shape \(\) dtype float32",
    ):
        nnx.to_linen(Casts).apply(variables, mutable=["counts"])


def test_other_structure_changes_are_still_rejected():
    class Adds(nnx.Module):
        def __init__(self, *, ctx):
            self.w = nnx.Param(jnp.ones(4))

        def __call__(self, x):
            self.variable("stats", "ok", jnp.zeros, ())  # legitimate
            self.extra = nnx.Param(jnp.zeros(4))  # not
            return x * self.w.value

    with pytest.raises(ValueError, match=r"calling '__call__' changed the module's structure"):
        nnx.to_linen(Adds).init(KEY, X)


def test_variable_in_a_collection_init_may_not_write():
    class Records(nnx.Module):
        def __init__(self, *, ctx):
            pass

        def __call__(self, x):
            self.variable("intermediates", "seen", lambda: x)
            return x

    with pytest.raises(
        ValueError,
        match=r"Records\.variable\('intermediates', 'seen', \.\.\.\) would create "
        r"'intermediates/seen' during init, but collection 'intermediates' "
        r"is not mutable in this init call",
    ):
        nnx.to_linen(Records).init(KEY, X)
    assert nnx.to_linen(Records).init(KEY, X, mutable=True)["intermediates"]["seen"].shape == (2, 4)


def test_variable_of_another_collection_is_an_error():
    class Wrong(nnx.Module):
        def __init__(self, *, ctx):
            self.w = nnx.Param(jnp.ones(()))

        def __call__(self, x):
            self.variable("stats", "w", jnp.zeros, ())
            return x

    with pytest.raises(ValueError, match=r"holds a Variable of collection 'params', not 'stats'"):
        nnx.to_linen(Wrong).init(KEY, X)


# ----------------------------------------------------------------------------------
# the bridged model reads like a Linen module
# ----------------------------------------------------------------------------------
class Configured(nnx.Module):
    def __init__(self, features, depth=2, *, ctx, dtype=jnp.float32, **extra):
        self.w = nnx.Param(jnp.ones((features,), dtype))

    def __call__(self, x):
        return x * self.w.value


def test_configuration_reads_as_attributes():
    model = nnx.to_linen(Configured, 4, dtype=jnp.float16, note="hi")
    assert (model.features, model.depth, model.dtype, model.note) == (4, 2, jnp.float16, "hi")
    assert nnx.ToLinen(Configured, (3, 5)).depth == 5
    with pytest.raises(AttributeError, match=r"has no attribute \"nothing\""):
        _ = model.nothing


def test_tabulate_and_linen_errors_name_the_wrapped_class():
    model = nnx.to_linen(Configured, 4)
    table = model.tabulate(KEY, X, console_kwargs={"width": 200})
    assert "Configured Summary" in table and "ToLinen" not in table
    variables = model.init(KEY, X)
    with pytest.raises(AttributeError, match=r"\"Configured\" object has no attribute \"decode\""):
        model.apply(variables, X, method="decode")


def test_bridge_options_do_not_collide_with_the_factory_keywords():
    class Sharded(nnx.Module):
        def __init__(self, *, ctx, logical_axes=("embed",)):
            self.w = nnx.Param(jnp.ones(4), sharding=logical_axes)

        def __call__(self, x):
            return x * self.w.value

    plain = nnx.to_linen(Sharded, logical_axes=("hidden",))
    w = plain.init(KEY, X)["params"]["w"]
    assert type(w) is nn.Partitioned and w.names == ("hidden",)
    logical = nnx.to_linen.options(logical_axes=True)(Sharded, logical_axes=("hidden",))
    w = logical.init(KEY, X)["params"]["w"]
    assert type(w) is nn.LogicallyPartitioned and w.names == ("hidden",)
    assert logical.kwargs["logical_axes"] == ("hidden",) and logical.logical_axes is True
    assert nnx.ToLinen(Sharded, logical_axes=True) == nnx.ToLinen(Sharded, (), {}, True)


def test_class_named_wrapper_pickles_and_copies():
    import copy
    import pickle

    model = nnx.to_linen(Configured, 4, dtype=jnp.float16)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(clone) is type(model) and clone == model and hash(clone) == hash(model)
        assert clone.dtype == jnp.float16


def test_ToLinen_class_form_keeps_working():
    model = nnx.ToLinen(Configured, (4,), {"dtype": jnp.float32})
    variables = model.init(KEY, X)
    assert type(model) is nnx.ToLinen
    np.testing.assert_array_equal(model.apply(variables, X), X)


# ----------------------------------------------------------------------------------
# mixing both directions (Flax's hybrid bridge tests, in nnx_bridge's API)
# ----------------------------------------------------------------------------------
class Inner(nnx.Module):
    def __init__(self, din, dout, rate, *, ctx):
        self.w = nnx.Param(jax.random.normal(ctx.make_rng("params"), (din, dout)), sharding=("in", "out"))
        self.drop = nnx.Dropout(rate)

    def __call__(self, x, *, ctx=None):
        return self.drop(x @ self.w.value, deterministic=ctx is None, ctx=ctx)


class LinenMiddle(nn.Module):
    dout: int
    rate: float

    @nn.compact
    def __call__(self, x):
        dot = nnx.to_linen(Inner, x.shape[-1], self.dout, self.rate, name="dot")
        init = nn.with_logical_partitioning(
            nn.initializers.normal(), ("out-alias",), rules=(("out-alias", "out"),)
        )
        return dot(x) + self.param("b", init, (self.dout,))


def test_nnx_in_linen_in_nnx():
    class Outer(nnx.Module):
        def __init__(self, *, ctx):
            self.inner = nnx.from_linen(LinenMiddle(6, 0.0), X, ctx=ctx)

        def __call__(self, x):
            return self.inner(x)

    model = Outer(ctx=nnx.Context(0))
    w, b = model.inner.dot["w"], model.inner.b
    np.testing.assert_allclose(model(X), X @ w.value + b.value, rtol=1e-6)
    assert isinstance(w, nnx.Param) and w.sharding == ("in", "out")
    assert b.sharding == ("out-alias",) and b.sharding_rules == (("out-alias", "out"),)


def test_linen_counter_and_cache_inside_an_nnx_module():
    class Foo(nn.Module):
        def setup(self):
            self.count = self.variable("counter", "count", lambda: jnp.zeros((), jnp.int32))

        def __call__(self, x):
            if not self.is_initializing():
                self.count.value += 1
            return x

    block = nnx.from_linen(Foo(), X, ctx=nnx.Context(0))
    assert int(block.count.value) == 0
    block(X)
    assert int(block.count.value) == 1

    class Cached(nn.Module):
        @nn.compact
        def __call__(self):
            if self.is_initializing() and self.is_mutable_collection("cache"):
                self.put_variable("cache", "x", 0)
            return self.get_variable("cache", "x")

    cached = nnx.from_linen(Cached(), ctx=nnx.Context(0))
    assert cached() == 0 and cached() == 0
