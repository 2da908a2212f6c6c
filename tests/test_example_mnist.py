"""The MNIST example's loop (Flax's last Linen ``examples/mnist/train.py``) with only the model line changed.

The loop below keeps the example's functions and calls (``apply_model`` under
``jax.jit`` returning grads, loss and accuracy; ``update_model``; an epoch of
permuted batches; ``create_train_state`` from ``model.init(...)['params']``
and ``optax.sgd`` with momentum), written here in this project's words, on the
8x8 digits instead of MNIST. The bridged CNN and its Linen twin share one
variables dict and train to the same numbers, bit for bit.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import nnx_bridge as nnx
from benchmarks.linen_loop import load_digits_split


class LinenCNN(nn.Module):
    """The example's CNN layout (two conv + average-pool stages, two dense layers)."""

    @nn.compact
    def __call__(self, x):
        for features in (32, 64):
            x = nn.avg_pool(nn.relu(nn.Conv(features, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(256)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(x)


class CNN(nnx.Module):
    """The same network in nnx_bridge; attribute names follow Linen's automatic names."""

    def __init__(self, *, ctx: nnx.Context, image_size: int = 8):
        self.Conv_0 = nnx.Conv(1, 32, (3, 3), ctx=ctx)
        self.Conv_1 = nnx.Conv(32, 64, (3, 3), ctx=ctx)
        self.Dense_0 = nnx.Linear(64 * (image_size // 4) ** 2, 256, ctx=ctx)
        self.Dense_1 = nnx.Linear(256, 10, ctx=ctx)

    def __call__(self, x):
        for conv in (self.Conv_0, self.Conv_1):
            x = nn.avg_pool(jax.nn.relu(conv(x)), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return self.Dense_1(jax.nn.relu(self.Dense_0(x)))


# ---------------------------------------------------------------------------------------------
# The example's loop, in this project's words.
# ---------------------------------------------------------------------------------------------
@jax.jit
def apply_model(state, images, labels):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, images)
        loss = jnp.mean(optax.softmax_cross_entropy(logits=logits, labels=jax.nn.one_hot(labels, 10)))
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return grads, loss, jnp.mean(jnp.argmax(logits, -1) == labels)


@jax.jit
def update_model(state, grads):
    return state.apply_gradients(grads=grads)


def train_epoch(state, train_ds, batch_size, rng):
    steps = len(train_ds["image"]) // batch_size
    perms = jax.random.permutation(rng, len(train_ds["image"]))[: steps * batch_size]
    losses, accuracies = [], []
    for perm in perms.reshape((steps, batch_size)):
        grads, loss, accuracy = apply_model(state, train_ds["image"][perm, ...], train_ds["label"][perm, ...])
        state = update_model(state, grads)
        losses.append(loss)
        accuracies.append(accuracy)
    return state, np.mean(losses), np.mean(accuracies)


def create_train_state(rng, model, params=None):
    if params is None:
        params = model.init(rng, jnp.ones([1, 8, 8, 1]))["params"]
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1, 0.9))


def train_and_evaluate(model, datasets, epochs=2, params=None):
    train_ds, test_ds = datasets
    rng, init_rng = jax.random.split(jax.random.key(0))
    state = create_train_state(init_rng, model, params)
    history = []
    for _ in range(epochs):
        rng, input_rng = jax.random.split(rng)
        state, train_loss, train_accuracy = train_epoch(state, train_ds, 128, input_rng)
        _, test_loss, test_accuracy = apply_model(state, test_ds["image"], test_ds["label"])
        history.append((float(train_loss), float(train_accuracy), float(test_loss), float(test_accuracy)))
    return state, history


def digits():
    x_train, y_train, x_test, y_test = load_digits_split()
    return (
        {"image": x_train.reshape(-1, 8, 8, 1), "label": y_train},
        {"image": x_test.reshape(-1, 8, 8, 1), "label": y_test},
    )


def test_mnist_loop_trains_the_bridged_cnn_as_the_linen_twin():
    datasets = digits()
    linen_state, linen_history = train_and_evaluate(LinenCNN(), datasets)
    # Only the model line changes. The bridged model starts from the Linen twin's init
    # (the same variables dict loads into both), so every number must agree exactly.
    linen_init = LinenCNN().init(jax.random.split(jax.random.key(0))[1], jnp.ones([1, 8, 8, 1]))["params"]
    state, history = train_and_evaluate(nnx.to_linen(CNN), datasets, params=linen_init)
    assert history == linen_history
    jax.tree.map(np.testing.assert_array_equal, state.params, linen_state.params)
    assert history[-1][0] < history[0][0] and history[-1][3] > 0.3  # it learns (10 classes)
    # From its own init, the bridged model has the example's layout.
    own = create_train_state(jax.random.key(1), nnx.to_linen(CNN)).params
    assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, linen_init)
