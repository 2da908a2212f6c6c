"""Recurrent cells with Linen's variable trees and arithmetic.

A cell computes one time step: ``new_carry, y = cell(carry, x)``. The cells
are Linen's (``SimpleCell``, ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``,
``MGUCell``, ``ConvLSTMCell``): the same sub-layer names (an LSTM cell's
``ii, if, ig, io`` input and ``hi, hf, hg, ho`` hidden projections), default
initialisers, dtype promotion and order of operations, so Linen checkpoints
load unchanged and give the same numbers. Constructors are flax.nnx's
(``LSTMCell(in_features, hidden_features, *, ctx, ...)``); Linen infers the
sizes from the first call, here they are given.

``initialize_carry`` takes the RNG and the input shape in Linen's order,
``cell.initialize_carry(rng, input_shape)``, and flax.nnx's order,
``cell.initialize_carry(input_shape, rng)``, too. The RNG is a JAX key (used
exactly as Linen uses it), an `nnx_bridge.Context` (one key is drawn from its
``"carry"`` stream, as flax.nnx draws from ``rngs.carry``), or omitted when
the carry initialiser is the default ``zeros`` (which ignores keys). A custom
``carry_init`` without an RNG is an error, not a fixed seed.

`RNN` and `Bidirectional` (in `nnx_bridge.nn.rnn`) scan a cell over time.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import initializers

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.nn.conv import Conv
from nnx_bridge.nn.linear import Linear
from nnx_bridge.nn.params import Initializer, default_kernel_init

Shape = tuple[int, ...]
Carry = tp.Any
Activation = tp.Callable[..., jax.Array]

_orthogonal = initializers.orthogonal()


def default_recurrent_kernel_init(key: jax.Array, shape: Shape, dtype: tp.Any = jnp.float32) -> jax.Array:
    """Linen's default for the kernels applied to the hidden state: ``orthogonal()``.

    For dtypes under 32 bits the matrix is drawn in float32 and cast (as
    flax.nnx does), since LAPACK's QR has no bfloat16 or float16 kernels.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from nnx_bridge.nn.recurrent import default_recurrent_kernel_init
        >>> w = default_recurrent_kernel_init(jax.random.key(0), (3, 3), jnp.bfloat16)
        >>> w32 = w.astype(jnp.float32)
        >>> w.dtype, bool(jnp.allclose(w32 @ w32.T, jnp.eye(3), atol=2e-2))
        (dtype(bfloat16), True)
    """
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return _orthogonal(key, shape, jnp.float32).astype(dtype)
    return _orthogonal(key, shape, dtype)


#: Linen's default carry initialiser (it ignores its key).
default_carry_init: Initializer = initializers.zeros


class RNNCellBase(Module):
    """Base class of the recurrent cells: one time step, its carry and feature axes.

    Subclasses implement ``__call__(carry, inputs) -> (new_carry, output)``,
    `num_feature_axes` and `_carry_shapes`; `initialize_carry` is shared.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> cell = nnx.nn.GRUCell(3, 5, ctx=nnx.Context(0))
        >>> isinstance(cell, nnx.nn.RNNCellBase), cell.num_feature_axes
        (True, 1)
    """

    hidden_features: int
    param_dtype: tp.Any
    carry_init: Initializer

    @property
    def features(self) -> int:
        """Linen's name of `hidden_features`."""
        return self.hidden_features

    @property
    def num_feature_axes(self) -> int:
        """How many trailing axes of an input are features (1; a ConvLSTM adds its spatial axes)."""
        raise NotImplementedError(f"{type(self).__name__} must define num_feature_axes.")

    def _carry_shapes(self, input_shape: Shape) -> tuple[int, Shape]:
        """(number of carry arrays, shape of each) for one step's input shape."""
        raise NotImplementedError(f"{type(self).__name__} must define _carry_shapes.")

    def __call__(self, carry: tp.Any, inputs: jax.Array) -> tuple[tp.Any, jax.Array]:
        """One time step: ``(new_carry, output)``."""
        raise NotImplementedError(f"{type(self).__name__} must define __call__(carry, inputs).")

    def initialize_carry(
        self,
        rng: tp.Any = None,
        input_shape: tp.Any = None,
        *,
        ctx: Context | None = None,
        carry_init: Initializer | None = None,
    ) -> Carry:
        """The initial carry for one time step's input shape ``(*batch, *features)``.

        Linen's order ``initialize_carry(rng, input_shape)`` and flax.nnx's order
        ``initialize_carry(input_shape, rng)`` are both accepted. ``rng`` is a
        JAX key (split as Linen splits it), a `Context` (one key from its
        ``"carry"`` stream), or None when the carry initialiser ignores keys
        (the default ``zeros``); ``ctx=`` passes a Context by keyword.
        ``carry_init`` overrides the cell's for this call. The carry is stored
        in ``param_dtype``, as Linen does.

        Example:
            >>> import jax, nnx_bridge as nnx
            >>> cell = nnx.nn.LSTMCell(3, 4, ctx=nnx.Context(0))
            >>> c, h = cell.initialize_carry(jax.random.key(1), (2, 3))
            >>> c.shape, h.shape
            ((2, 4), (2, 4))
            >>> cell.initialize_carry((2, 3))[0].shape   # flax.nnx order, zeros need no key
            (2, 4)
        """
        if _is_shape(rng) and not _is_shape(input_shape):
            rng, input_shape = input_shape, rng
        if ctx is not None:
            if rng is not None:
                raise TypeError(
                    f"{type(self).__name__}.initialize_carry: got both an RNG ({type(rng).__name__}) "
                    f"and ctx=; pass one of them."
                )
            rng = ctx
        if not _is_shape(input_shape):
            raise TypeError(
                f"{type(self).__name__}.initialize_carry: expected an input shape (a tuple of ints, "
                f"e.g. x.shape) and an optional RNG; found {rng!r} and {input_shape!r}. Call "
                f"initialize_carry(key, x.shape) as in Linen, or initialize_carry(x.shape, ctx)."
            )
        init = self.carry_init if carry_init is None else carry_init
        key = _as_carry_key(rng, type(self).__name__)
        if key is None and init is not default_carry_init:
            raise ValueError(
                f"{type(self).__name__}.initialize_carry: the carry initialiser {_name(init)} may "
                f"draw random numbers, but no RNG was given. Pass a key or a Context, e.g. "
                f"initialize_carry(jax.random.key(0), x.shape)."
            )
        count, shape = self._carry_shapes(tuple(int(d) for d in input_shape))
        if count == 1:
            return init(key, shape, self.param_dtype)
        keys = (None, None) if key is None else tuple(jax.random.split(key))
        return tuple(init(k, shape, self.param_dtype) for k in keys)

    def _check_step(self, inputs: jax.Array, hidden: jax.Array, in_features: int) -> None:
        if jnp.ndim(inputs) == 0 or jnp.shape(inputs)[-1] != in_features:
            raise ValueError(
                f"{type(self).__name__}(in_features={in_features}, hidden_features="
                f"{self.hidden_features}) expects inputs whose last dimension is {in_features}; "
                f"found an input of shape {jnp.shape(inputs)}. Build the cell with "
                f"in_features={jnp.shape(inputs)[-1] if jnp.ndim(inputs) else '...'}."
            )
        if jnp.ndim(hidden) == 0 or jnp.shape(hidden)[-1] != self.hidden_features:
            raise ValueError(
                f"{type(self).__name__}(hidden_features={self.hidden_features}) got a carry of "
                f"shape {jnp.shape(hidden)}; its last dimension must be {self.hidden_features}. "
                f"Make the carry with cell.initialize_carry(key, x.shape)."
            )


