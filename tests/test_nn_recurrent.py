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
from helpers import (
    FAST_COMPILE,
    assert_same_layout,
    build_abstract,
    load,
    plain,
    random_like,
    rbg_key,
    weighted_sum,
)

import nnx_bridge as nnx
from benchmarks.linen_loop import load_digits_split, train
from nnx_bridge import nn

F32, BF16 = jnp.float32, jnp.bfloat16


def normal(shape: tuple[int, ...], dtype: tp.Any = F32, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def tree_loss(tree: tp.Any) -> jax.Array:
    return sum(weighted_sum(leaf) for leaf in jax.tree.leaves(tree))


def assert_bitwise(ours: tp.Any, theirs: tp.Any) -> None:
    assert_same_layout(ours, theirs)
    for a, b in zip(jax.tree.leaves(plain(ours)), jax.tree.leaves(plain(theirs)), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


# ----------------------------------------------------------------------------------
# cells: one step
# ----------------------------------------------------------------------------------
def check_cell(
    linen_cell: linen.Module, make_ours: tp.Callable[[], nn.RNNCellBase], x: jax.Array, carry_seed: int = 3
) -> None:
    """Layout equal to Linen's; step outputs and gradients bit for bit equal."""
    carry = jax.tree.map(
        lambda c: normal(c.shape, c.dtype, carry_seed), linen_cell.initialize_carry(rbg_key(1), x.shape)
    )
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
        lambda: nn.SimpleCell(3, 3, residual=True, activation_fn=jax.nn.relu, dtype=BF16, ctx=nnx.Context(0)),
        (2, 3),
    ),
    "lstm": (linen.LSTMCell(5), lambda: nn.LSTMCell(3, 5, ctx=nnx.Context(0)), (2, 3)),
    "lstm-bf16-params": (
        linen.LSTMCell(4, param_dtype=BF16),
        lambda: nn.LSTMCell(3, 4, param_dtype=BF16, ctx=nnx.Context(0)),
        (2, 3),
    ),
    "lstm-gates-unbatched": (
        linen.LSTMCell(4, gate_fn=jax.nn.hard_sigmoid, activation_fn=jax.nn.gelu),
        lambda: nn.LSTMCell(2, 4, gate_fn=jax.nn.hard_sigmoid, activation_fn=jax.nn.gelu, ctx=nnx.Context(0)),
        (2,),
    ),
    "optimized-lstm": (
        linen.OptimizedLSTMCell(5),
        lambda: nn.OptimizedLSTMCell(3, 5, ctx=nnx.Context(0)),
        (2, 2, 3),
    ),
    "optimized-lstm-bf16": (
        linen.OptimizedLSTMCell(4, dtype=BF16),
        lambda: nn.OptimizedLSTMCell(3, 4, dtype=BF16, ctx=nnx.Context(0)),
        (2, 3),
    ),
    "gru": (linen.GRUCell(5), lambda: nn.GRUCell(3, 5, ctx=nnx.Context(0)), (2, 3)),
    "gru-bf16": (
        linen.GRUCell(4, dtype=BF16, param_dtype=BF16),
        lambda: nn.GRUCell(3, 4, dtype=BF16, param_dtype=BF16, ctx=nnx.Context(0)),
        (2, 3),
    ),
    "mgu": (linen.MGUCell(5), lambda: nn.MGUCell(3, 5, ctx=nnx.Context(0)), (2, 3)),
    "mgu-no-reset-bf16": (
        linen.MGUCell(4, reset_gate=False, dtype=BF16),
        lambda: nn.MGUCell(3, 4, reset_gate=False, dtype=BF16, ctx=nnx.Context(0)),
        (2, 3),
    ),
    "conv-lstm-2d": (
        linen.ConvLSTMCell(4, (3, 3)),
        lambda: nn.ConvLSTMCell(3, 4, (3, 3), ctx=nnx.Context(0)),
        (2, 5, 5, 3),
    ),
    "conv-lstm-1d-valid-bf16": (
        linen.ConvLSTMCell(3, (2,), padding=((1, 0),), use_bias=False, dtype=BF16),
        lambda: nn.ConvLSTMCell(
            2, 3, (2,), padding=((1, 0),), use_bias=False, dtype=BF16, ctx=nnx.Context(0)
        ),
        (2, 6, 2),
    ),
}


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_cell_matches_linen_bit_for_bit(case):
    linen_cell, make_ours, shape = CELL_CASES[case]
    x_dtype = BF16 if case.endswith("bf16") else F32
    check_cell(linen_cell, make_ours, normal(shape, x_dtype))


