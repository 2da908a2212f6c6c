"""`Conv`: an N-D channels-last convolution with Linen's names, defaults and padding modes."""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.nn.params import Initializer, check_sharding, default_bias_init, default_kernel_init, make_param
from nnx_bridge.nn.params import check_shapes

Padding = tp.Union[str, int, tp.Sequence[tp.Union[int, tp.Tuple[int, int]]]]
_PADDED_BY_HAND = ("CIRCULAR", "REFLECT", "CAUSAL")


def _per_dim(value: int | tp.Sequence[int] | None, rank: int, argument: str) -> tuple[int, ...]:
    if value is None:
        value = 1
    if isinstance(value, (int, np.integer)):
        return (int(value),) * rank
    values = tuple(value)
    if len(values) != rank or not all(isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(
            f"Conv: {argument} must be an int or {rank} ints (one per spatial dimension of "
            f"kernel_size); found {value!r}."
        )
    return tuple(int(v) for v in values)


def _canonical_padding(padding: Padding, rank: int) -> str | tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        if padding == "CAUSAL" and rank != 1:
            raise ValueError(
                f"Conv: padding='CAUSAL' is only defined for 1-D convolutions; this one has "
                f"{rank} spatial dimensions. Use 'SAME', 'VALID' or explicit pairs."
            )
        return padding
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * rank
    if isinstance(padding, tp.Sequence) and len(padding) == rank:
        pairs = []
        for p in padding:
            if isinstance(p, (int, np.integer)):
                pairs.append((int(p), int(p)))
            elif isinstance(p, tp.Sequence) and len(p) == 2 and all(isinstance(q, (int, np.integer)) for q in p):
                pairs.append((int(p[0]), int(p[1])))
            else:
                break
        else:
            return tuple(pairs)
    raise ValueError(
        f"Conv: padding must be a string ('SAME', 'VALID', 'CIRCULAR', 'REFLECT', 'CAUSAL'), an "
        f"int, or {rank} entries (one per spatial dimension), each an int or a (low, high) pair; "
        f"found {padding!r}."
    )


def _dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    # Channels-last input/output (N, spatial..., C) and kernel (spatial..., I, O).
    spatial = tuple(range(1, ndim - 1))
    io_spec = (0, ndim - 1) + spatial
    kernel_spec = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
    return lax.ConvDimensionNumbers(io_spec, kernel_spec, io_spec)


class Conv(Module):
    """A convolution over channels-last inputs (Linen's ``nn.Conv``).

    The number of spatial dimensions is ``len(kernel_size)`` (an int kernel_size
    means 1-D): inputs are ``(batch..., spatial..., in_features)``, e.g. NWC,
    NHWC or NDHWC. Several leading batch dimensions, or none, are allowed.

    Args:
      in_features: number of input channels.
      out_features: number of output channels (filters).
      kernel_size: int or tuple, the spatial size of the kernel.
      ctx: the Context the ``params`` keys come from.
      strides: int or one int per spatial dimension.
      padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``, ``'REFLECT'``, ``'CAUSAL'``
        (1-D only), an int, or one int or ``(low, high)`` pair per spatial dimension.
      input_dilation: int or one int per spatial dimension (transposed-conv style).
      kernel_dilation: int or one int per spatial dimension (atrous convolution).
      feature_group_count: split the channels into this many groups.
      use_bias: whether to add a bias.
      dtype: computation dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      precision: passed to `jax.lax.conv_general_dilated`.
      kernel_init: initialiser of the kernel (default: LeCun normal, as Linen).
      bias_init: initialiser of the bias (default: zeros).
      sharding: axis names of the kernel ``(*kernel_size, in, out)``; the bias
        gets the last one.

    Variables: params ``kernel`` of shape ``(*kernel_size, in_features //
    feature_group_count, out_features)`` and ``bias`` of shape ``(out_features,)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> conv = nnx.nn.Conv(3, 8, (3, 3), strides=2, ctx=nnx.Context(0))
        >>> conv.kernel.value.shape, conv(jnp.ones((2, 16, 16, 3))).shape
        ((3, 3, 3, 8), (2, 8, 8, 8))
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int | tp.Sequence[int], *,
                 ctx: Context, strides: int | tp.Sequence[int] | None = 1, padding: Padding = "SAME",
                 input_dilation: int | tp.Sequence[int] | None = 1,
                 kernel_dilation: int | tp.Sequence[int] | None = 1, feature_group_count: int = 1,
                 use_bias: bool = True, dtype: tp.Any = None, param_dtype: tp.Any = jnp.float32,
                 precision: tp.Any = None, kernel_init: Initializer = default_kernel_init,
                 bias_init: Initializer = default_bias_init,
                 sharding: tp.Sequence[str | None] | None = None):
        if isinstance(kernel_size, (int, np.integer)):
            kernel_size = (kernel_size,)
        kernel_size = tuple(kernel_size)
        if not kernel_size or not all(isinstance(k, (int, np.integer)) and k > 0 for k in kernel_size):
            raise ValueError(
                f"Conv: kernel_size must be a positive int or a non-empty tuple of positive ints "
                f"(one per spatial dimension); found {kernel_size!r}."
            )
        rank = len(kernel_size)
        groups = int(feature_group_count)
        if groups < 1 or in_features % groups or out_features % groups:
            raise ValueError(
                f"Conv: feature_group_count={feature_group_count} must be a positive divisor of "
                f"both in_features={in_features} and out_features={out_features}."
            )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.strides = _per_dim(strides, rank, "strides")
        self.padding = _canonical_padding(padding, rank)
        self.input_dilation = _per_dim(input_dilation, rank, "input_dilation")
        self.kernel_dilation = _per_dim(kernel_dilation, rank, "kernel_dilation")
        self.feature_group_count = groups
        self.use_bias = bool(use_bias)
        self.dtype = dtypes.as_dtype(dtype)
        self.precision = precision
        kernel_shape = self.kernel_size + (self.in_features // groups, self.out_features)
        sharding = check_sharding(sharding, rank + 2, layer="Conv",
                                  what=f"kernel (*kernel_size, in_features // groups, out_features) {kernel_shape}")
        self.kernel = make_param(ctx, kernel_init, kernel_shape, param_dtype, sharding)
        self.bias = (
            make_param(ctx, bias_init, (self.out_features,), param_dtype,
                       None if sharding is None else sharding[-1:])
            if self.use_bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolves ``x`` of shape ``(batch..., spatial..., in_features)``."""
        check_shapes(self, "in_features out_features kernel_size feature_group_count", kernel=self.kernel_size + (self.in_features // self.feature_group_count, self.out_features), bias=(self.out_features,))
        rank = len(self.kernel_size)
        shape = jnp.shape(x)
        if len(shape) < rank + 1 or shape[-1] != self.in_features:
            raise ValueError(
                f"Conv(in_features={self.in_features}, kernel_size={self.kernel_size}) expects "
                f"channels-last inputs of shape (batch..., {rank} spatial dims..., "
                f"{self.in_features}); found shape {shape}. Put the {self.in_features} channels "
                f"last (e.g. x.transpose to NHWC), or build the layer for this input."
            )
        batch_shape = shape[: len(shape) - rank - 1]
        if len(batch_shape) != 1:  # lax wants exactly one batch dimension
            x = jnp.reshape(x, (-1,) + shape[len(batch_shape):])

        padding = self.padding
        if padding in _PADDED_BY_HAND:
            dilated = [(k - 1) * d + 1 for k, d in zip(self.kernel_size, self.kernel_dilation)]
            if padding == "CAUSAL":
                pads = [(0, 0), (dilated[0] - 1, 0), (0, 0)]
                x = jnp.pad(x, pads)
            else:
                pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
                x = jnp.pad(x, pads, mode="wrap" if padding == "CIRCULAR" else "reflect")
            padding = "VALID"

        bias = None if self.bias is None else self.bias.value
        x, kernel, bias = dtypes.promote_dtype(x, self.kernel.value, bias, dtype=self.dtype)
        y = lax.conv_general_dilated(
            x, kernel, self.strides, padding,
            lhs_dilation=self.input_dilation, rhs_dilation=self.kernel_dilation,
            dimension_numbers=_dimension_numbers(x.ndim),
            feature_group_count=self.feature_group_count, precision=self.precision,
        )
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        if len(batch_shape) != 1:
            y = jnp.reshape(y, batch_shape + y.shape[1:])
        return y
