"""`Einsum`: a learnable kernel contracted with the input by an einsum equation (Linen's ``nn.Einsum``)."""

from __future__ import annotations

import string
import typing as tp

import jax
import jax.numpy as jnp

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.nn.params import (
    Initializer,
    default_bias_init,
    default_kernel_init,
    kernel_and_bias,
)

Shape = tuple[int, ...]


def check_equation(einsum_str: tp.Any) -> str:
    """``einsum_str`` without spaces, checked to be explicit (``->``) with exactly two operands.

    Example:
        >>> from nnx_bridge.nn.einsum import check_equation
        >>> check_equation("ab, bc -> ac")
        'ab,bc->ac'
    """
    if not isinstance(einsum_str, str):
        raise TypeError(f"Einsum: einsum_str must be a str such as 'ab,bc->ac'; found {einsum_str!r}.")
    equation = einsum_str.replace(" ", "")
    if "->" not in equation:
        raise ValueError(
            f"Einsum: einsum_str must be explicit and include '->' (e.g. 'ab,bc->ac'); found {einsum_str!r}."
        )
    operands = equation.split("->")[0]
    if operands.count(",") != 1:
        raise ValueError(
            f"Einsum: einsum_str must have exactly two operands, the input and the kernel, so "
            f"exactly one ','; found {operands.count(',')} in {einsum_str!r}."
        )
    return equation


def _expand_ellipsis(term: str, ndim: int, letters: str) -> str:
    """``term`` with '...' replaced by the last ``ndim - explicit`` of ``letters``."""
    if "..." not in term:
        return term
    count = ndim - (len(term) - 3)
    return term.replace("...", letters[len(letters) - count :] if count > 0 else "")


def output_kernel_axes(equation: str, input_ndim: int, kernel_ndim: int) -> tuple[int | None, ...]:
    """For each output axis of ``equation``, the kernel axis it comes from (None: input only).

    '...' stands for the same trailing-aligned axes in every term, as in NumPy's
    einsum, so the kernel's '...' axes are the last ones of the output's.

    Example:
        >>> from nnx_bridge.nn.einsum import output_kernel_axes
        >>> output_kernel_axes("abc,cde->abde", 3, 3)
        (None, None, 1, 2)
    """
    lhs_rhs, result = equation.split("->")
    lhs, rhs = lhs_rhs.split(",")
    spare = "".join(c for c in string.ascii_letters if c not in equation)
    longest = max(
        input_ndim - (len(lhs) - 3) if "..." in lhs else 0,
        kernel_ndim - (len(rhs) - 3) if "..." in rhs else 0,
        0,
    )
    letters = spare[:longest]
    rhs = _expand_ellipsis(rhs, kernel_ndim, letters)
    if len(rhs) != kernel_ndim or len(set(rhs)) != len(rhs):
        raise ValueError(
            f"Einsum: the kernel term of {equation!r} must name each of the {kernel_ndim} "
            f"dimensions of the kernel once; found {rhs!r}."
        )
    where = {c: i for i, c in enumerate(rhs)}
    return tuple(where.get(c) for c in result.replace("...", letters))


def bias_shapes(equation: str, input_ndim: int, kernel_shape: Shape) -> tuple[Shape, Shape]:
    """The bias shape Linen infers (the kernel's output axes, in output order), and its broadcast shape.

    Example:
        >>> from nnx_bridge.nn.einsum import bias_shapes
        >>> bias_shapes("abc,cde->abde", 3, (5, 6, 7))
        ((6, 7), (1, 1, 6, 7))
    """
    axes = output_kernel_axes(equation, input_ndim, len(kernel_shape))
    return (
        tuple(kernel_shape[a] for a in axes if a is not None),
        tuple(1 if a is None else kernel_shape[a] for a in axes),
    )


