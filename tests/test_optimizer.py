"""grad / value_and_grad over Modules, Optimizer, and the NNX-style loop against Linen's TrainState."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import nnx_bridge as nnx
from benchmarks.linen_loop import create_state, load_digits_split, train_step


class Encoder(nnx.Module):
    def __init__(self, *, ctx):
        self.lin = nnx.Linear(3, 4, ctx=ctx)
        self.bn = nnx.BatchNorm(4, ctx=ctx)

    def __call__(self, x, *, train):
        return jax.nn.relu(self.bn(self.lin(x), use_running_average=not train))


class Net(nnx.Module):
    def __init__(self, *, ctx):
        self.encoder = Encoder(ctx=ctx)
        self.head = nnx.Linear(4, 2, ctx=ctx)

    def __call__(self, x, *, train=True):
        return self.head(self.encoder(x, train=train))


X = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
Y = jnp.array([0, 1, 1, 0, 1, 0, 0, 1])


def loss_fn(model, x=X, y=Y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def linen_layout_grads(model):
    """Reference gradients: jax.grad over the Linen layout of the same model."""
    params, rest, moduledef = model.partition("params", ...)

    def pure(params):
        out, _ = moduledef.apply(params, rest)(X)
        return optax.softmax_cross_entropy_with_integer_labels(out, Y).mean()

    return jax.grad(pure)(params)


# ----------------------------------------------------------------------------------
# grad / value_and_grad
# ----------------------------------------------------------------------------------
def test_grads_are_a_state_at_the_param_paths_and_batch_stats_reach_the_caller():
    model = Net(ctx=nnx.Context(0))
    expected = linen_layout_grads(model)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    assert type(grads) is nnx.State and list(grads) == list(expected)
    assert all(type(grad) is nnx.Param for grad in grads.values())
    chex.assert_trees_all_close(grads, expected, rtol=1e-6)
    assert float(loss) == pytest.approx(float(loss_fn(Net(ctx=nnx.Context(0)))), rel=1e-6)
    assert not np.array_equal(model.encoder.bn.mean.value, np.zeros(4))  # statistics updated once
    assert all(isinstance(v.value, jax.Array) for v in model.partition()[0].values())  # no tracers left


def test_wrt_filters_select_the_differentiated_variables():
    model = Net(ctx=nnx.Context(0))
    frozen = nnx.All("params", nnx.Not(nnx.PathContains("encoder")))
    assert list(nnx.grad(loss_fn, wrt=frozen)(model)) == ["head/bias", "head/kernel"]
    assert list(nnx.grad(loss_fn, wrt=nnx.PathContains("kernel"))(model)) == [
        "encoder/lin/kernel",
        "head/kernel",
    ]
    stats = nnx.grad(lambda m: m.encoder.bn.var.value.sum(), wrt="batch_stats")(model)
    assert list(stats) == ["encoder/bn/mean", "encoder/bn/var"]


def test_has_aux_argnums_and_plain_arguments():
    model = Net(ctx=nnx.Context(0))

    def fn(model, scale):
        loss = loss_fn(model) * scale
        return loss, {"scaled": loss}

    (loss, aux), (_, g_scale) = nnx.value_and_grad(fn, argnums=(0, 1), has_aux=True)(model, 2.0)
    assert float(aux["scaled"]) == float(loss)
    np.testing.assert_allclose(g_scale, float(loss) / 2.0, rtol=1e-5)
    grads, aux = nnx.grad(fn, has_aux=True)(model, 1.0)
    assert "head/kernel" in grads and "scaled" in aux


def test_grad_creates_lazy_variables_with_plain_values():
    class Lazy(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(3))

        def __call__(self):
            seen = self.variable("stats", "seen", jnp.zeros, (3,))
            seen.value = seen.value + self.w.value
            return (self.w.value**2).sum()

    m = Lazy()
    grads = nnx.grad(lambda m: m())(m)
    assert grads["w"].value.tolist() == [2.0, 2.0, 2.0]
    assert isinstance(m.seen.value, jax.Array) and m.seen.value.tolist() == [1.0, 1.0, 1.0]


def test_grad_errors():
    model = Net(ctx=nnx.Context(0))
    with pytest.raises(ValueError, match=r"wrt='cache' selects no Variable of argument 0 \(Net\)"):
        nnx.grad(loss_fn, wrt="cache")(model)
    with pytest.raises(TypeError, match=r"has_aux=True\): the function must return a pair"):
        nnx.grad(loss_fn, has_aux=True)(model)
    with pytest.raises(TypeError, match=r"argnums includes 1, but the call has only 1"):
        nnx.grad(loss_fn, argnums=1)(model)
    with pytest.raises(TypeError, match="argnums takes an int or a tuple of ints"):
        nnx.grad(loss_fn, argnums=-1)


# ----------------------------------------------------------------------------------
# Optimizer
# ----------------------------------------------------------------------------------
def test_optimizer_matches_optax_on_the_linen_layout():
    model = Net(ctx=nnx.Context(0))
    params = nnx.to_variables(model.partition("params", ...)[0])["params"]
    tx = optax.adamw(1e-2)
    optimizer = nnx.Optimizer(model, tx)
    opt_state = tx.init(params)
    for _ in range(3):
        grads = nnx.grad(loss_fn)(model)
        ref_grads = nnx.to_variables(grads)["params"]
        updates, opt_state = tx.update(ref_grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        optimizer.update(model, grads)
    got = nnx.to_variables(model.partition("params", ...)[0])["params"]
    jax.tree.map(np.testing.assert_array_equal, got, params)
    assert int(optimizer.step.value) == 3 and optimizer.step.value.dtype == jnp.uint32
    mu = optimizer.opt_state[0].mu
    assert isinstance(mu["head"]["kernel"], nnx.OptState)
    np.testing.assert_array_equal(mu["head"]["kernel"].value, opt_state[0].mu["head"]["kernel"])


def test_optimizer_is_a_module_of_opt_state_variables():
    model = Net(ctx=nnx.Context(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3))
    state, _ = optimizer.partition()
    assert {v.collection for v in state.values()} == {"opt_state"}
    assert "step" in state and "opt_state/0/mu/encoder/lin/kernel" in state


def test_frozen_submodule_is_not_trained():
    model = Net(ctx=nnx.Context(0))
    wrt = nnx.All("params", nnx.Not(nnx.PathContains("encoder")))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=wrt)
    encoder_kernel, head_kernel = model.encoder.lin.kernel.value, model.head.kernel.value
    optimizer.update(model, nnx.grad(loss_fn, wrt=wrt)(model))
    assert model.encoder.lin.kernel.value is encoder_kernel
    assert not np.array_equal(model.head.kernel.value, head_kernel)
    optimizer.update(model, nnx.grad(loss_fn)(model))  # gradients of more paths: the rest ignored
    assert model.encoder.lin.kernel.value is encoder_kernel


def test_optimizer_errors():
    model = Net(ctx=nnx.Context(0))
    with pytest.raises(TypeError, match="model must be an nnx_bridge Module; found dict"):
        nnx.Optimizer({"w": 1}, optax.sgd(0.1))
    with pytest.raises(TypeError, match="tx must be an optax GradientTransformation"):
        nnx.Optimizer(model, 0.1)
    with pytest.raises(ValueError, match="wrt='cache' selects no Variable of the Net"):
        nnx.Optimizer(model, optax.sgd(0.1), wrt="cache")
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    grads = nnx.grad(loss_fn, wrt=nnx.PathContains("head"))(model)
    with pytest.raises(ValueError, match=r"do not match the trained parameters.*missing \['encoder/bn/bias'"):
        optimizer.update(model, grads)
    with pytest.raises(TypeError, match="grads must be a State of gradients by path"):
        optimizer.update(model, [1.0])


# ----------------------------------------------------------------------------------
# the NNX-style loop: jit + value_and_grad + Optimizer
# ----------------------------------------------------------------------------------
class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(nn.Dense(64, name="l1")(x))
        return nn.Dense(10, name="l2")(nn.relu(x))


class MLP(nnx.Module):
    def __init__(self, *, ctx):
        self.l1 = nnx.Linear(64, 64, ctx=ctx)
        self.bn = nnx.BatchNorm(64, momentum=0.9, ctx=ctx)
        self.l2 = nnx.Linear(64, 10, ctx=ctx)

    def __call__(self, x, *, train):
        return self.l2(jax.nn.relu(self.bn(self.l1(x), use_running_average=not train)))


@nnx.jit
def nnx_step(model, optimizer, x, y):
    def loss(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x, train=True), y).mean()

    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value


def test_fifty_steps_equal_linens_trainstate_bit_for_bit_on_digits(tmp_path):
    x_train, y_train, _, _ = load_digits_split()
    state = create_state(LinenMLP(), jax.random.PRNGKey(0), x_train[:64])  # adam(3e-3)
    model = MLP(ctx=nnx.Context(1))  # other initial values, then Linen's loaded
    model.update_state(nnx.from_variables({"params": state.params, "batch_stats": state.batch_stats}))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3))
    rng = np.random.default_rng(0)
    linen_losses, nnx_losses = [], []
    for step in range(50):
        idx = rng.choice(len(x_train), 64, replace=False)
        state, loss = train_step(state, x_train[idx], y_train[idx], jax.random.PRNGKey(step))
        linen_losses.append(np.asarray(loss))
        nnx_losses.append(np.asarray(nnx_step(model, optimizer, x_train[idx], y_train[idx])))
    assert [loss.tobytes() for loss in nnx_losses] == [loss.tobytes() for loss in linen_losses]
    trained = nnx.to_variables(model.partition()[0])
    jax.tree.map(np.testing.assert_array_equal, trained["params"], state.params)
    jax.tree.map(np.testing.assert_array_equal, trained["batch_stats"], state.batch_stats)
    assert int(optimizer.step.value) == int(state.step) == 50

    # Orbax round trip of model + Optimizer; training resumes exactly.
    checkpoint = {
        "model": nnx.to_variables(model.partition()[0]),
        "optimizer": nnx.to_variables(optimizer.partition()[0]),
    }
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", checkpoint)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "ckpt", jax.eval_shape(lambda: checkpoint))
    fresh = MLP(ctx=nnx.Context(7))
    fresh_optimizer = nnx.Optimizer(fresh, optax.adam(3e-3))
    fresh.update_state(nnx.from_variables(restored["model"]))
    fresh_optimizer.update_state(nnx.from_variables(restored["optimizer"]))
    assert int(fresh_optimizer.step.value) == 50
    idx = rng.choice(len(x_train), 64, replace=False)
    expected = nnx_step(model, optimizer, x_train[idx], y_train[idx])
    np.testing.assert_array_equal(nnx_step(fresh, fresh_optimizer, x_train[idx], y_train[idx]), expected)
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_variables(fresh.partition()[0]),
        nnx.to_variables(model.partition()[0]),
    )


def test_train_step_traces_once_with_dropout_context():
    class DropNet(Net):
        def __call__(self, x, *, ctx):
            return nnx.Dropout(0.5)(self.head(self.encoder(x, train=True)), deterministic=False, ctx=ctx)

    traces = []
    model = DropNet(ctx=nnx.Context(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    ctx = nnx.Context({"dropout": jax.random.PRNGKey(1)})

    @nnx.jit
    def step(model, optimizer, ctx, x, y):
        traces.append(1)

        def loss(model):
            logits = model(x, ctx=ctx)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits == 0

        (value, dropped), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        optimizer.update(model, grads)
        return value, dropped

    masks = [np.asarray(step(model, optimizer, ctx, X, Y)[1]) for _ in range(4)]
    assert len(traces) == 1 and int(optimizer.step.value) == 4 and ctx.count == 4
    assert len({m.tobytes() for m in masks}) == 4


MESH_SCRIPT = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np, optax
    import nnx_bridge as nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    class MLP(nnx.Module):
        def __init__(self, *, ctx):
            self.up = nnx.Linear(8, 16, sharding=(None, "model"), ctx=ctx)
            self.down = nnx.Linear(16, 4, sharding=("model", None), ctx=ctx)
        def __call__(self, x):
            return self.down(jax.nn.relu(self.up(x)))

    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: ((m(x) - y) ** 2).mean())(model)
        optimizer.update(model, grads)
        return loss

    def train(model, x, y, **shardings):
        optimizer = nnx.Optimizer(model, optax.adam(1e-2))
        jitted = nnx.jit(step, **{k: v(optimizer) for k, v in shardings.items()})
        return [float(jitted(model, optimizer, x, y)) for _ in range(3)], optimizer

    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 8))
    y = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
    single = MLP(ctx=nnx.Context(0))
    model = MLP(ctx=nnx.Context(0))
    model_sharding = nnx.get_named_sharding(model.partition()[0], mesh)
    model.update_state(jax.device_put(model.partition()[0], model_sharding))
    data = NamedSharding(mesh, P("data"))
    mesh_losses, optimizer = train(model, jax.device_put(x, data), jax.device_put(y, data),
        in_shardings=lambda opt: (
            model_sharding, nnx.get_named_sharding(opt.partition()[0], mesh), data, data),
        out_shardings=lambda opt: NamedSharding(mesh, P()))
    single_losses, _ = train(single, x, y)
    kernel = model.up.kernel.value
    mu = optimizer.opt_state[0].mu["up"]["kernel"]
    print("RESULT " + json.dumps({
        "mesh": mesh_losses, "single": single_losses,
        "kernel_spec": list(kernel.sharding.spec),
        "kernel_shards": sorted({tuple(s.data.shape) for s in kernel.addressable_shards}),
        "mu_names": list(mu.sharding), "mu_spec": list(mu.value.sharding.spec),
        "down_spec": list(model.down.kernel.value.sharding.spec)}))
""")


