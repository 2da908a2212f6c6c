"""`Conv`: an N-D channels-last convolution with Linen's names, defaults and padding modes."""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
from jax import lax

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes, spatial
from nnx_bridge.nn.params import (
    Initializer,
    check_shapes,
    default_bias_init,
    default_kernel_init,
    kernel_and_bias,
)
from nnx_bridge.nn.spatial import Padding


class Conv(Module):
    """A convolution over channels-last inputs (Linen's ``nn.Conv``).

    The number of spatial dimensions is ``len(kernel_size)`` (an int kernel_size
    means 1-D): inputs are ``(batch..., spatial..., in_features)``, e.g. NWC,
    NHWC or NDHWC. Several leading batch dimensions, or none, are allowed.

    Args:
      in_features: number of input channels.
      out_features: number of output channels (filters).
      kernel_size: int or tuple, the spatial size of the kernel.
      strides: int or one int per spatial dimension.
      ctx: the Context the ``params`` keys come from.
      padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``, ``'REFLECT'``, ``'CAUSAL'``
        (1-D only), an int, or one int or ``(low, high)`` pair per spatial dimension.
      input_dilation: int or one int per spatial dimension (transposed-conv style).
      kernel_dilation: int or one int per spatial dimension (atrous convolution).
      feature_group_count: split the channels into this many groups.
      use_bias: whether to add a bias.
      mask: optional array of the kernel's shape, multiplied into the kernel
        before every use (masked convolution); a constant kept in the ModuleDef,
        not a variable, as Linen. Arguments of `nnx.to_linen` must be hashable:
        pass it there as ``nnx_bridge.nn.spatial.KernelMask(array)``.
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

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tp.Sequence[int],
        strides: int | tp.Sequence[int] | None = 1,
        *,
        ctx: Context,
        padding: Padding = "SAME",
        input_dilation: int | tp.Sequence[int] | None = 1,
        kernel_dilation: int | tp.Sequence[int] | None = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        mask: tp.Any = None,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        precision: tp.Any = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        kernel_size = spatial.kernel_size_tuple(kernel_size, layer="Conv")
        rank = len(kernel_size)
        groups = int(feature_group_count)
        if groups < 1 or in_features % groups or out_features % groups:
            raise ValueError(
                f"Conv: feature_group_count={feature_group_count} must be a positive divisor of "
                f"both in_features={in_features} and out_features={out_features}."
            )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.kernel_size = kernel_size
        self.strides = spatial.per_dim(strides, rank, "strides", layer="Conv")
        self.padding = spatial.canonical_padding(padding, rank, layer="Conv")
        self.input_dilation = spatial.per_dim(input_dilation, rank, "input_dilation", layer="Conv")
        self.kernel_dilation = spatial.per_dim(kernel_dilation, rank, "kernel_dilation", layer="Conv")
        self.feature_group_count = groups
        self.use_bias = bool(use_bias)
        self.dtype = dtypes.as_dtype(dtype)
        self.precision = precision
        kernel_shape = self.kernel_size + (self.in_features // groups, self.out_features)
        self.mask = spatial.kernel_mask(mask, kernel_shape, layer="Conv")
        self.kernel, self.bias = kernel_and_bias(
            ctx,
            layer="Conv",
            what=f"kernel (*kernel_size, in_features // groups, out_features) {kernel_shape}",
            kernel_shape=kernel_shape,
            bias_shape=(self.out_features,) if self.use_bias else None,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            sharding=sharding,
            bias_axes=(-1,),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolves ``x`` of shape ``(batch..., spatial..., in_features)``."""
        check_shapes(
            self,
            "in_features out_features kernel_size feature_group_count",
            kernel=self.kernel_size + (self.in_features // self.feature_group_count, self.out_features),
            bias=(self.out_features,),
        )
        batch_shape = spatial.check_input(
            x,
            len(self.kernel_size),
            self.in_features,
            layer=f"Conv(in_features={self.in_features}, kernel_size={self.kernel_size})",
        )
        x = spatial.fold_batch(x, batch_shape)  # lax wants exactly one batch dimension
        x, padding = spatial.pad_by_hand(x, self.padding, self.kernel_size, self.kernel_dilation)

        bias = None if self.bias is None else self.bias.value
        x, kernel, bias = spatial.call_operands(x, self.kernel.value, self.mask, bias, self.dtype)
        y = lax.conv_general_dilated(
            x,
            kernel,
            self.strides,
            padding,
            lhs_dilation=self.input_dilation,
            rhs_dilation=self.kernel_dilation,
            dimension_numbers=spatial.conv_dimension_numbers(x.ndim),
            feature_group_count=self.feature_group_count,
            precision=self.precision,
        )
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return spatial.unfold_batch(y, batch_shape)