def test_initialize_carry_matches_linen_and_takes_both_argument_orders():
    carry_init = jax.nn.initializers.normal(0.5)
    conv = build_abstract(lambda: nn.ConvLSTMCell(3, 4, (2,), carry_init=carry_init, ctx=nnx.Context(0)))
    gru = build_abstract(lambda: nn.GRUCell(3, 4, carry_init=carry_init, ctx=nnx.Context(0)))
    lstm = build_abstract(lambda: nn.LSTMCell(3, 4, param_dtype=BF16, ctx=nnx.Context(0)))

    @jax.jit  # one program instead of one per random op
    def carries(key: jax.Array) -> tp.Any:
        shape = (2, 6, 3)
        return dict(
            linen_conv=linen.ConvLSTMCell(4, (2,), carry_init=carry_init).initialize_carry(key, shape),
            conv=conv.initialize_carry(key, shape),
            conv_nnx_order=conv.initialize_carry(shape, key),
            linen_gru=linen.GRUCell(4, carry_init=carry_init).initialize_carry(key, (5, 3)),
            gru=gru.initialize_carry(key, (5, 3)),
            gru_ctx=gru.initialize_carry((5, 3), nnx.Context({"carry": key})),
            gru_ctx_keyword=gru.initialize_carry((5, 3), ctx=nnx.Context({"carry": key})),
            lstm_zeros=lstm.initialize_carry((5, 3)),
        )

    out = carries(rbg_key(7))
    assert_bitwise(out["conv"], out["linen_conv"])
    assert_bitwise(out["conv_nnx_order"], out["linen_conv"])
    assert_bitwise(out["gru"], out["linen_gru"])
    assert out["gru_ctx"].shape == (5, 4) and float(jnp.std(out["gru_ctx"])) > 0.1
    assert not np.array_equal(out["gru_ctx"], out["gru"])  # a key drawn from the Context's stream
    assert_bitwise(out["gru_ctx_keyword"], out["gru_ctx"])
    assert [(z.shape, z.dtype, float(jnp.abs(z).max())) for z in out["lstm_zeros"]] == [
        ((5, 4), BF16, 0.0)
    ] * 2


def test_initialize_carry_errors():
    cell = build_abstract(
        lambda: nn.LSTMCell(3, 4, carry_init=jax.nn.initializers.normal(), ctx=nnx.Context(0))
    )
    with pytest.raises(ValueError, match=r"LSTMCell.initialize_carry: the carry initialiser .* no RNG"):
        cell.initialize_carry((2, 3))
    with pytest.raises(TypeError, match=r"expected an input shape .* found"):
        cell.initialize_carry(jax.random.key(0), 3)
    with pytest.raises(TypeError, match=r"RNG must be a JAX key, an int seed, a Context or None; found str"):
        cell.initialize_carry("key", (2, 3))
    with pytest.raises(TypeError, match=r"got both an RNG \(int\) and ctx=; pass one of them"):
        cell.initialize_carry(0, (2, 3), ctx=nnx.Context(0))


def test_cell_errors_name_the_sizes():
    cell = build_abstract(lambda: nn.GRUCell(3, 4, ctx=nnx.Context(0)))  # the checks come first
    with pytest.raises(
        ValueError,
        match=r"GRUCell\(in_features=3, hidden_features=4\) expects inputs .* "
        r"found an input of shape \(2, 5\)",
    ):
        cell(jnp.zeros((2, 4)), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"got a carry of shape \(2, 3\); its last dimension must be 4"):
        cell(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"LSTMCell: hidden_features must be a positive int; found 0"):
        nn.LSTMCell(3, 0, ctx=nnx.Context(0))


# ----------------------------------------------------------------------------------
# RNN and Bidirectional through to_linen, in a jitted TrainState step
# ----------------------------------------------------------------------------------
def sequence(
    cell_type: type,
    cell_args: tuple[tp.Any, ...],
    *,
    ctx: nnx.Context,
    cell_options: tuple[tuple[str, tp.Any], ...] = (),
    **rnn_options: tp.Any,
) -> nn.RNN:
    """An RNN over ``cell_type(*cell_args, ...)``: the factory given to ``nnx.to_linen``."""
    return nn.RNN(cell_type(*cell_args, ctx=ctx, **dict(cell_options)), **rnn_options)


def bidirectional(
    cell_type: type, cell_args: tuple[tp.Any, ...], *, ctx: nnx.Context, **options: tp.Any
) -> nn.Bidirectional:
    return nn.Bidirectional(
        nn.RNN(cell_type(*cell_args, ctx=ctx)), nn.RNN(cell_type(*cell_args, ctx=ctx)), **options
    )