def test_train_step_on_a_simulated_8_device_mesh(tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    }
    done = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    report = json.loads(line[len("RESULT ") :])
    np.testing.assert_allclose(report["mesh"], report["single"], rtol=1e-5)
    assert report["kernel_spec"] == [None, "model"] and report["kernel_shards"] == [[8, 4]]
    assert report["down_spec"] == ["model"]  # PartitionSpec drops trailing Nones
    assert report["mu_names"] == [None, "model"] and report["mu_spec"] == [None, "model"]


def test_scan_model_trains_under_jit():
    class Block(nnx.Module):
        def __init__(self, *, ctx):
            self.lin = nnx.Linear(3, 3, ctx=ctx)

        def __call__(self, x):
            return jnp.tanh(self.lin(x))

    class Deep(nnx.Module):
        def __init__(self, *, ctx):
            self.blocks = nnx.Scan(Block, 4, ctx=ctx)
            self.head = nnx.Linear(3, 2, ctx=ctx)

        def __call__(self, x):
            return self.head(self.blocks(x))

    model = Deep(ctx=nnx.Context(0))
    optimizer = nnx.Optimizer(model, optax.adam(5e-2))
    assert optimizer.opt_state[0].mu["blocks"]["block"]["lin"]["kernel"].sharding is None

    @nnx.jit
    def step(model, optimizer):
        value, grads = nnx.value_and_grad(loss_fn)(model)
        chex.assert_shape(grads["blocks/block/lin/kernel"].value, (4, 3, 3))
        optimizer.update(model, grads)
        return value

    losses = [float(step(model, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
