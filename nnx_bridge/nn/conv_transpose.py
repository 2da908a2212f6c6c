"""`ConvTranspose`: a channels-last transposed convolution with Linen's names and arithmetic."""

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
    default_bias_init,
    default_kernel_init,
    kernel_and_bias,
)
from nnx_bridge.nn.spatial import Padding

_PADDINGS = ("SAME", "VALID", "SAME_LOWER", "CIRCULAR")


class ConvTranspose(Module):
    """A transposed convolution over channels-last inputs (Linen's ``nn.ConvTranspose``).

    It computes `jax.lax.conv_transpose`, so its padding and output sizes are
    lax's: with ``'SAME'`` padding the spatial size is multiplied by the strides,
    with ``'VALID'`` it becomes ``(size - 1) * stride + dilated_kernel_size``
    (when the stride is at most that size), and ``'CIRCULAR'`` wraps the
    ``'VALID'`` result periodically onto ``size * stride`` entries, as Linen.

    Args:
      in_features: number of input channels.
      out_features: number of output channels.
      kernel_size: int or tuple, the spatial size of the kernel.
      strides: int or one int per spatial dimension (None means 1).
      ctx: the Context the ``params`` keys come from.
      padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``, an int, or one int or
        ``(low, high)`` pair per spatial dimension (passed to lax as Linen does).
      kernel_dilation: int or one int per spatial dimension (None means 1).
      use_bias: whether to add a bias.
      mask: optional array of the kernel's shape, multiplied into the kernel
        before every use (masked convolution); a constant kept in the ModuleDef,
        not a variable, as Linen. Arguments of `nnx.to_linen` must be hashable:
        pass it there as ``nnx_bridge.nn.spatial.KernelMask(array)``.
      dtype: computation dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      precision: passed to `jax.lax.conv_transpose`.
      kernel_init: initialiser of the kernel (default: LeCun normal, as Linen).
      bias_init: initialiser of the bias (default: zeros).
      transpose_kernel: flip the kernel's spatial axes and swap its feature axes
        (the gradient of a `Conv` with the same kernel); the kernel is then
        stored as ``(*kernel_size, out_features, in_features)``.
      preferred_element_type: the accumulation/output dtype passed to lax.
      sharding: axis names of the kernel (one per dimension); the bias gets the
        output-feature one.

    Variables: params ``kernel`` of shape ``(*kernel_size, in_features,
    out_features)`` (or ``(*kernel_size, out_features, in_features)`` with
    ``transpose_kernel``) and ``bias`` of shape ``(out_features,)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> layer = nnx.nn.ConvTranspose(3, 4, (3, 3), strides=2, ctx=nnx.Context(0))
        >>> layer.kernel.value.shape, layer(jnp.ones((1, 5, 5, 3))).shape
        ((3, 3, 3, 4), (1, 10, 10, 4))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tp.Sequence[int],
        strides: int | tp.Sequence[int] | None = None,
        *,
        ctx: Context,
        padding: Padding = "SAME",
        kernel_dilation: int | tp.Sequence[int] | None = None,
        use_bias: bool = True,
        mask: tp.Any = None,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        precision: tp.Any = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        transpose_kernel: bool = False,
        preferred_element_type: tp.Any = None,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        kernel_size = spatial.kernel_size_tuple(kernel_size, layer="ConvTranspose")
        rank = len(kernel_size)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.kernel_size = kernel_size
        self.strides = spatial.per_dim(strides, rank, "strides", layer="ConvTranspose")
        self.padding = spatial.canonical_padding(padding, rank, layer="ConvTranspose", strings=_PADDINGS)
        self.kernel_dilation = spatial.per_dim(
            kernel_dilation, rank, "kernel_dilation", layer="ConvTranspose"
        )
        self.use_bias = bool(use_bias)
        self.dtype = dtypes.as_dtype(dtype)
        self.precision = precision
        self.transpose_kernel = bool(transpose_kernel)
        self.preferred_element_type = dtypes.as_dtype(
            preferred_element_type, argument="preferred_element_type"
        )
        features = (
            (self.out_features, self.in_features)
            if self.transpose_kernel
            else (self.in_features, self.out_features)
        )
        kernel_shape = self.kernel_size + features
        self.mask = spatial.kernel_mask(mask, kernel_shape, layer="ConvTranspose")
        layout = "(*kernel_size, out, in)" if self.transpose_kernel else "(*kernel_size, in, out)"
        self.kernel, self.bias = kernel_and_bias(
            ctx,
            layer="ConvTranspose",
            what=f"kernel {layout} {kernel_shape}",
            kernel_shape=kernel_shape,
            bias_shape=(self.out_features,) if self.use_bias else None,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            sharding=sharding,
            bias_axes=(-2 if self.transpose_kernel else -1,),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the transposed convolution to ``x`` of shape ``(batch..., spatial..., in_features)``."""
        batch_shape = spatial.check_input(
            x,
            len(self.kernel_size),
            self.in_features,
            layer=f"ConvTranspose(in_features={self.in_features}, kernel_size={self.kernel_size})",
        )
        x = spatial.fold_batch(x, batch_shape)
        bias = None if self.bias is None else self.bias.value
        x, kernel, bias = spatial.call_operands(x, self.kernel.value, self.mask, bias, self.dtype)
        padding = "VALID" if self.padding == "CIRCULAR" else self.padding
        y = lax.conv_transpose(
            x,
            kernel,
            self.strides,
            padding,
            rhs_dilation=self.kernel_dilation,
            transpose_kernel=self.transpose_kernel,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
        )
        if self.padding == "CIRCULAR":
            y = self._wrap_periodically(y, x.shape[1:-1])
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return spatial.unfold_batch(y, batch_shape)

    def _wrap_periodically(self, y: jax.Array, in_spatial: tuple[int, ...]) -> jax.Array:
        """Folds the 'VALID' output onto one period (``size * stride``) per spatial dimension.

        The output is first padded to a whole number of periods, the input's
        start landing on a period boundary; an odd remainder goes on the left,
        or on the right with ``transpose_kernel`` (so that it is the exact
        transpose of a circular `Conv` with the same kernel), as Linen.
        """
        periods = [size * stride for size, stride in zip(in_spatial, self.strides, strict=True)]
        pads = []
        for length, period in zip(y.shape[1:-1], periods, strict=True):
            missing = -(length - period) % (2 * period)
            small, large = missing // 2, (missing + 1) // 2
            pads.append((small, large) if self.transpose_kernel else (large, small))
        y = jnp.pad(y, [(0, 0)] + pads + [(0, 0)])
        for axis, period in enumerate(periods, start=1):
            y = jnp.reshape(y, y.shape[:axis] + (-1, period) + y.shape[axis + 1 :]).sum(axis=axis)
        return y
