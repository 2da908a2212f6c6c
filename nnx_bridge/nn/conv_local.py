"""`ConvLocal`: a locally connected (unshared) convolution with Linen's names and arithmetic."""

from __future__ import annotations

import math
import typing as tp

import jax
import jax.numpy as jnp
from jax import lax

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes, spatial
from nnx_bridge.nn.params import (
    Initializer,
    default_bias_init,
    default_kernel_init,
    kernel_and_bias,
)
from nnx_bridge.nn.spatial import Padding


class ConvLocal(Module):
    """A convolution with one kernel per output position (Linen's ``nn.ConvLocal``).

    Each output pixel has its own weights (a "locally connected" layer), so the
    kernel's shape depends on the spatial size of the input: it is given as
    ``input_shape`` (the spatial dimensions only) when the layer is built, and
    every input must have that spatial shape.

    Args:
      in_features: number of input channels.
      out_features: number of output channels.
      kernel_size: int or tuple, the spatial size of each window.
      input_shape: the spatial shape of the inputs, one int per dimension of
        ``kernel_size``.
      strides: int or one int per spatial dimension.
      ctx: the Context the ``params`` keys come from.
      padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``, ``'REFLECT'``, ``'CAUSAL'``
        (1-D only), an int, or one int or ``(low, high)`` pair per spatial dimension.
      input_dilation: int or one int per spatial dimension.
      kernel_dilation: int or one int per spatial dimension.
      feature_group_count: must be 1 (as Linen, which has no grouped local convolution).
      use_bias: whether to add a bias (one per output entry).
      mask: optional array of the kernel's shape, multiplied into the kernel
        before every use (masked convolution); a constant kept in the ModuleDef,
        not a variable, as Linen. Arguments of `nnx.to_linen` must be hashable:
        pass it there as ``nnx_bridge.nn.spatial.KernelMask(array)``.
      dtype: computation dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      precision: passed to `jax.lax.conv_general_dilated_local`.
      kernel_init: initialiser of the kernel (default: LeCun normal, as Linen).
      bias_init: initialiser of the bias (default: zeros).
      sharding: axis names of the kernel ``(*out_spatial, window * in, out)``;
        the bias ``(*out_spatial, out)`` gets the spatial and last ones.

    Variables: params ``kernel`` of shape ``(*out_spatial, prod(kernel_size) *
    in_features, out_features)`` and ``bias`` of shape ``(*out_spatial,
    out_features)``, where ``out_spatial`` is the spatial shape of the output.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> layer = nnx.nn.ConvLocal(3, 4, (3,), input_shape=(8,), padding="VALID", ctx=nnx.Context(0))
        >>> layer.kernel.value.shape, layer.bias.value.shape, layer(jnp.ones((2, 8, 3))).shape
        ((6, 9, 4), (6, 4), (2, 6, 4))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tp.Sequence[int],
        input_shape: int | tp.Sequence[int],
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
        kernel_size = spatial.kernel_size_tuple(kernel_size, layer="ConvLocal")
        rank = len(kernel_size)
        input_shape = spatial.kernel_size_tuple(input_shape, layer="ConvLocal", argument="input_shape")
        if len(input_shape) != rank:
            raise ValueError(
                f"ConvLocal: input_shape gives the {rank} spatial dimensions of the input (one per "
                f"entry of kernel_size={kernel_size}), without batch or feature dimensions; found "
                f"input_shape={input_shape} with {len(input_shape)} entries."
            )
        if feature_group_count != 1:
            raise ValueError(
                f"ConvLocal: feature_group_count must be 1 (a local convolution has no feature "
                f"groups, as in Linen); found {feature_group_count!r}. Use Conv for grouped convolutions."
            )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.kernel_size = kernel_size
        self.input_shape = input_shape
        self.strides = spatial.per_dim(strides, rank, "strides", layer="ConvLocal")
        self.padding = spatial.canonical_padding(padding, rank, layer="ConvLocal")
        self.input_dilation = spatial.per_dim(input_dilation, rank, "input_dilation", layer="ConvLocal")
        self.kernel_dilation = spatial.per_dim(kernel_dilation, rank, "kernel_dilation", layer="ConvLocal")
        self.feature_group_count = 1
        self.use_bias = bool(use_bias)
        self.dtype = dtypes.as_dtype(dtype)
        self.precision = precision
        out_spatial = self._output_spatial_shape()
        if not all(out_spatial):
            raise ValueError(
                f"ConvLocal: an input of spatial shape {input_shape} gives an empty output "
                f"(spatial shape {out_spatial}) with kernel_size={kernel_size}, strides={self.strides} "
                f"and padding={self.padding!r}; use a larger input_shape or more padding."
            )
        kernel_shape = out_spatial + (math.prod(kernel_size) * self.in_features, self.out_features)
        self.mask = spatial.kernel_mask(mask, kernel_shape, layer="ConvLocal")
        self.kernel, self.bias = kernel_and_bias(
            ctx,
            layer="ConvLocal",
            what=f"kernel (*out_spatial, window * in, out) {kernel_shape}",
            kernel_shape=kernel_shape,
            bias_shape=out_spatial + (self.out_features,) if self.use_bias else None,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            sharding=sharding,
            bias_axes=(*range(rank), -1),
        )

    def _output_spatial_shape(self) -> tuple[int, ...]:
        padded = spatial.padded_spatial_shape(
            self.input_shape, self.padding, self.kernel_size, self.kernel_dilation
        )
        padding = "VALID" if self.padding in spatial.HAND_PADDINGS else self.padding
        lhs = jax.ShapeDtypeStruct((1,) + padded + (self.in_features,), jnp.float32)
        rhs = jax.ShapeDtypeStruct(self.kernel_size + (self.in_features, self.out_features), jnp.float32)
        out = jax.eval_shape(
            lambda a, b: lax.conv_general_dilated(
                a,
                b,
                self.strides,
                padding,
                lhs_dilation=self.input_dilation,
                rhs_dilation=self.kernel_dilation,
                dimension_numbers=spatial.conv_dimension_numbers(len(padded) + 2),
            ),
            lhs,
            rhs,
        )
        return tuple(out.shape[1:-1])

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the local convolution to ``x`` of shape ``(batch..., *input_shape, in_features)``."""
        rank = len(self.kernel_size)
        layer = (
            f"ConvLocal(in_features={self.in_features}, kernel_size={self.kernel_size}, "
            f"input_shape={self.input_shape})"
        )
        batch_shape = spatial.check_input(x, rank, self.in_features, layer=layer)
        found = tuple(jnp.shape(x)[len(batch_shape) : -1])
        if found != self.input_shape:
            raise ValueError(
                f"{layer} was built for inputs of spatial shape {self.input_shape} (its kernel has "
                f"one window per output position); found spatial shape {found} (input shape "
                f"{jnp.shape(x)}). Build the layer with input_shape={found}."
            )
        x = spatial.fold_batch(x, batch_shape)
        x, padding = spatial.pad_by_hand(x, self.padding, self.kernel_size, self.kernel_dilation)
        bias = None if self.bias is None else self.bias.value
        x, kernel, bias = spatial.call_operands(x, self.kernel.value, self.mask, bias, self.dtype)
        y = lax.conv_general_dilated_local(
            x,
            kernel,
            self.strides,
            padding,
            self.kernel_size,
            lhs_dilation=self.input_dilation,
            rhs_dilation=self.kernel_dilation,
            dimension_numbers=spatial.conv_dimension_numbers(x.ndim),
            precision=self.precision,
        )
        if bias is not None:
            y += jnp.reshape(bias, (1,) + bias.shape)
        return spatial.unfold_batch(y, batch_shape)