def check_train_step(
    linen_model: linen.Module, bridged: linen.Module, x: jax.Array, call: dict[str, tp.Any] | None = None
) -> None:
    """Same layout; outputs, loss and SGD-updated parameters bit for bit equal."""
    call = call or {}
    shapes = jax.eval_shape(lambda k: linen_model.init(k, x, **call), rbg_key(0))
    assert_same_layout(jax.eval_shape(lambda k: bridged.init(k, x, **call), rbg_key(0)), shapes)
    params = random_like(shapes)["params"]

    def step(state: train_state.TrainState, xs: jax.Array) -> tp.Any:
        def loss_fn(p: tp.Any) -> tp.Any:
            out = state.apply_fn({"params": p}, xs, **call)
            return tree_loss(out), out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads).params, loss, out

    states = [
        train_state.TrainState.create(apply_fn=m.apply, params=params, tx=optax.sgd(0.1))
        for m in (linen_model, bridged)
    ]
    both = jax.jit(lambda a, b, xs: (step(a, xs), step(b, xs)))
    theirs, ours = both.lower(*states, x).compile(FAST_COMPILE)(*states, x)
    assert_bitwise(ours, theirs)


CARRY_INIT = jax.nn.initializers.normal(0.3)
LENGTHS = jnp.array([5, 2])
RNN_CASES = {  # id: (Linen cell, our cell type and args, RNN options, call options, input shape)
    "gru-time-major-reverse-keep-order-carry": (
        linen.GRUCell(4),
        (nn.GRUCell, (3, 4)),
        dict(time_major=True, reverse=True, keep_order=True, return_carry=True),
        {},
        (5, 2, 3),
    ),
    "simple-reverse-seq-lengths-carry": (
        linen.SimpleCell(4),
        (nn.SimpleCell, (3, 4)),
        dict(reverse=True, return_carry=True),
        dict(seq_lengths=LENGTHS),
        (2, 5, 3),
    ),
    "optimized-lstm-seq-lengths-carry-init-key": (
        linen.OptimizedLSTMCell(4, carry_init=CARRY_INIT),
        (nn.OptimizedLSTMCell, (3, 4), (("carry_init", CARRY_INIT),)),
        dict(return_carry=True),
        dict(seq_lengths=LENGTHS, init_key=jax.random.key(3)),
        (2, 5, 3),
    ),
    "mgu-unroll-call-overrides": (
        linen.MGUCell(4),
        (nn.MGUCell, (3, 4)),
        dict(unroll=2),
        dict(return_carry=True, reverse=True, keep_order=True),
        (2, 5, 3),
    ),
    "conv-lstm-1d-initial-carry": (
        linen.ConvLSTMCell(3, (3,)),
        (nn.ConvLSTMCell, (2, 3, (3,))),
        {},
        dict(initial_carry=(normal((2, 6, 3), seed=4), normal((2, 6, 3), seed=5))),
        (2, 4, 6, 2),
    ),
    "lstm-bf16": (
        linen.LSTMCell(4, param_dtype=BF16),
        (nn.LSTMCell, (3, 4), (("param_dtype", BF16),)),
        {},
        {},
        (2, 5, 3),
    ),
}


@pytest.mark.parametrize("case", list(RNN_CASES))
def test_rnn_through_to_linen_train_step(case):
    linen_cell, (cell_type, cell_args, *cell_options), options, call, shape = RNN_CASES[case]
    cell_options = cell_options[0] if cell_options else ()
    bridged = nnx.to_linen(sequence, cell_type, cell_args, cell_options=cell_options, **options)
    x = normal(shape, BF16 if case.endswith("bf16") else F32)
    check_train_step(linen.RNN(linen_cell, **options), bridged, x, call)


def add(a: jax.Array, b: jax.Array) -> jax.Array:
    return a + b


@pytest.mark.parametrize(
    "options,call,shape",
    [
        ({}, dict(seq_lengths=LENGTHS, return_carry=True), (2, 5, 3)),
        (dict(merge_fn=add, time_major=True), {}, (5, 2, 3)),
    ],
    ids=["seq-lengths-carry", "merge-fn-time-major"],
)
def test_bidirectional_through_to_linen_train_step(options, call, shape):
    linen_model = linen.Bidirectional(linen.RNN(linen.GRUCell(4)), linen.RNN(linen.GRUCell(4)), **options)
    bridged = nnx.to_linen(bidirectional, nn.GRUCell, (3, 4), **options)
    check_train_step(linen_model, bridged, normal(shape), call)


