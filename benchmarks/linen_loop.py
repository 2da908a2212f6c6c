"""The stock Linen training loop (TrainState with batch_stats, Optax, dropout RNGs) and the digits data.

One loop for everything that trains "without a line changed": the tests, the benchmark
suite and the digits demo (`benchmarks/` imports nothing from `tests/`). It runs Linen and
bridged models alike, with or without a ``batch_stats`` collection.
"""

from __future__ import annotations

import typing as tp

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the ``batch_stats`` collection (``{}`` when the model has none)."""

    batch_stats: tp.Any


def make_train_state(
    model: nn.Module, key: jax.Array, sample: jax.Array, tx: optax.GradientTransformation | None = None
) -> TrainState:
    """``model.init`` and a TrainState around its variables (Adam at 3e-3 unless `tx` is given)."""
    variables = model.init(key, sample, train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=optax.adam(3e-3) if tx is None else tx,
    )


def _collections(state: TrainState, params: tp.Any) -> dict[str, tp.Any]:
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def step(
    state: TrainState, x: jax.Array, y: jax.Array, dropout_key: jax.Array
) -> tuple[TrainState, jax.Array]:
    """One optimiser step on the mean cross-entropy; updates ``batch_stats`` if there are any."""

    def loss_fn(params: tp.Any) -> tuple[jax.Array, tp.Any]:
        variables = _collections(state, params)
        if state.batch_stats:
            logits, updates = state.apply_fn(
                variables, x, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
            )
            stats = updates["batch_stats"]
        else:
            logits = state.apply_fn(variables, x, train=True, rngs={"dropout": dropout_key})
            stats = state.batch_stats
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads).replace(batch_stats=stats), loss


def logits(state: TrainState, x: jax.Array) -> jax.Array:
    """Logits in evaluation mode (running averages, no dropout)."""
    return state.apply_fn(_collections(state, state.params), x, train=False)


create_state = make_train_state
train_step = jax.jit(step)
predict = jax.jit(logits)


def train(
    model: nn.Module, seed: int, data: tuple[jax.Array, ...], steps: int = 300, batch: int = 64
) -> tuple[TrainState, float]:
    """Trains `model` on `data` for `steps` random batches; returns the state and test accuracy."""
    x_train, y_train, x_test, y_test = data
    key = jax.random.PRNGKey(seed)
    state = make_train_state(model, key, x_train[:batch])
    rng = np.random.default_rng(seed)
    for i in range(steps):
        idx = rng.choice(len(x_train), batch, replace=False)
        state, _ = train_step(state, x_train[idx], y_train[idx], jax.random.fold_in(key, i))
    accuracy = float((predict(state, x_test).argmax(-1) == y_test).mean())
    return state, accuracy


def load_digits_split(split: int = 1400) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Digits scaled to [0, 1], shuffled with a fixed seed: (x_train, y_train, x_test, y_test)."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return jnp.asarray(x[:split]), jnp.asarray(y[:split]), jnp.asarray(x[split:]), jnp.asarray(y[split:])
