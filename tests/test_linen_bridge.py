"""to_linen / ToLinen: Linen's init/apply conventions, nesting, lifted transforms, metadata."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from bridge_models import MLP, Dense

import nnx_bridge as nnx
from nnx_bridge.linen import config

KEY = jax.random.PRNGKey(0)
X = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)


def shapes(tree):
    return jax.tree.map(jnp.shape, nn.unbox(tree))


def test_is_a_real_linen_module_and_init_returns_linen_layout():
    model = nnx.to_linen(MLP, [3, 4, 2])
    assert isinstance(model, nn.Module)
    variables = model.init(KEY, X)
    assert shapes(variables) == {
        "counts": {"steps": ()},
        "params": {"layers": {"0": {"bias": (4,), "kernel": (3, 4)}, "1": {"bias": (2,), "kernel": (4, 2)}}},
    }


def test_init_values_come_from_the_linen_params_rng():
    variables = nnx.to_linen(Dense, 3, 4).init(KEY, X)
    other = nnx.to_linen(Dense, 3, 4).init(jax.random.PRNGKey(1), X)
    same = nnx.to_linen(Dense, 3, 4).init({"params": KEY}, X)
    assert not np.allclose(variables["params"]["kernel"], other["params"]["kernel"])
    np.testing.assert_array_equal(variables["params"]["kernel"], same["params"]["kernel"])


def test_apply_matches_the_module_called_directly():
    model = nnx.to_linen(MLP, [3, 4, 2])
    variables = model.init(KEY, X)
    module = MLP([3, 4, 2], ctx=nnx.Context(0))
    module.update_state(nnx.from_variables(variables))
    np.testing.assert_array_equal(model.apply(variables, X), module(X))


def test_init_with_output_and_apply_conventions():
    model = nnx.to_linen(MLP, [3, 4, 2])
    out, variables = model.init_with_output(KEY, X)
    np.testing.assert_allclose(out, model.apply(variables, X), rtol=1e-6)
    plain = model.apply(variables, X)
    assert isinstance(plain, jax.Array)
    out, updated = model.apply(variables, X, train=True, mutable=["counts"])
    assert set(updated) == {"counts"}
    assert int(updated["counts"]["steps"]) == 1
    out, updated = model.apply(variables, X, mutable=["counts"])  # nothing written
    assert int(updated["counts"]["steps"]) == 0


def test_apply_never_runs_initialisers(monkeypatch):
    model = nnx.to_linen(MLP, [3, 4, 2])
    variables = model.init(KEY, X)
    monkeypatch.setattr(jax.nn.initializers, "lecun_normal", _forbidden)
    np.testing.assert_array_equal(model.apply(variables, X), model.apply(variables, X))


def _forbidden(*args, **kwargs):
    raise AssertionError("an initialiser ran during apply")


def test_apply_without_init_builds_structure_abstractly(monkeypatch):
    variables = nnx.to_linen(MLP, [3, 5, 2]).init(KEY, X)
    config._structures.clear()
    calls = []
    real = jax.eval_shape
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: calls.append(1) or real(*a, **k))
    fresh = nnx.to_linen(MLP, [3, 5, 2])
    first = fresh.apply(variables, X)
    second = fresh.apply(variables, X)
    assert len(calls) == 1  # computed once, then cached
    np.testing.assert_array_equal(first, second)


def test_method_by_name_and_by_function():
    model = nnx.to_linen(MLP, [3, 4, 2])
    variables = model.init(KEY, X)
    encoded = model.apply(variables, X, method="encode")
    assert encoded.shape == (2, 4)
    np.testing.assert_array_equal(encoded, model.apply(variables, X, method=lambda m, x: m.encode(x)))


def test_rngs_reach_a_method_that_takes_ctx():
    model = nnx.to_linen(MLP, [3, 4, 2])
    variables = model.init(KEY, X)
    a = model.apply(variables, X, method="noisy", rngs={"noise": jax.random.PRNGKey(1)})
    b = model.apply(variables, X, method="noisy", rngs={"noise": jax.random.PRNGKey(1)})
    c = model.apply(variables, X, method="noisy", rngs={"noise": jax.random.PRNGKey(2)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_hashable_and_equal_by_configuration():
    a = nnx.to_linen(MLP, [3, 4, 2])
    b = nnx.to_linen(MLP, [3, 4, 2])
    c = nnx.to_linen(MLP, [3, 4, 3])
    assert a == b and hash(a) == hash(b)
    assert a != c
    d = nnx.to_linen(Dense, 3, 4, sharding=["data", "model"])
    assert hash(d) == hash(nnx.to_linen(Dense, 3, 4, sharding=["data", "model"]))


def test_usable_as_jit_static_argument():
    traces = []

    @jax.jit
    def run(variables, x):
        return model.apply(variables, x)

    def apply_static(model, variables, x):
        traces.append(1)
        return model.apply(variables, x)

    jitted = jax.jit(apply_static, static_argnums=0)
    model = nnx.to_linen(MLP, [3, 4, 2])
    variables = model.init(KEY, X)
    jitted(model, variables, X)
    jitted(nnx.to_linen(MLP, [3, 4, 2]), variables, X)
    assert len(traces) == 1
    np.testing.assert_allclose(run(variables, X), model.apply(variables, X), rtol=1e-6)


class CompactParent(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nnx.to_linen(MLP, [3, 4, 4], name="mlp")(x)
        return nn.Dense(2)(x)


class SetupParent(nn.Module):
    def setup(self):
        self.body = nnx.to_linen(Dense, 3, 4)
        self.head = nn.Dense(2)

    def __call__(self, x):
        return self.head(self.body(x))


def test_nested_in_compact_and_setup():
    variables = CompactParent().init(KEY, X)
    assert set(variables["params"]) == {"mlp", "Dense_0"}
    assert shapes(variables["counts"]) == {"mlp": {"steps": ()}}
    assert CompactParent().apply(variables, X).shape == (2, 2)
    variables = SetupParent().init(KEY, X)
    assert shapes(variables["params"]["body"]) == {"bias": (4,), "kernel": (3, 4)}
    p = variables["params"]
    expected = (X @ p["body"]["kernel"] + p["body"]["bias"]) @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(SetupParent().apply(variables, X), expected, rtol=1e-6)


def test_shared_wrapper_called_twice_reuses_its_variables():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            block = nnx.to_linen(Dense, 3, 3)
            return block(block(x))

    variables = Twice().init(KEY, X)
    assert shapes(variables) == {"params": {"Dense_0": {"bias": (3,), "kernel": (3, 3)}}}
    p = variables["params"]["Dense_0"]
    once = X @ p["kernel"] + p["bias"]
    np.testing.assert_allclose(Twice().apply(variables, X), once @ p["kernel"] + p["bias"], rtol=1e-6)


class Block(nnx.Module):
    def __init__(self, d, *, ctx):
        self.kernel = nnx.Param(
            jax.random.normal(ctx.make_rng("params"), (d, d)) * 0.3, sharding=("embed", "mlp")
        )

    def __call__(self, carry, _):
        return jnp.tanh(carry @ self.kernel.value), None


def test_nn_scan_stacks_layers_with_their_own_keys_and_partition_axis():
    Stack = nn.scan(
        nnx.ToLinen,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        length=3,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    model = Stack(Block, args=(3,))
    variables = model.init(KEY, X, None)
    kernel = nn.unbox(variables)["params"]["kernel"]
    assert kernel.shape == (3, 3, 3)
    assert not np.allclose(kernel[0], kernel[1])
    assert nn.get_partition_spec(variables)["params"]["kernel"] == jax.sharding.PartitionSpec(
        "layers", "embed", "mlp"
    )
    y, _ = model.apply(variables, X, None)
    expected = X
    for i in range(3):
        expected = jnp.tanh(expected @ kernel[i])
    np.testing.assert_allclose(y, expected, rtol=1e-5)


def test_nn_vmap_remat_and_jit():
    Batched = nn.vmap(
        nnx.ToLinen,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=0,
        metadata_params={nn.PARTITION_NAME: "ensemble"},
    )
    variables = Batched(Dense, args=(3, 2)).init(KEY, jnp.ones((5, 2, 3)))
    assert shapes(variables)["params"]["kernel"] == (5, 3, 2)

    class Wrapped(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.remat(nnx.ToLinen)(Dense, args=(3, 3))(x)
            return nn.jit(nnx.ToLinen)(Dense, args=(3, 3))(x)

    variables = Wrapped().init(KEY, X)
    p = nn.unbox(variables)["params"]
    a, b = p["CheckpointToLinen_0"], p["JitToLinen_0"]
    expected = (X @ a["kernel"] + a["bias"]) @ b["kernel"] + b["bias"]
    np.testing.assert_allclose(Wrapped().apply(variables, X), expected, rtol=1e-5)
    grads = jax.grad(lambda params: Wrapped().apply({"params": params}, X).sum())(variables["params"])
    assert shapes(grads) == shapes(variables["params"])


def test_eval_shape_init_and_tabulate():
    model = nnx.to_linen(MLP, [3, 4, 2])
    abstract = jax.eval_shape(model.init, KEY, X)
    assert isinstance(abstract["params"]["layers"]["0"]["kernel"], jax.ShapeDtypeStruct)
    table = re.sub(r"\x1b\[[0-9;]*m", "", model.tabulate(KEY, X, console_kwargs={"width": 200}))
    assert "layers" in table and "kernel" in table and "float32[3,4]" in table


def test_sharding_metadata_is_boxed_as_partitioned():
    model = nnx.to_linen(Dense, 3, 4, sharding=("data", "model"))
    variables = model.init(KEY, X)
    kernel = variables["params"]["kernel"]
    assert isinstance(kernel, nn.Partitioned) and kernel.names == ("data", "model")
    specs = nn.get_partition_spec(variables)
    assert specs["params"]["kernel"] == jax.sharding.PartitionSpec("data", "model")
    assert specs["params"]["bias"] == jax.sharding.PartitionSpec()
    np.testing.assert_array_equal(model.apply(variables, X), model.apply(nn.unbox(variables), X))


def test_method_of_a_factory_function():
    def make(n, *, ctx):
        return MLP([3, n, 2], ctx=ctx)

    model = nnx.to_linen(make, 5)
    variables = model.init(KEY, X)
    assert model.apply(variables, X, method="encode").shape == (2, 5)
