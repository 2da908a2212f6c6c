"""`RNN` (a cell scanned over time) and `Bidirectional`, with Linen's options and layout.

`RNN` runs a recurrent cell over the time axis with one `jax.lax.scan`: the
cell is partitioned once, its Variables are closed over by the loop body
(broadcast to every step, as Linen's ``nn.RNN`` broadcasts ``params``) and
merged back inside the body, so the program holds one step of the cell,
exactly like Linen's. The cell's variables sit under ``cell/`` and a
`Bidirectional`'s under ``forward_rnn/cell/`` and ``backward_rnn/cell/``,
Linen's layout.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnx_bridge.module import Module
from nnx_bridge.nn.recurrent import RNNCellBase

Carry = tp.Any


def flip_sequences(
    inputs: jax.Array, seq_lengths: jax.Array | None, num_batch_dims: int, time_major: bool
) -> jax.Array:
    """Reverses each sequence along time, keeping padding (past ``seq_lengths``) at the end.

    Without ``seq_lengths`` the whole time axis is reversed.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.rnn import flip_sequences
        >>> x = jnp.array([[1, 0, 0], [2, 3, 0], [4, 5, 6]])
        >>> flip_sequences(x, jnp.array([1, 2, 3]), 1, False).tolist()
        [[1, 0, 0], [3, 2, 0], [6, 5, 4]]
    """
    time_axis = 0 if time_major else num_batch_dims
    steps = inputs.shape[time_axis]
    if seq_lengths is None:
        return jnp.flip(inputs, axis=time_axis)
    lengths = jnp.expand_dims(seq_lengths, axis=time_axis)
    backwards = jnp.arange(steps - 1, -1, -1)
    if time_major:
        backwards = jnp.reshape(backwards, (steps,) + (1,) * num_batch_dims)
    else:
        backwards = jnp.reshape(backwards, (1,) * num_batch_dims + (steps,))
    index = (backwards + lengths) % steps  # position t of the result reads input (len - 1 - t) mod T
    index = jnp.reshape(index, index.shape + (1,) * (inputs.ndim - index.ndim))
    return jnp.take_along_axis(inputs, index, axis=time_axis)


def _last_valid(history: Carry, seq_lengths: jax.Array) -> Carry:
    """The carry after each sequence's last valid step, from the stacked carries ``(time, batch, ...)``."""
    last = seq_lengths - 1
    return jax.tree.map(lambda x: x[last, jnp.arange(x.shape[1])], history)


