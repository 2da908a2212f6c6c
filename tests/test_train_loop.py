"""A stock Flax/Optax/Orbax training loop drives a bridged model: only the model line differs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import nnx_bridge as nnx
from benchmarks.linen_loop import create_state, load_digits_split, predict, train
from nnx_bridge.linen import config


# ---- the two models: a Linen MLP and its nnx_bridge twin (same variable names) ----------------
class LinenMLP(nn.Module):
    hidden: int = 64
    classes: int = 10
    dropout: float = 0.2

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Dense(self.hidden, name="l1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train, name="drop")(x)
        return nn.Dense(self.classes, name="l2")(x)


class BridgedMLP(nnx.Module):
    def __init__(
        self, features: int, hidden: int = 64, classes: int = 10, dropout: float = 0.2, *, ctx: nnx.Context
    ):
        self.l1 = nnx.Linear(features, hidden, ctx=ctx)
        self.bn = nnx.BatchNorm(hidden, momentum=0.9, ctx=ctx)
        self.drop = nnx.Dropout(dropout)
        self.l2 = nnx.Linear(hidden, classes, ctx=ctx)

    def __call__(self, x, *, train: bool, ctx: nnx.Context | None = None):
        x = self.bn(self.l1(x), use_running_average=not train)
        x = self.drop(jax.nn.relu(x), deterministic=not train, ctx=ctx)
        return self.l2(x)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def test_trainstate_loop_reaches_the_linen_twins_accuracy(digits):
    for seed in (0, 1, 2):
        _, linen_acc = train(LinenMLP(), seed, digits)
        state, bridged_acc = train(nnx.to_linen(BridgedMLP, 64), seed, digits)  # the only change
        assert bridged_acc > 0.9, (seed, bridged_acc)
        assert abs(bridged_acc - linen_acc) <= 0.04, (seed, linen_acc, bridged_acc)
    assert int(jax.tree.leaves(state.step)[0]) == 300


def test_batch_stats_update_only_through_mutable(digits):
    model = nnx.to_linen(BridgedMLP, 64)
    x = digits[0][:32]
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    _, updates = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"]
    )
    assert not np.allclose(updates["batch_stats"]["bn"]["mean"], variables["batch_stats"]["bn"]["mean"])
    with pytest.raises(ValueError, match=r"collection 'batch_stats' is not mutable"):
        model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    with pytest.raises(nnx.MissingRngStreamError, match=r"needs the RNG stream 'dropout'"):
        model.apply(variables, x, train=True, mutable=["batch_stats"])


def test_linen_weights_load_into_the_bridge_and_back(digits):
    x = digits[0][:16]
    linen, bridged = LinenMLP(dropout=0.0), nnx.to_linen(BridgedMLP, 64, dropout=0.0)
    linen_vars = linen.init(jax.random.PRNGKey(3), x, train=False)
    bridged_vars = bridged.init(jax.random.PRNGKey(4), x, train=False)
    assert jax.tree.structure(linen_vars) == jax.tree.structure(bridged_vars)
    assert jax.tree.map(jnp.shape, linen_vars) == jax.tree.map(jnp.shape, bridged_vars)
    for variables in (linen_vars, bridged_vars):
        for training in (False, True):
            a = linen.apply(variables, x, train=training, mutable=["batch_stats"])
            b = bridged.apply(variables, x, train=training, mutable=["batch_stats"])
            np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
            jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6), a[1], b[1])


def test_orbax_round_trip_and_apply_in_a_fresh_wrapper(digits, tmp_path):
    x = digits[0][:16]
    state, _ = train(nnx.to_linen(BridgedMLP, 64), 0, digits, steps=20)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    original = nnx.to_linen(BridgedMLP, 64)
    expected = original.apply(variables, x, train=False)

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "variables", variables)
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()

    config._structures.clear()  # as in a new process that never ran init
    restored = checkpointer.restore(tmp_path / "variables", jax.eval_shape(lambda: variables))
    fresh = nnx.to_linen(BridgedMLP, 64)
    np.testing.assert_array_equal(fresh.apply(restored, x, train=False), expected)  # bitwise

    template = create_state(fresh, jax.random.PRNGKey(9), x)
    restored_state = checkpointer.restore(tmp_path / "state", template)
    assert int(restored_state.step) == 20
    jax.tree.map(np.testing.assert_array_equal, restored_state.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, restored_state.opt_state, state.opt_state)
    np.testing.assert_array_equal(predict(restored_state, x), predict(state, x))  # bitwise, both jitted
