"""Recurrent layers against Flax Linen: cells, RNN options, Bidirectional, a digits model.

Cells: Linen's ``init`` gives the variable tree, which must equal ours; random
values in those shapes are loaded into ours (``from_variables`` +
``update_state``) and one step's carry, output and gradients (parameters,
carry, input) must equal Linen's bit for bit. They can: every cell does
Linen's operations in Linen's order, in one jitted program beside Linen's.

RNN and Bidirectional run through ``nnx.to_linen`` in a jitted TrainState step
beside Linen's ``nn.RNN`` / ``nn.Bidirectional`` (same variables): the layout,
outputs, carries, loss and updated parameters must be bit for bit equal too —
the scan is a `jax.lax.scan` over the same step, with the parameters broadcast.
"""

from __future__ import annotations

import functools
import typing as tp

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import nnx_bridge as nnx
from nnx_bridge import nn
from linen_loop import load_digits_split, train
from test_nn_parity import (FAST_COMPILE, assert_same_layout, build_abstract, load, plain, random_like,
                            rbg_key, weighted_sum)

F32, BF16 = jnp.float32, jnp.bfloat16


def normal(shape: tuple[int, ...], dtype: tp.Any = F32, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def tree_loss(tree: tp.Any) -> jax.Array:
    return sum(weighted_sum(leaf) for leaf in jax.tree.leaves(tree))


def assert_bitwise(ours: tp.Any, theirs: tp.Any) -> None:
    assert_same_layout(ours, theirs)
    for a, b in zip(jax.tree.leaves(plain(ours)), jax.tree.leaves(plain(theirs))):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


# ----------------------------------------------------------------------------------
# cells: one step
# ----------------------------------------------------------------------------------
def check_cell(linen_cell: linen.Module, make_ours: tp.Callable[[], nn.RNNCellBase], x: jax.Array,
               carry_seed: int = 3) -> None:
    """Layout equal to Linen's; step outputs and gradients bit for bit equal."""
    carry = jax.tree.map(lambda c: normal(c.shape, c.dtype, carry_seed),
                         linen_cell.initialize_carry(rbg_key(1), x.shape))
    variables = random_like(jax.eval_shape(linen_cell.init, rbg_key(0), carry, x))
    ours = build_abstract(make_ours)
    assert_same_layout(nnx.to_variables(ours.partition()[0]), variables)
    load(ours, variables)
    params, moduledef = ours.partition()

    def linen_loss(p: tp.Any, c: tp.Any, xs: jax.Array) -> tp.Any:
        out = linen_cell.apply({"params": p}, c, xs)
        return tree_loss(out), out

    def our_loss(p: nnx.State, c: tp.Any, xs: jax.Array) -> tp.Any:
        out, _ = moduledef.apply(p)(c, xs)
        return tree_loss(out), out

    @jax.jit
    def both(linen_params: tp.Any, our_params: nnx.State, c: tp.Any, xs: jax.Array) -> tp.Any:
        grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 2), has_aux=True)
        return grad(linen_loss)(linen_params, c, xs), grad(our_loss)(our_params, c, xs)

    args = (variables["params"], params, carry, x)
    (linen_out, linen_grads), (our_out, our_grads) = both.lower(*args).compile(FAST_COMPILE)(*args)
    assert_bitwise(our_out, linen_out)
    assert_bitwise((nnx.to_variables(our_grads[0])["params"], *our_grads[1:]), linen_grads)


CELL_CASES = {  # id: (Linen cell, our cell factory, step input shape); dtype cases included
    "simple": (linen.SimpleCell(4), lambda: nn.SimpleCell(3, 4, ctx=nnx.Context(0)), (2, 3)),
    "simple-residual-relu-bf16": (
        linen.SimpleCell(3, residual=True, activation_fn=jax.nn.relu, dtype=BF16),
        lambda: nn.SimpleCell(3, 3, residual=True, activation_fn=jax.nn.relu, dtype=BF16,
                              ctx=nnx.Context(0)), (2, 3)),
    "lstm": (linen.LSTMCell(5), lambda: nn.LSTMCell(3, 5, ctx=nnx.Context(0)), (2, 3)),
    "lstm-bf16-params": (linen.LSTMCell(4, param_dtype=BF16),
                         lambda: nn.LSTMCell(3, 4, param_dtype=BF16, ctx=nnx.Context(0)), (2, 3)),
    "lstm-gates-unbatched": (
        linen.LSTMCell(4, gate_fn=jax.nn.hard_sigmoid, activation_fn=jax.nn.gelu),
        lambda: nn.LSTMCell(2, 4, gate_fn=jax.nn.hard_sigmoid, activation_fn=jax.nn.gelu,
                            ctx=nnx.Context(0)), (2,)),
    "optimized-lstm": (linen.OptimizedLSTMCell(5),
                       lambda: nn.OptimizedLSTMCell(3, 5, ctx=nnx.Context(0)), (2, 2, 3)),
    "optimized-lstm-bf16": (linen.OptimizedLSTMCell(4, dtype=BF16),
                            lambda: nn.OptimizedLSTMCell(3, 4, dtype=BF16, ctx=nnx.Context(0)), (2, 3)),
    "gru": (linen.GRUCell(5), lambda: nn.GRUCell(3, 5, ctx=nnx.Context(0)), (2, 3)),
    "gru-bf16": (linen.GRUCell(4, dtype=BF16, param_dtype=BF16),
                 lambda: nn.GRUCell(3, 4, dtype=BF16, param_dtype=BF16, ctx=nnx.Context(0)), (2, 3)),
    "mgu": (linen.MGUCell(5), lambda: nn.MGUCell(3, 5, ctx=nnx.Context(0)), (2, 3)),
    "mgu-no-reset-bf16": (linen.MGUCell(4, reset_gate=False, dtype=BF16),
                          lambda: nn.MGUCell(3, 4, reset_gate=False, dtype=BF16, ctx=nnx.Context(0)),
                          (2, 3)),
    "conv-lstm-2d": (linen.ConvLSTMCell(4, (3, 3)),
                     lambda: nn.ConvLSTMCell(3, 4, (3, 3), ctx=nnx.Context(0)), (2, 5, 5, 3)),
    "conv-lstm-1d-valid-bf16": (
        linen.ConvLSTMCell(3, (2,), padding=((1, 0),), use_bias=False, dtype=BF16),
        lambda: nn.ConvLSTMCell(2, 3, (2,), padding=((1, 0),), use_bias=False, dtype=BF16,
                                ctx=nnx.Context(0)), (2, 6, 2)),
}


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_cell_matches_linen_bit_for_bit(case):
    linen_cell, make_ours, shape = CELL_CASES[case]
    x_dtype = BF16 if case.endswith("bf16") else F32
    check_cell(linen_cell, make_ours, normal(shape, x_dtype))
