"""jax.jit, jax.grad, jax.vmap (and lax.scan) over States and over ``moduledef.apply``."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_bridge as nnx


class Linear(nnx.Module):
    def __init__(self, din, dout, *, ctx):
        self.w = nnx.Param(jax.random.normal(ctx.make_rng("params"), (din, dout)))
        self.b = nnx.Param(jax.random.normal(ctx.make_rng("params"), (dout,)))
        self.count = nnx.Variable("counts", jnp.array(0))
        self.din, self.dout = din, dout

    def __call__(self, x):
        self.count.value += 1
        return x @ self.w.value + self.b.value


class MLP(nnx.Module):
    def __init__(self, *, ctx):
        self.layers = [Linear(3, 4, ctx=ctx), Linear(4, 2, ctx=ctx)]

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


@pytest.fixture
def linear():
    return Linear(3, 2, ctx=nnx.Context(0))


def test_jit_passes_states_through(linear):
    params, counts, _ = linear.partition("params", "counts")
    out_params, out_counts = jax.jit(lambda p, c: (p, c))(params, counts)
    for given, out in ((params, out_params), (counts, out_counts)):
        assert type(out) is nnx.State and list(out) == list(given)
        for path in given:
            assert type(out[path]) is type(given[path])
            np.testing.assert_array_equal(out[path].value, given[path].value)


def test_jit_over_apply_matches_eager(linear):
    params, counts, moduledef = linear.partition("params", "counts")
    x = jnp.arange(6.0).reshape(2, 3)

    @jax.jit
    def step(params, counts, x):
        y, (state, _) = moduledef.apply(params, counts)(x)
        return y, state.filter("counts")

    y, new_counts = step(params, counts, x)
    y_eager, (state_eager, _) = moduledef.apply(params, counts)(x)
    np.testing.assert_allclose(y, y_eager, rtol=1e-6)
    np.testing.assert_allclose(y, x @ linear.w.value + linear.b.value, rtol=1e-6)
    assert int(new_counts["count"].value) == 1 == int(state_eager["count"].value)
    assert int(counts["count"].value) == 0
    _, newer = step(params, new_counts, x)
    assert int(newer["count"].value) == 2


def test_grad_over_params_state(linear):
    params, counts, moduledef = linear.partition("params", "counts")
    x = jnp.arange(6.0).reshape(2, 3)

    def loss(params):
        y, _ = moduledef.apply(params, counts)(x)
        return jnp.sum(y)

    grads = jax.grad(loss)(params)
    assert type(grads) is nnx.State and list(grads) == ["b", "w"]
    assert type(grads["w"]) is nnx.Param and type(grads["b"]) is nnx.Param
    # d/dw sum(x @ w + b) = x^T @ 1; d/db = number of rows
    np.testing.assert_allclose(grads["w"].value, x.T @ jnp.ones((2, 2)))
    np.testing.assert_allclose(grads["b"].value, jnp.full((2,), 2.0))


def test_grad_with_aux_returns_updated_counts(linear):
    params, counts, moduledef = linear.partition("params", "counts")

    def loss(params, counts, x):
        y, (state, _) = moduledef.apply(params, counts)(x)
        return jnp.sum(y**2), state.filter("counts")

    grads, new_counts = jax.jit(jax.grad(loss, has_aux=True))(params, counts, jnp.ones((1, 3)))
    assert int(new_counts["count"].value) == 1
    # an SGD step written with tree_map keeps the State and its Variable types
    new_params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert type(new_params) is nnx.State and type(new_params["w"]) is nnx.Param
    np.testing.assert_allclose(new_params["w"].value, params["w"].value - 0.1 * grads["w"].value)


def test_vmap_over_inputs_of_apply(linear):
    params, counts, moduledef = linear.partition("params", "counts")
    xs = jnp.arange(12.0).reshape(4, 1, 3)
    ys = jax.vmap(lambda x: moduledef.apply(params, counts)(x)[0])(xs)
    chex.assert_shape(ys, (4, 1, 2))
    for i in range(4):
        np.testing.assert_allclose(ys[i], linear(xs[i]), rtol=1e-6)


def test_vmap_over_stacked_states():
    models = [Linear(3, 2, ctx=nnx.Context(seed)) for seed in range(3)]
    partitions = [m.partition("params", "counts") for m in models]
    moduledef = partitions[0][2]
    stacked_params = jax.tree.map(lambda *xs: jnp.stack(xs), *[p for p, _, _ in partitions])
    assert type(stacked_params) is nnx.State
    chex.assert_shape(stacked_params["w"].value, (3, 3, 2))
    counts = partitions[0][1]
    x = jnp.ones((1, 3))

    @jax.vmap
    def forward(params):
        y, (state, _) = moduledef.apply(params, counts)(x)
        return y, state

    ys, states = forward(stacked_params)
    assert type(states) is nnx.State and list(states) == ["b", "count", "w"]
    assert states["count"].value.shape == (3,)
    for i, m in enumerate(models):
        np.testing.assert_allclose(ys[i], m(x), rtol=1e-6)


def test_vmap_with_a_state_prefix_for_in_axes(linear):
    params, _, moduledef = linear.partition("params", "counts")
    batched_counts = nnx.State({"count": nnx.Variable("counts", jnp.arange(3))})
    out = jax.vmap(
        lambda p, c: moduledef.apply(p, c)(jnp.ones((1, 3)))[1][0].filter("counts"), in_axes=(None, 0)
    )(params, batched_counts)
    np.testing.assert_array_equal(out["count"].value, jnp.arange(3) + 1)


def test_scan_over_stacked_layer_states():
    layers = [Linear(2, 2, ctx=nnx.Context(seed)) for seed in range(4)]
    states = [layer.partition()[0] for layer in layers]
    moduledef = layers[0].partition()[1]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def body(x, state):
        y, _ = moduledef.apply(state)(x)
        return y, None

    y, _ = jax.lax.scan(body, jnp.ones((1, 2)), stacked)
    expected = jnp.ones((1, 2))
    for layer in layers:
        expected = layer(expected)
    np.testing.assert_allclose(y, expected, rtol=1e-5)


# --- ModuleDef as a static argument ------------------------------------------------------


def test_moduledef_as_static_argnum_hits_the_compile_cache():
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def forward(moduledef, state, x):
        traces.append(moduledef)
        y, _ = moduledef.apply(state)(x)
        return y

    x = jnp.ones((2, 3))
    m1 = MLP(ctx=nnx.Context(0))
    m2 = MLP(ctx=nnx.Context(1))  # same structure, other values: another partition
    state1, moduledef1 = m1.partition()
    state2, moduledef2 = m2.partition()
    assert moduledef1 is not moduledef2 and moduledef1 == moduledef2

    y1 = forward(moduledef1, state1, x)
    y2 = forward(moduledef2, state2, x)
    assert len(traces) == 1
    np.testing.assert_allclose(y1, m1(x), rtol=1e-6)
    np.testing.assert_allclose(y2, m2(x), rtol=1e-6)

    # the ModuleDef returned by apply is equal too, so a training loop never retraces
    _, (state3, moduledef3) = moduledef1.apply(state1)(x)
    forward(moduledef3, state3, x)
    assert len(traces) == 1

    # a different structure compiles again
    state4, moduledef4 = Linear(3, 2, ctx=nnx.Context(0)).partition()
    forward(moduledef4, state4, x)
    assert len(traces) == 2


def test_jit_does_not_retrace_for_equal_states():
    traces = []

    @jax.jit
    def f(state):
        traces.append(1)
        return jax.tree.map(lambda v: v * 2, state)

    f(MLP(ctx=nnx.Context(0)).partition()[0])
    f(MLP(ctx=nnx.Context(1)).partition()[0])
    assert len(traces) == 1
    f(Linear(3, 2, ctx=nnx.Context(0)).partition()[0])
    assert len(traces) == 2


def test_context_through_jit_builds_the_same_module():
    @jax.jit
    def init(ctx):
        return MLP(ctx=ctx).partition()[0]

    jitted = init(nnx.Context(0))
    eager = MLP(ctx=nnx.Context(0)).partition()[0]
    assert list(jitted) == list(eager)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6)  # same Variable types and metadata too


def test_vmap_init_over_contexts():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    states = jax.vmap(lambda ctx: MLP(ctx=ctx).partition()[0])(nnx.Context(keys))
    chex.assert_shape(states["layers/0/w"].value, (3, 3, 4))
    for i in range(3):
        single = MLP(ctx=nnx.Context(keys[i])).partition()[0]
        chex.assert_trees_all_close(jax.tree.map(lambda v, i=i: v[i], states), single, rtol=1e-6)