# ----------------------------------------------------------------------------------
# a sequence model on the digits: the 8 rows of 8 pixels are 8 time steps
# ----------------------------------------------------------------------------------
class DigitsLSTM(nnx.Module):
    """LSTM over the image rows; its last hidden state, batch-normalised, feeds the classifier."""

    def __init__(self, hidden: int, *, ctx: nnx.Context):
        self.rnn = nn.RNN(nn.LSTMCell(8, hidden, ctx=ctx), return_carry=True)
        self.bn = nn.BatchNorm(hidden, momentum=0.9, ctx=ctx)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, 10, ctx=ctx)

    def __call__(self, x: jax.Array, *, train: bool, ctx: nnx.Context | None = None) -> jax.Array:
        (_, h), _ = self.rnn(x.reshape(x.shape[0], 8, 8))
        h = self.bn(h, use_running_average=not train)
        return self.head(self.drop(h, deterministic=not train, ctx=ctx))


def test_lstm_on_digit_rows_trains_through_to_linen():
    model = nnx.to_linen(DigitsLSTM, 32)
    state, accuracy = train(model, 0, load_digits_split(), steps=200)
    assert sorted(state.params["rnn"]["cell"]) == ["hf", "hg", "hi", "ho", "if", "ig", "ii", "io"]
    assert accuracy > 0.9, accuracy


# ----------------------------------------------------------------------------------
# RNN: one loop, strict errors
# ----------------------------------------------------------------------------------
def test_rnn_is_one_scan_with_the_parameters_broadcast():
    def run(x: jax.Array) -> tp.Any:
        rnn = nn.RNN(nn.LSTMCell(3, 4, ctx=nnx.Context(0)))
        params, moduledef = rnn.partition()
        return jax.make_jaxpr(lambda p, xs: moduledef.apply(p)(xs)[0])(params, x), len(params)

    closed, n_params = run(jnp.zeros((2, 7, 3)))
    scans = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1
    (scan,) = scans
    assert scan.params["length"] == 7
    assert scan.params["num_carry"] == 2  # (c, h); the parameters are loop constants
    assert scan.params["num_consts"] >= n_params == 12


class CountingCell(nn.SimpleCell):
    """A cell that (wrongly, for a scan) updates a Variable on every step."""

    def __init__(self, *, ctx: nnx.Context):
        super().__init__(2, 2, ctx=ctx)
        self.calls = nnx.Variable("counts", jnp.zeros((), jnp.int32))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        self.calls.value = self.calls.value + 1
        return super().__call__(carry, inputs)


@pytest.mark.parametrize(
    "make,x,call,error,match",
    [
        (
            lambda: nn.RNN(CountingCell(ctx=nnx.Context(0))),
            (2, 4, 2),
            {},
            ValueError,
            r"RNN: the CountingCell updated its Variable 'calls' \(collection 'counts'\) during the scan",
        ),
        (
            lambda: nn.RNN(nn.GRUCell(2, 3, ctx=nnx.Context(0))),
            (2, 4, 2),
            dict(seq_lengths=jnp.ones((3,), int)),
            ValueError,
            r"seq_lengths must have the batch shape \(2,\) .* found shape \(3,\)",
        ),
        (
            lambda: nn.RNN(nn.ConvLSTMCell(2, 3, (3, 3), ctx=nnx.Context(0))),
            (4, 5, 2),
            {},
            ValueError,
            r"RNN\(ConvLSTMCell\) expects inputs with a time axis and 3 feature axis\(es\)",
        ),
        (
            lambda: nn.RNN(nn.Linear(2, 3, ctx=nnx.Context(0))),
            (2, 4, 2),
            {},
            TypeError,
            r"RNN: cell must be a recurrent cell Module with initialize_carry .* found Linear",
        ),
        (
            lambda: nn.RNN(nn.GRUCell(2, 3, ctx=nnx.Context(0)), unroll=0),
            (2, 4, 2),
            {},
            ValueError,
            r"RNN: unroll must be a positive int; found 0",
        ),
    ],
    ids=["variable-update", "seq-lengths-shape", "rank", "not-a-cell", "unroll"],
)
def test_rnn_errors(make, x, call, error, match):
    with pytest.raises(error, match=match):  # traced only: nothing is compiled
        jax.eval_shape(lambda xs: make()(xs, **call), jax.ShapeDtypeStruct(x, F32))


def test_bidirectional_rejects_a_non_module():
    rnn = build_abstract(lambda: nn.RNN(nn.GRUCell(2, 3, ctx=nnx.Context(0))))
    with pytest.raises(
        TypeError,
        match=r"Bidirectional: backward_rnn must be an nnx_bridge Module .* found "
        r"function",
    ):
        nn.Bidirectional(rnn, lambda x: x)