def _is_shape(value: tp.Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in value)


def _as_carry_key(rng: tp.Any, owner: str) -> jax.Array | None:
    if rng is None:
        return None
    if isinstance(rng, Context):
        return rng.make_rng("carry")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return jax.random.key(int(rng))
    if hasattr(rng, "dtype"):
        return rng
    raise TypeError(
        f"{owner}.initialize_carry: the RNG must be a JAX key, an int seed, a Context or None; "
        f"found {type(rng).__name__}."
    )


def _name(fn: tp.Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _positive(value: tp.Any, argument: str, layer: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{layer}: {argument} must be a positive int; found {value!r}.")
    return int(value)


class _DenseCell(RNNCellBase):
    """Shared constructor parts of the cells built from `Linear` sub-layers."""

    def _setup(
        self,
        in_features: int,
        hidden_features: int,
        dtype: tp.Any,
        param_dtype: tp.Any,
        carry_init: Initializer,
    ) -> None:
        layer = type(self).__name__
        self.in_features = _positive(in_features, "in_features", layer)
        self.hidden_features = _positive(hidden_features, "hidden_features", layer)
        self.dtype = dtypes.as_dtype(dtype)
        self.param_dtype = dtypes.as_dtype(param_dtype, argument="param_dtype")
        self.carry_init = carry_init

    def _dense(
        self,
        ctx: Context,
        *,
        inputs: bool,
        use_bias: bool,
        kernel_init: Initializer,
        bias_init: Initializer = initializers.zeros,
    ) -> Linear:
        return Linear(
            self.in_features if inputs else self.hidden_features,
            self.hidden_features,
            ctx=ctx,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
        )

    def _gate(
        self,
        ctx: Context,
        gate: str,
        *,
        kernel_init: Initializer,
        recurrent_kernel_init: Initializer,
        input_bias_init: Initializer | None,
        hidden_bias_init: Initializer | None,
    ) -> None:
        """Sets sub-layers ``"i" + gate`` (on the input) then ``"h" + gate`` (on the carry).

        Linen's key order; a None bias initialiser means no bias. Set by name, as
        ``"if"`` and ``"in"`` are keywords.
        """
        for prefix, inputs, init, bias_init in (
            ("i", True, kernel_init, input_bias_init),
            ("h", False, recurrent_kernel_init, hidden_bias_init),
        ):
            dense = self._dense(
                ctx,
                inputs=inputs,
                use_bias=bias_init is not None,
                kernel_init=init,
                bias_init=initializers.zeros if bias_init is None else bias_init,
            )
            setattr(self, prefix + gate, dense)

    @property
    def num_feature_axes(self) -> int:
        """1: the last axis of an input holds its features."""
        return 1

    def _carry_shapes(self, input_shape: Shape) -> tuple[int, Shape]:
        return (2 if self._two_carries else 1), input_shape[:-1] + (self.hidden_features,)

    _two_carries = False


class SimpleCell(_DenseCell):
    """Elman cell ``h' = activation(W_i x + b_i + W_h h)`` (Linen's ``nn.SimpleCell``).

    Args:
      in_features: size of the last axis of an input.
      hidden_features: size of the carry (and output).
      ctx: the Context the ``params`` keys come from.
      activation_fn: the activation (default: tanh).
      kernel_init: initialiser of the input kernel (default: LeCun normal).
      recurrent_kernel_init: initialiser of the hidden kernel (default: orthogonal).
      bias_init: initialiser of the input bias (default: zeros).
      dtype: computation dtype; None infers it from inputs, carry and parameters.
      param_dtype: storage dtype of the parameters and of the initial carry.
      carry_init: initialiser of the carry (default: zeros).
      residual: add ``h`` before the activation (pre-activation residual).

    Variables: params ``i/kernel`` ``(in, hidden)``, ``i/bias`` ``(hidden,)``,
    ``h/kernel`` ``(hidden, hidden)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> cell = nnx.nn.SimpleCell(3, 4, ctx=nnx.Context(0))
        >>> x = jnp.ones((2, 3))
        >>> h, y = cell(cell.initialize_carry(x.shape), x)
        >>> sorted(cell.partition()[0]), y.shape
        (['h/kernel', 'i/bias', 'i/kernel'], (2, 4))
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        ctx: Context,
        activation_fn: Activation = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = initializers.zeros,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        carry_init: Initializer = default_carry_init,
        residual: bool = False,
    ):
        self._setup(in_features, hidden_features, dtype, param_dtype, carry_init)
        self.activation_fn = activation_fn
        self.residual = bool(residual)
        self.i = self._dense(ctx, inputs=True, use_bias=True, kernel_init=kernel_init, bias_init=bias_init)
        self.h = self._dense(ctx, inputs=False, use_bias=False, kernel_init=recurrent_kernel_init)

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step: ``(new_carry, new_carry)``."""
        self._check_step(inputs, carry, self.in_features)
        new_carry = self.i(inputs) + self.h(carry)
        if self.residual:
            new_carry += carry
        new_carry = self.activation_fn(new_carry)
        return new_carry, new_carry


class LSTMCell(_DenseCell):
    """Long short-term memory cell (Linen's ``nn.LSTMCell``).

    ``i = gate(W_ii x + W_hi h + b_hi)``, likewise ``f`` and ``o``;
    ``g = activation(W_ig x + W_hg h + b_hg)``; ``c' = f * c + i * g``;
    ``h' = o * activation(c')``. The carry is ``(c, h)``; the output is ``h'``.

    Args:
      in_features: size of the last axis of an input.
      hidden_features: size of ``c`` and ``h``.
      ctx: the Context the ``params`` keys come from.
      gate_fn: gate activation (default: sigmoid).
      activation_fn: activation of ``g`` and of the output (default: tanh).
      kernel_init: initialiser of the input kernels (default: LeCun normal).
      recurrent_kernel_init: initialiser of the hidden kernels (default: orthogonal).
      bias_init: initialiser of the hidden biases (default: zeros).
      dtype: computation dtype; None infers it from inputs, carry and parameters.
      param_dtype: storage dtype of the parameters and of the initial carry.
      carry_init: initialiser of the carry (default: zeros).

    Variables: params ``ii, if, ig, io`` (``kernel`` ``(in, hidden)``, no bias)
    and ``hi, hf, hg, ho`` (``kernel`` ``(hidden, hidden)`` and ``bias``).

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> cell = nnx.nn.LSTMCell(3, 4, ctx=nnx.Context(0))
        >>> x = jnp.ones((2, 3))
        >>> (c, h), y = cell(cell.initialize_carry(x.shape), x)
        >>> sorted({path.split("/")[0] for path in cell.partition()[0]})
        ['hf', 'hg', 'hi', 'ho', 'if', 'ig', 'ii', 'io']
    """

    _two_carries = True
    _GATES = ("i", "f", "g", "o")

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        ctx: Context,
        gate_fn: Activation = jax.nn.sigmoid,
        activation_fn: Activation = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = initializers.zeros,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        carry_init: Initializer = default_carry_init,
    ):
        self._setup(in_features, hidden_features, dtype, param_dtype, carry_init)
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        for gate in self._GATES:
            self._gate(
                ctx,
                gate,
                kernel_init=kernel_init,
                recurrent_kernel_init=recurrent_kernel_init,
                input_bias_init=None,
                hidden_bias_init=bias_init,
            )

    def _sub(self, name: str) -> Linear:
        return self.__dict__[name]

    def __call__(
        self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        """One step: ``((new_c, new_h), new_h)``."""
        c, h = carry
        self._check_step(inputs, h, self.in_features)
        sub = self.__dict__  # Linen's order of operations, gate by gate
        i = self.gate_fn(sub["ii"](inputs) + sub["hi"](h))
        f = self.gate_fn(sub["if"](inputs) + sub["hf"](h))
        g = self.activation_fn(sub["ig"](inputs) + sub["hg"](h))
        o = self.gate_fn(sub["io"](inputs) + sub["ho"](h))
        return self._update(c, i, f, g, o)

    def _update(
        self, c: jax.Array, i: jax.Array, f: jax.Array, g: jax.Array, o: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        """``((c', h'), h')`` from the gates: ``c' = f * c + i * g``, ``h' = o * activation(c')``."""
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h


class OptimizedLSTMCell(LSTMCell):
    """`LSTMCell` computing the four gates with one matmul per operand (Linen's ``nn.OptimizedLSTMCell``).

    The variables are those of `LSTMCell` (same names and shapes, so the two
    load each other's checkpoints); the four input kernels, the four hidden
    kernels and their biases are concatenated for the call, as Linen does.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> cell = nnx.nn.OptimizedLSTMCell(3, 4, ctx=nnx.Context(0))
        >>> x = jnp.ones((2, 3))
        >>> (c, h), y = cell(cell.initialize_carry(x.shape), x)
        >>> y.shape
        (2, 4)
    """

    def _concat_dense(self, x: jax.Array, prefix: str, use_bias: bool) -> dict[str, jax.Array]:
        layers = [self._sub(prefix + g) for g in self._GATES]
        kernel = jnp.concatenate([layer.kernel.value for layer in layers], axis=-1)
        biases = [layer.bias.value for layer in layers if layer.bias is not None] if use_bias else []
        bias = jnp.concatenate(biases, axis=-1) if biases else None
        x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.dot(x, kernel)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        parts = jnp.split(y, np.cumsum([self.hidden_features] * 3), axis=-1)
        return dict(zip(self._GATES, parts, strict=True))

    def __call__(
        self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        """One step: ``((new_c, new_h), new_h)``."""
        c, h = carry
        self._check_step(inputs, h, self.in_features)
        dense_h = self._concat_dense(h, "h", use_bias=True)
        dense_i = self._concat_dense(inputs, "i", use_bias=False)
        i = self.gate_fn(dense_h["i"] + dense_i["i"])
        f = self.gate_fn(dense_h["f"] + dense_i["f"])
        g = self.activation_fn(dense_h["g"] + dense_i["g"])
        o = self.gate_fn(dense_h["o"] + dense_i["o"])
        return self._update(c, i, f, g, o)


class GRUCell(_DenseCell):
    """Gated recurrent unit (Linen's ``nn.GRUCell``).

    ``r = gate(W_ir x + b_ir + W_hr h)``, ``z = gate(W_iz x + b_iz + W_hz h)``,
    ``n = activation(W_in x + b_in + r * (W_hn h + b_hn))``,
    ``h' = (1 - z) * n + z * h``.

    Args:
      in_features: size of the last axis of an input.
      hidden_features: size of the carry (and output).
      ctx: the Context the ``params`` keys come from.
      gate_fn: gate activation (default: sigmoid).
      activation_fn: activation of the candidate ``n`` (default: tanh).
      kernel_init: initialiser of the input kernels (default: LeCun normal).
      recurrent_kernel_init: initialiser of the hidden kernels (default: orthogonal).
      bias_init: initialiser of the biases (default: zeros).
      dtype: computation dtype; None infers it from inputs, carry and parameters.
      param_dtype: storage dtype of the parameters and of the initial carry.
      carry_init: initialiser of the carry (default: zeros).

    Variables: params ``ir, iz, in`` (``kernel`` ``(in, hidden)`` and ``bias``),
    ``hr, hz`` (``kernel`` ``(hidden, hidden)``) and ``hn`` (``kernel`` and ``bias``).

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> cell = nnx.nn.GRUCell(3, 4, ctx=nnx.Context(0))
        >>> x = jnp.ones((2, 3))
        >>> h, y = cell(cell.initialize_carry(x.shape), x)
        >>> sorted(cell.partition()[0])[:4]
        ['hn/bias', 'hn/kernel', 'hr/kernel', 'hz/kernel']
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        ctx: Context,
        gate_fn: Activation = jax.nn.sigmoid,
        activation_fn: Activation = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = initializers.zeros,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        carry_init: Initializer = default_carry_init,
    ):
        self._setup(in_features, hidden_features, dtype, param_dtype, carry_init)
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        for gate in ("r", "z", "n"):
            self._gate(
                ctx,
                gate,
                kernel_init=kernel_init,
                recurrent_kernel_init=recurrent_kernel_init,
                input_bias_init=bias_init,
                hidden_bias_init=bias_init if gate == "n" else None,
            )

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step: ``(new_h, new_h)``."""
        h = carry
        self._check_step(inputs, h, self.in_features)
        sub = self.__dict__
        r = self.gate_fn(sub["ir"](inputs) + sub["hr"](h))
        z = self.gate_fn(sub["iz"](inputs) + sub["hz"](h))
        n = self.activation_fn(sub["in"](inputs) + r * sub["hn"](h))
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h


class MGUCell(_DenseCell):
    """Minimal gated unit (Linen's ``nn.MGUCell``).

    ``f = gate(W_if x + b_if + W_hf h)``,
    ``n = activation(W_in x + b_in + f * (W_hn h + b_hn))`` (without ``f *``
    and ``b_hn`` when ``reset_gate=False``), ``h' = (1 - f) * n + f * h``.

    Args:
      in_features: size of the last axis of an input.
      hidden_features: size of the carry (and output).
      ctx: the Context the ``params`` keys come from.
      gate_fn: gate activation (default: sigmoid).
      activation_fn: activation of the candidate ``n`` (default: tanh).
      kernel_init: initialiser of the input kernels (default: LeCun normal).
      recurrent_kernel_init: initialiser of the hidden kernels (default: orthogonal).
      forget_bias_init: initialiser of ``if/bias`` (default: ones).
      activation_bias_init: initialiser of ``in/bias`` and ``hn/bias`` (default: zeros).
      dtype: computation dtype; None infers it from inputs, carry and parameters.
      param_dtype: storage dtype of the parameters and of the initial carry.
      carry_init: initialiser of the carry (default: zeros).
      reset_gate: gate the hidden candidate with ``f`` (and give ``hn`` a bias).

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> cell = nnx.nn.MGUCell(3, 4, ctx=nnx.Context(0))
        >>> cell.__dict__["if"].bias.value.tolist()
        [1.0, 1.0, 1.0, 1.0]
        >>> x = jnp.ones((2, 3))
        >>> cell(cell.initialize_carry(x.shape), x)[1].shape
        (2, 4)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        ctx: Context,
        gate_fn: Activation = jax.nn.sigmoid,
        activation_fn: Activation = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        forget_bias_init: Initializer = initializers.ones,
        activation_bias_init: Initializer = initializers.zeros,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        carry_init: Initializer = default_carry_init,
        reset_gate: bool = True,
    ):
        self._setup(in_features, hidden_features, dtype, param_dtype, carry_init)
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        self.reset_gate = bool(reset_gate)
        self._gate(
            ctx,
            "f",
            kernel_init=kernel_init,
            recurrent_kernel_init=recurrent_kernel_init,
            input_bias_init=forget_bias_init,
            hidden_bias_init=None,
        )
        self.hn = self._dense(
            ctx,
            inputs=False,
            use_bias=self.reset_gate,
            kernel_init=recurrent_kernel_init,
            bias_init=activation_bias_init,
        )
        setattr(
            self,
            "in",
            self._dense(
                ctx, inputs=True, use_bias=True, kernel_init=kernel_init, bias_init=activation_bias_init
            ),
        )

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step: ``(new_h, new_h)``."""
        h = carry
        self._check_step(inputs, h, self.in_features)
        sub = self.__dict__
        f = self.gate_fn(sub["if"](inputs) + sub["hf"](h))
        x = self.hn(h)
        if self.reset_gate:
            x *= f
        n = self.activation_fn(sub["in"](inputs) + x)
        new_h = (1.0 - f) * n + f * h
        return new_h, new_h


class ConvLSTMCell(RNNCellBase):
    """A convolutional LSTM cell (Linen's ``nn.ConvLSTMCell``).

    ``gates = ih(x) + hh(h)`` with two convolutions of ``4 * hidden_features``
    filters, split into ``i, g, f, o``; ``f = sigmoid(f + 1)``,
    ``c' = f * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``.
    Inputs are ``(*batch, *spatial, in_features)``; the carry is ``(c, h)`` of
    shape ``(*batch, *spatial, hidden_features)``.

    Args:
      in_features: channels of an input.
      hidden_features: channels of ``c`` and ``h`` (Linen's ``features``).
      kernel_size: the spatial size of both kernels.
      ctx: the Context the ``params`` keys come from.
      strides: strides of both convolutions (default: 1).
      padding: padding of both convolutions (default: ``'SAME'``).
      use_bias: whether both convolutions add a bias.
      dtype: computation dtype; None infers it from inputs, carry and parameters.
      param_dtype: storage dtype of the parameters and of the initial carry.
      carry_init: initialiser of the carry (default: zeros).

    Variables: params ``ih/kernel`` ``(*kernel_size, in, 4 * hidden)``,
    ``hh/kernel`` ``(*kernel_size, hidden, 4 * hidden)`` and their biases.

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> def step(x):
        ...     cell = nnx.nn.ConvLSTMCell(3, 4, (2, 2), ctx=nnx.Context(0))
        ...     return cell(cell.initialize_carry(x.shape), x)
        >>> (c, h), y = jax.eval_shape(step, jnp.ones((2, 5, 5, 3)))  # shapes only: nothing runs
        >>> c.shape, y.shape
        ((2, 5, 5, 4), (2, 5, 5, 4))
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        kernel_size: int | tp.Sequence[int],
        *,
        ctx: Context,
        strides: int | tp.Sequence[int] | None = None,
        padding: tp.Any = "SAME",
        use_bias: bool = True,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        carry_init: Initializer = default_carry_init,
    ):
        self.in_features = _positive(in_features, "in_features", "ConvLSTMCell")
        self.hidden_features = _positive(hidden_features, "hidden_features", "ConvLSTMCell")
        self.dtype = dtypes.as_dtype(dtype)
        self.param_dtype = dtypes.as_dtype(param_dtype, argument="param_dtype")
        self.carry_init = carry_init
        options = dict(
            ctx=ctx,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.ih = Conv(self.in_features, 4 * self.hidden_features, kernel_size, **options)
        self.hh = Conv(self.hidden_features, 4 * self.hidden_features, kernel_size, **options)
        self.kernel_size = self.ih.kernel_size

    @property
    def num_feature_axes(self) -> int:
        """The spatial axes and the channel axis: ``len(kernel_size) + 1``."""
        return len(self.kernel_size) + 1

    def _carry_shapes(self, input_shape: Shape) -> tuple[int, Shape]:
        n = self.num_feature_axes
        if len(input_shape) < n:
            raise ValueError(
                f"ConvLSTMCell(kernel_size={self.kernel_size}) needs inputs of shape (*batch, "
                f"{n - 1} spatial dims, features); found input shape {input_shape}."
            )
        return 2, input_shape[:-1] + (self.hidden_features,)

    def __call__(
        self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        """One step: ``((new_c, new_h), new_h)``."""
        c, h = carry
        self._check_step(inputs, h, self.in_features)
        gates = self.ih(inputs) + self.hh(h)
        i, g, f, o = jnp.split(gates, 4, axis=-1)
        f = jax.nn.sigmoid(f + 1)
        new_c = f * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
        return (new_c, new_h), new_h