class Einsum(Module):
    """``einsum(einsum_str, x, kernel) + bias`` (flax.nnx's and Linen's ``Einsum``).

    Args:
      einsum_str: the equation, e.g. ``'btd,dhk->bthk'``: explicit (``->``), the
        input first and the kernel second. A call may pass another one.
      kernel_shape: the shape of the kernel.
      bias_shape: the shape of the bias, or None for no bias. It must be the
        kernel dimensions that reach the output, in output order (Linen's
        inferred bias shape).
      ctx: the Context the ``params`` keys come from.
      dtype: computation dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      precision: passed to `jax.numpy.einsum`.
      kernel_init: initialiser of the kernel (default: LeCun normal, as Linen).
      bias_init: initialiser of the bias (default: zeros).
      preferred_element_type: the accumulation/output dtype passed to einsum.
      sharding: axis names of the kernel (one per dimension); the bias gets the
        names of the kernel dimensions it spans (with ``einsum_str`` given here).

    Variables: params ``kernel`` of shape ``kernel_shape`` and ``bias`` of shape
    ``bias_shape``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> layer = nnx.nn.Einsum("nta,hab->nthb", (8, 2, 4), (8, 4), ctx=nnx.Context(0))
        >>> layer(jnp.ones((16, 11, 2))).shape
        (16, 11, 8, 4)
    """

    def __init__(
        self,
        einsum_str: str | None,
        kernel_shape: tp.Sequence[int],
        bias_shape: tp.Sequence[int] | None = None,
        *,
        ctx: Context,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        precision: tp.Any = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        preferred_element_type: tp.Any = None,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        self.einsum_str = None if einsum_str is None else check_equation(einsum_str)
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.bias_shape = None if bias_shape is None else tuple(int(d) for d in bias_shape)
        if self.einsum_str is not None and self.bias_shape is not None:
            self._check_bias_shape(self.einsum_str, input_ndim=0)  # the input's '...' cannot matter
        self.dtype = dtypes.as_dtype(dtype)
        self.precision = precision
        self.preferred_element_type = dtypes.as_dtype(
            preferred_element_type, argument="preferred_element_type"
        )
        bias_axes = None
        if sharding is not None and self.einsum_str is not None:
            axes = output_kernel_axes(self.einsum_str, 0, len(self.kernel_shape))
            bias_axes = [a for a in axes if a is not None]
        self.kernel, self.bias = kernel_and_bias(
            ctx,
            layer="Einsum",
            what=f"kernel {self.kernel_shape}",
            kernel_shape=self.kernel_shape,
            bias_shape=self.bias_shape,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            sharding=sharding,
            bias_axes=bias_axes,
        )

    def _check_bias_shape(self, equation: str, input_ndim: int) -> Shape:
        expected, broadcast = bias_shapes(equation, input_ndim, self.kernel_shape)
        if self.bias_shape is not None and self.bias_shape != expected:
            raise ValueError(
                f"Einsum: with einsum_str={equation!r} and kernel_shape={self.kernel_shape}, the "
                f"bias has one entry per output dimension taken from the kernel, so bias_shape must "
                f"be {expected}; found {self.bias_shape}. Pass bias_shape={expected} (or None for "
                f"no bias)."
            )
        return broadcast

    def __call__(self, x: jax.Array, einsum_str: str | None = None) -> jax.Array:
        """``einsum(einsum_str, x, kernel) + bias``; ``einsum_str`` overrides the constructor's."""
        if einsum_str is None and self.einsum_str is None:
            raise ValueError(
                "Einsum: no einsum_str was given to the constructor or to this call; pass one "
                "(e.g. layer(x, 'ab,bc->ac'))."
            )
        equation = check_equation(einsum_str if einsum_str is not None else self.einsum_str)
        bias = None if self.bias is None else self.bias.value
        broadcast = None if bias is None else self._check_bias_shape(equation, jnp.ndim(x))
        x, kernel, bias = dtypes.promote_dtype(x, self.kernel.value, bias, dtype=self.dtype)
        y = jnp.einsum(
            equation, x, kernel, precision=self.precision, preferred_element_type=self.preferred_element_type
        )
        if bias is not None:
            y += jnp.reshape(bias, broadcast)
        return y