class RNN(Module):
    """Runs a recurrent cell over a sequence (Linen's ``nn.RNN``).

    Inputs are ``(*batch, time, *features)`` (``time_major=False``) or
    ``(time, *batch, *features)``; ``features`` is one axis for most cells and
    ``spatial + channels`` for `ConvLSTMCell` (the cell's ``num_feature_axes``).
    The output has the time axis where the input had it.

    Args:
      cell: the cell (e.g. ``nnx.nn.LSTMCell(8, 32, ctx=ctx)``); its variables
        live under ``cell/``.
      time_major: whether time is the first axis.
      return_carry: return ``(final_carry, outputs)`` instead of ``outputs``.
      reverse: process the sequence from its end; outputs are then in reversed
        order unless ``keep_order``. With ``seq_lengths``, padding stays at the end.
      keep_order: with ``reverse``, put the outputs back in input order.
      unroll: steps per loop iteration, passed to `jax.lax.scan`.

    Each option can be overridden per call. Without ``initial_carry`` the carry
    is ``cell.initialize_carry(init_key, step_input_shape)``, and without
    ``init_key`` that key is ``jax.random.key(0)``, as in Linen (the default
    zero carry ignores it). With ``seq_lengths`` (shape ``(*batch,)``) and
    ``return_carry``, the carry returned is each sequence's carry after its last
    valid step; outputs at padded steps are not zeroed (as Linen).

    The cell's Variables are broadcast over time and must not change during the
    scan (a cell that updates a Variable is an error, not a silent drop). This
    is Linen's default ``variable_broadcast='params'``; Linen's other
    ``nn.scan`` options (``variable_axes``, ``variable_carry``, ``split_rngs``)
    are not taken.

    Linen's layout ``rnn/cell/...`` is what Linen gives when the RNN owns its
    cell: built in ``setup`` or with ``nn.LSTMCell(..., parent=None)``. A cell
    built inline in an ``@nn.compact`` method belongs to the enclosing module
    instead (``LSTMCell_0/...`` beside the RNN); to load such a checkpoint,
    rename that subtree to ``<rnn name>/cell``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> rnn = nnx.nn.RNN(nnx.nn.LSTMCell(3, 5, ctx=nnx.Context(0)), return_carry=True)
        >>> (c, h), y = rnn(jnp.ones((2, 7, 3)))   # (batch, time, features)
        >>> h.shape, y.shape
        ((2, 5), (2, 7, 5))
        >>> sorted(rnn.partition()[0])[:2]
        ['cell/hf/bias', 'cell/hf/kernel']
    """

    def __init__(
        self,
        cell: RNNCellBase,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
    ):
        if not isinstance(cell, Module) or not callable(getattr(cell, "initialize_carry", None)):
            raise TypeError(
                f"RNN: cell must be a recurrent cell Module with initialize_carry and "
                f"num_feature_axes (e.g. nnx.nn.LSTMCell(in_features, hidden_features, ctx=ctx)); "
                f"found {type(cell).__name__}."
            )
        if not isinstance(unroll, int) or isinstance(unroll, bool) or unroll < 1:
            raise ValueError(f"RNN: unroll must be a positive int; found {unroll!r}.")
        self.cell = cell
        self.time_major = bool(time_major)
        self.return_carry = bool(return_carry)
        self.reverse = bool(reverse)
        self.keep_order = bool(keep_order)
        self.unroll = unroll

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: Carry | None = None,
        init_key: jax.Array | None = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
    ) -> tp.Any:
        """Scans the cell over time: ``outputs``, or ``(carry, outputs)`` with ``return_carry``."""
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order

        feature_axes = self.cell.num_feature_axes
        ndim = jnp.ndim(inputs)
        if ndim < feature_axes + 1:
            raise ValueError(
                f"RNN({type(self.cell).__name__}) expects inputs with a time axis and "
                f"{feature_axes} feature axis(es), e.g. (batch, time, features); found shape "
                f"{jnp.shape(inputs)}."
            )
        time_axis = 0 if time_major else ndim - (feature_axes + 1)
        batch_dims = inputs.shape[1 : ndim - feature_axes] if time_major else inputs.shape[:time_axis]
        if seq_lengths is not None and jnp.shape(seq_lengths) != tuple(batch_dims):
            raise ValueError(
                f"RNN: seq_lengths must have the batch shape {tuple(batch_dims)} (one length per "
                f"sequence); found shape {jnp.shape(seq_lengths)}."
            )

        if reverse:
            inputs = flip_sequences(inputs, seq_lengths, len(batch_dims), time_major)
        if initial_carry is None:
            key = jax.random.key(0) if init_key is None else init_key
            step_shape = inputs.shape[:time_axis] + inputs.shape[time_axis + 1 :]
            carry = self.cell.initialize_carry(key, step_shape)
        else:
            carry = initial_carry

        keep_history = seq_lengths is not None and return_carry
        state, moduledef = self.cell.partition()
        cell_name = type(self.cell).__name__

        def step(carry: Carry, x: jax.Array) -> tuple[Carry, tp.Any]:
            cell = moduledef.merge(state)  # the Variables are the loop's broadcast constants
            carry, y = cell(carry, x)
            _check_unchanged(cell, moduledef, state, cell_name)
            return carry, ((carry, y) if keep_history else y)

        xs = jnp.moveaxis(inputs, time_axis, 0)
        carry, ys = jax.lax.scan(step, carry, xs, unroll=self.unroll)
        if keep_history and seq_lengths is not None:
            history, ys = ys
            carry = _last_valid(history, seq_lengths)
        outputs = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
        if reverse and keep_order:
            outputs = jax.tree.map(
                lambda y: flip_sequences(y, seq_lengths, len(batch_dims), time_major), outputs
            )
        return (carry, outputs) if return_carry else outputs


