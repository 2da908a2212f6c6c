"""Whole models written in Linen and their nnx_bridge twins: Linen's variables load and agree.

Each Linen model is ordinary Linen code; each twin is ordinary nnx_bridge code.
Linen's variables are loaded into the twin with ``nnx.from_variables`` +
``update_state``: those ``init`` returns (evaluation tests) or random values in
their shapes (training tests); outputs, gradients with respect to parameters and
inputs, and updated batch statistics must match.

Linen names a list of submodules ``layers_0, layers_1, ...``; nnx_bridge stores
a list (and so `nn.Sequential`) at ``layers/0, layers/1, ...``. The Linen side of
a Sequential twin therefore names its layers ``"0"``, ``"1"``, ... under a
``"layers"`` submodule.
"""

from __future__ import annotations

import typing as tp

import flax.linen as linen
import jax
import jax.numpy as jnp
import pytest
from helpers import check_parity, normal, rbg_key, replay

import nnx_bridge as nnx
from nnx_bridge import nn


# ----------------------------------------------------------------------------------
# MLP: a Sequential twin
# ----------------------------------------------------------------------------------
class LinenMLPLayers(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array, *, train: bool, dropout_rng: tp.Any = None) -> jax.Array:
        x = linen.Dense(16, name="0")(x)
        x = linen.BatchNorm(use_running_average=not train, momentum=0.9, name="1")(x)
        x = linen.relu(x)
        x = linen.Dropout(0.2, name="3")(x, deterministic=not train, rng=dropout_rng)
        return linen.Dense(3, name="4")(x)


class LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array, *, train: bool, dropout_rng: tp.Any = None) -> jax.Array:
        return LinenMLPLayers(name="layers")(x, train=train, dropout_rng=dropout_rng)


def make_mlp() -> nn.Sequential:
    ctx = nnx.Context(0)
    return nn.Sequential(
        nn.Linear(8, 16, ctx=ctx),
        nn.BatchNorm(16, momentum=0.9, ctx=ctx),
        jax.nn.relu,
        nn.Dropout(0.2),
        nn.Linear(16, 3, ctx=ctx),
    )


def test_mlp_evaluation():
    check_parity(
        LinenMLP(),
        make_mlp,
        normal((6, 8)),
        values="init",
        linen_call=dict(train=False),
        our_call=dict(use_running_average=True, deterministic=True),
    )


def test_mlp_training_with_dropout_and_batch_statistics():
    (key,) = replay(rbg_key(1))
    check_parity(
        LinenMLP(),
        make_mlp,
        normal((6, 8)),
        linen_call=dict(train=True, dropout_rng=key),
        init_call=dict(train=False),
        our_call=dict(
            use_running_average=False, deterministic=False, ctx=nnx.Context({"dropout": rbg_key(1)})
        ),
        mutable=("batch_stats",),
    )


# ----------------------------------------------------------------------------------
# CNN: a hand-written twin
# ----------------------------------------------------------------------------------
class LinenCNN(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = linen.Conv(8, (3, 3), name="conv1")(x)
        x = linen.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = linen.relu(x)
        x = linen.Conv(16, (3, 3), strides=2, padding="VALID", feature_group_count=2, name="conv2")(x)
        x = linen.relu(x)
        return linen.Dense(10, name="head")(x.mean(axis=(1, 2)))


class CNN(nnx.Module):
    def __init__(self, *, ctx: nnx.Context):
        self.conv1 = nn.Conv(3, 8, (3, 3), ctx=ctx)
        self.bn1 = nn.BatchNorm(8, ctx=ctx)
        self.conv2 = nn.Conv(8, 16, (3, 3), strides=2, padding="VALID", feature_group_count=2, ctx=ctx)
        self.head = nn.Linear(16, 10, ctx=ctx)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        x = jax.nn.relu(self.conv2(x))
        return self.head(x.mean(axis=(1, 2)))


@pytest.mark.parametrize("train,values", [(True, "random"), (False, "init")], ids=["train", "eval"])
def test_cnn(train, values):
    check_parity(
        LinenCNN(),
        lambda: CNN(ctx=nnx.Context(0)),
        normal((2, 9, 9, 3)),
        values=values,
        call=dict(train=train),
        init_call=dict(train=False),
        mutable=("batch_stats",),
    )


# ----------------------------------------------------------------------------------
# Transformer block: MHA + LayerNorm + MLP (a Sequential) + residuals
# ----------------------------------------------------------------------------------
class LinenFeedForwardLayers(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array, *, train: bool, dropout_rng: tp.Any = None) -> jax.Array:
        x = linen.gelu(linen.Dense(32, name="0")(x))
        x = linen.Dropout(0.1, name="2")(x, deterministic=not train, rng=dropout_rng)
        return linen.Dense(16, name="3")(x)


class LinenFeedForward(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array, *, train: bool, dropout_rng: tp.Any = None) -> jax.Array:
        return LinenFeedForwardLayers(name="layers")(x, train=train, dropout_rng=dropout_rng)


class LinenBlock(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array, *, train: bool, dropout_rngs: tp.Any = (None, None)) -> jax.Array:
        mask = linen.make_causal_mask(jnp.ones(x.shape[:2]))
        h = linen.LayerNorm(name="ln1")(x)
        h = linen.MultiHeadDotProductAttention(num_heads=4, dropout_rate=0.1, name="attn")(
            h, mask=mask, deterministic=not train, dropout_rng=dropout_rngs[0]
        )
        x = x + h
        h = linen.LayerNorm(name="ln2")(x)
        return x + LinenFeedForward(name="mlp")(h, train=train, dropout_rng=dropout_rngs[1])


class Block(nnx.Module):
    def __init__(self, features: int, *, ctx: nnx.Context):
        self.ln1 = nn.LayerNorm(features, ctx=ctx)
        self.attn = nn.MultiHeadAttention(4, features, dropout_rate=0.1, ctx=ctx)
        self.ln2 = nn.LayerNorm(features, ctx=ctx)
        self.mlp = nn.Sequential(
            nn.Linear(features, 2 * features, ctx=ctx),
            jax.nn.gelu,
            nn.Dropout(0.1),
            nn.Linear(2 * features, features, ctx=ctx),
        )

    def __call__(self, x: jax.Array, *, train: bool, ctx: nnx.Context | None = None) -> jax.Array:
        mask = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
        x = x + self.attn(self.ln1(x), mask=mask, deterministic=not train, ctx=ctx)
        return x + self.mlp(self.ln2(x), deterministic=not train, ctx=ctx)


def test_transformer_block_evaluation():
    check_parity(
        LinenBlock(),
        lambda: Block(16, ctx=nnx.Context(0)),
        normal((2, 5, 16)),
        values="init",
        call=dict(train=False),
    )


def test_transformer_block_training_with_dropout():
    keys = replay(rbg_key(2), draws=2)  # attention draws first, then the MLP's Dropout
    check_parity(
        LinenBlock(),
        lambda: Block(16, ctx=nnx.Context(0)),
        normal((2, 5, 16)),
        init_call=dict(train=False),
        linen_call=dict(train=True, dropout_rngs=tuple(keys)),
        our_call=dict(train=True, ctx=nnx.Context({"dropout": rbg_key(2)})),
    )
