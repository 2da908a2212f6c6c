"""A stock Linen training loop (TrainState with batch_stats, Adam, dropout RNGs) and the digits data.

Shared by the tests that prove a bridged model trains "without a line changed" and by the
benchmarks (one loop; `benchmarks/` imports nothing from `tests/`).
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits


class TrainState(train_state.TrainState):
    batch_stats: tp.Any


def create_state(model, key, sample):
    variables = model.init(key, sample, train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optax.adam(3e-3),
    )


@jax.jit
def train_step(state, x, y, dropout_key):
    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads).replace(batch_stats=updates["batch_stats"])
    return state, loss


@jax.jit
def predict(state, x):
    return state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)


def train(model, seed: int, data, steps: int = 300, batch: int = 64):
    x_train, y_train, x_test, y_test = data
    key = jax.random.PRNGKey(seed)
    state = create_state(model, key, x_train[:batch])
    rng = np.random.default_rng(seed)
    for step in range(steps):
        idx = rng.choice(len(x_train), batch, replace=False)
        state, _ = train_step(state, x_train[idx], y_train[idx], jax.random.fold_in(key, step))
    accuracy = float((predict(state, x_test).argmax(-1) == y_test).mean())
    return state, accuracy


def load_digits_split(split: int = 1400):
    """Digits scaled to [0, 1], shuffled with a fixed seed: (x_train, y_train, x_test, y_test)."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return jnp.asarray(x[:split]), jnp.asarray(y[:split]), jnp.asarray(x[split:]), jnp.asarray(y[split:])