def _check_unchanged(cell: Module, moduledef: tp.Any, state: tp.Any, cell_name: str) -> None:
    after, after_def = cell.partition()
    if after_def != moduledef:
        raise ValueError(
            f"RNN: calling the {cell_name} changed its structure (new Variables, submodules or "
            f"attributes). A cell scanned over time must create everything in __init__."
        )
    for path, variable in after.items():
        if variable.value is not state[path].value:
            raise ValueError(
                f"RNN: the {cell_name} updated its Variable {path!r} (collection "
                f"{variable.collection!r}) during the scan, but RNN broadcasts the cell's Variables "
                f"to every time step and cannot keep per-step updates. Keep changing state in the "
                f"carry instead."
            )


def _concatenate(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.concatenate([a, b], axis=-1)


class Bidirectional(Module):
    """Runs one RNN forwards and one backwards and merges their outputs (Linen's ``nn.Bidirectional``).

    The backward RNN is called with ``reverse=True, keep_order=True``, so both
    outputs are in input order (with ``seq_lengths``, each sequence is reversed
    within its length). Outputs are merged with ``merge_fn`` (default:
    concatenation on the last axis); the carry is ``(forward, backward)``.

    Args:
      forward_rnn: an `RNN` (variables under ``forward_rnn/``).
      backward_rnn: an `RNN` (variables under ``backward_rnn/``); passing the
        same object twice shares its parameters.
      merge_fn: ``merge_fn(forward_outputs, backward_outputs)``.
      time_major: whether time is the first axis (overridable per call).
      return_carry: return ``((forward, backward), outputs)`` (overridable per call).

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> ctx = nnx.Context(0)
        >>> bi = nnx.nn.Bidirectional(nnx.nn.RNN(nnx.nn.GRUCell(3, 4, ctx=ctx)),
        ...                           nnx.nn.RNN(nnx.nn.GRUCell(3, 4, ctx=ctx)))
        >>> bi(jnp.ones((2, 6, 3))).shape
        (2, 6, 8)
    """

    def __init__(
        self,
        forward_rnn: RNN,
        backward_rnn: RNN,
        *,
        merge_fn: tp.Callable[[jax.Array, jax.Array], jax.Array] = _concatenate,
        time_major: bool = False,
        return_carry: bool = False,
    ):
        for name, rnn in (("forward_rnn", forward_rnn), ("backward_rnn", backward_rnn)):
            if not isinstance(rnn, Module):
                raise TypeError(
                    f"Bidirectional: {name} must be an nnx_bridge Module such as nnx.nn.RNN(cell); "
                    f"found {type(rnn).__name__}."
                )
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.time_major = bool(time_major)
        self.return_carry = bool(return_carry)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: tuple[Carry, Carry] | None = None,
        init_key: jax.Array | None = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
    ) -> tp.Any:
        """Both directions merged: ``outputs``, or ``((fwd, bwd), outputs)`` with ``return_carry``.

        ``reverse`` and ``keep_order`` are accepted for Linen's RNN call
        signature and ignored, as in Linen.
        """
        del reverse, keep_order
        time_major = self.time_major if time_major is None else time_major
        return_carry = self.return_carry if return_carry is None else return_carry
        key_forward = key_backward = None
        if init_key is not None:
            key_forward, key_backward = jax.random.split(init_key)
        carry_forward = carry_backward = None
        if initial_carry is not None:
            carry_forward, carry_backward = initial_carry
        carry_forward, outputs_forward = self.forward_rnn(
            inputs,
            initial_carry=carry_forward,
            init_key=key_forward,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=False,
        )
        carry_backward, outputs_backward = self.backward_rnn(
            inputs,
            initial_carry=carry_backward,
            init_key=key_backward,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=True,
            keep_order=True,
        )
        outputs = jax.tree.map(self.merge_fn, outputs_forward, outputs_backward)
        carry = (carry_forward, carry_backward)
        return (carry, outputs) if return_carry else outputs
