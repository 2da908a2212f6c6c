"""Helpers shared by the spatial layers (convolutions and pooling): arguments, padding, masks.

Every spatial layer takes channels-last inputs ``(batch..., spatial..., features)``
and per-dimension arguments (strides, dilations, padding) that may be given as
one int for all spatial dimensions. These helpers check and normalise those
arguments once, when a layer is built, with errors that name the layer and the
argument; and they hold Linen's conventions for hand-made padding and for
folding several batch dimensions into one.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nnx_bridge.nn import dtypes

Padding = str | int | tp.Sequence[int | tuple[int, int]]
#: Padding strings that `jax.lax` understands itself (case-insensitive, as lax).
LAX_PADDINGS = ("SAME", "VALID", "SAME_LOWER")
#: Padding strings the layers apply by hand (case-sensitive, as Linen), then convolve 'VALID'.
HAND_PADDINGS = ("CIRCULAR", "REFLECT", "CAUSAL")


def _is_int(value: tp.Any) -> tp.TypeGuard[int | np.integer]:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def kernel_size_tuple(
    kernel_size: int | tp.Sequence[int], *, layer: str, argument: str = "kernel_size"
) -> tuple[int, ...]:
    """``kernel_size`` as a non-empty tuple of positive ints (an int means 1-D).

    Example:
        >>> from nnx_bridge.nn.spatial import kernel_size_tuple
        >>> kernel_size_tuple(3, layer="Conv"), kernel_size_tuple([2, 2], layer="Conv")
        ((3,), (2, 2))
    """
    # A bool is an int here, then rejected below with the message (tuple(True) would not say why).
    values = (kernel_size,) if isinstance(kernel_size, (int, np.integer)) else tuple(kernel_size)
    if not values or not all(_is_int(k) and k > 0 for k in values):
        raise ValueError(
            f"{layer}: {argument} must be a positive int or a non-empty tuple of positive ints "
            f"(one per spatial dimension); found {kernel_size!r}."
        )
    return tuple(int(k) for k in values)


def per_dim(value: int | tp.Sequence[int] | None, rank: int, argument: str, *, layer: str) -> tuple[int, ...]:
    """One positive int per spatial dimension; an int (or None, meaning 1) is broadcast.

    Example:
        >>> from nnx_bridge.nn.spatial import per_dim
        >>> per_dim(2, 3, "strides", layer="Conv"), per_dim(None, 2, "strides", layer="Conv")
        ((2, 2, 2), (1, 1))
    """
    if value is None:
        value = 1
    values = (value,) * rank if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != rank or not all(_is_int(v) and v > 0 for v in values):
        raise ValueError(
            f"{layer}: {argument} must be an int or {rank} ints (one per spatial dimension), each "
            f"at least 1; found {value!r}."
        )
    return tuple(int(v) for v in values)


def canonical_padding(
    padding: Padding,
    rank: int,
    *,
    layer: str,
    strings: tp.Sequence[str] = LAX_PADDINGS + HAND_PADDINGS,
) -> str | tuple[tuple[int, int], ...]:
    """Padding as a known string or one ``(low, high)`` pair per spatial dimension.

    Args:
      padding: a string, an int (the same on both sides of every dimension), or
        one entry per spatial dimension, each an int or a ``(low, high)`` pair.
      rank: the number of spatial dimensions.
      layer: the layer's name, for the error message.
      strings: the padding strings this layer accepts.

    Example:
        >>> from nnx_bridge.nn.spatial import canonical_padding
        >>> canonical_padding(1, 2, layer="Conv"), canonical_padding("same", 2, layer="Conv")
        (((1, 1), (1, 1)), 'SAME')
        >>> canonical_padding([0, (1, 2)], 2, layer="Conv")
        ((0, 0), (1, 2))
    """
    if isinstance(padding, str):
        if padding.upper() in LAX_PADDINGS and padding.upper() in strings:
            return padding.upper()
        if padding in strings:
            if padding == "CAUSAL" and rank != 1:
                raise ValueError(
                    f"{layer}: padding='CAUSAL' is only defined for 1-D convolutions; this one has "
                    f"{rank} spatial dimensions. Use 'SAME', 'VALID' or explicit pairs."
                )
            return padding
        raise ValueError(
            f"{layer}: unknown padding {padding!r}; expected one of "
            f"{', '.join(repr(s) for s in strings)}, an int, or {rank} (low, high) pairs."
        )
    if _is_int(padding):
        return ((int(padding), int(padding)),) * rank
    if isinstance(padding, tp.Sequence) and len(padding) == rank:
        pairs = []
        for p in padding:
            if _is_int(p):
                pairs.append((int(p), int(p)))
            elif isinstance(p, tp.Sequence) and len(p) == 2 and all(_is_int(q) for q in p):
                pairs.append((int(p[0]), int(p[1])))
            else:
                break
        else:
            return tuple(pairs)
    raise ValueError(
        f"{layer}: padding must be a string ({', '.join(repr(s) for s in strings)}), an int, or "
        f"{rank} entries (one per spatial dimension), each an int or a (low, high) pair; "
        f"found {padding!r}."
    )


def pad_by_hand(
    x: jax.Array,
    padding: str | tuple[tuple[int, int], ...],
    kernel_size: tuple[int, ...],
    kernel_dilation: tuple[int, ...],
) -> tuple[jax.Array, str | tuple[tuple[int, int], ...]]:
    """Applies 'CIRCULAR', 'REFLECT' or 'CAUSAL' padding to ``x`` (one batch dimension), as Linen.

    Returns the padded ``x`` and the padding left for `jax.lax` ('VALID' after
    hand padding; any other padding is returned unchanged with ``x``).

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.spatial import pad_by_hand
        >>> x, rest = pad_by_hand(jnp.arange(4.0).reshape(1, 4, 1), "CIRCULAR", (3,), (1,))
        >>> x[0, :, 0].tolist(), rest
        ([3.0, 0.0, 1.0, 2.0, 3.0, 0.0], 'VALID')
    """
    if padding not in HAND_PADDINGS:
        return x, padding
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation, strict=True)]
    if padding == "CAUSAL":
        return jnp.pad(x, [(0, 0), (dilated[0] - 1, 0), (0, 0)]), "VALID"
    pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
    return jnp.pad(x, pads, mode="wrap" if padding == "CIRCULAR" else "reflect"), "VALID"


def padded_spatial_shape(
    spatial: tuple[int, ...],
    padding: str | tuple[tuple[int, int], ...],
    kernel_size: tuple[int, ...],
    kernel_dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """The spatial shape `pad_by_hand` gives an input of spatial shape ``spatial``.

    Example:
        >>> from nnx_bridge.nn.spatial import padded_spatial_shape
        >>> padded_spatial_shape((8, 8), "CIRCULAR", (3, 3), (1, 2))
        (10, 12)
        >>> padded_spatial_shape((8,), "SAME", (3,), (1,))
        (8,)
    """
    if padding not in HAND_PADDINGS:
        return spatial
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation, strict=True)]
    return tuple(s + k - 1 for s, k in zip(spatial, dilated, strict=True))


def conv_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    """Channels-last input/output ``(N, spatial..., C)`` and kernel ``(spatial..., I, O)``.

    Example:
        >>> from nnx_bridge.nn.spatial import conv_dimension_numbers
        >>> conv_dimension_numbers(4).lhs_spec
        (0, 3, 1, 2)
    """
    spatial = tuple(range(1, ndim - 1))
    io_spec = (0, ndim - 1) + spatial
    kernel_spec = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
    return lax.ConvDimensionNumbers(io_spec, kernel_spec, io_spec)


def check_input(x: jax.Array, rank: int, in_features: int, *, layer: str) -> tuple[int, ...]:
    """Checks ``x`` is ``(batch..., rank spatial dims..., in_features)``; returns its batch shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.spatial import check_input
        >>> check_input(jnp.ones((2, 3, 5, 5, 4)), 2, 4, layer="Conv")
        (2, 3)
        >>> check_input(jnp.ones((5, 4)), 1, 4, layer="Conv")
        ()
    """
    shape = jnp.shape(x)
    if len(shape) < rank + 1 or shape[-1] != in_features:
        raise ValueError(
            f"{layer} expects channels-last inputs of shape (batch..., {rank} spatial dims..., "
            f"{in_features}); found shape {shape}. Put the {in_features} channels last (e.g. "
            f"x.transpose to NHWC), or build the layer for this input."
        )
    return tuple(shape[: len(shape) - rank - 1])


def fold_batch(x: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    """``x`` with its batch dimensions folded into exactly one (added if there is none).

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.spatial import fold_batch
        >>> fold_batch(jnp.ones((2, 3, 5, 4)), (2, 3)).shape, fold_batch(jnp.ones((5, 4)), ()).shape
        ((6, 5, 4), (1, 5, 4))
    """
    if len(batch_shape) == 1:
        return x
    return jnp.reshape(x, (-1,) + jnp.shape(x)[len(batch_shape) :])


def unfold_batch(y: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    """The inverse of `fold_batch` on the output ``y``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.spatial import unfold_batch
        >>> unfold_batch(jnp.ones((6, 3, 8)), (2, 3)).shape, unfold_batch(jnp.ones((1, 3, 8)), ()).shape
        ((2, 3, 3, 8), (3, 8))
    """
    if len(batch_shape) == 1:
        return y
    return jnp.reshape(y, batch_shape + jnp.shape(y)[1:])


class KernelMask:
    """A constant mask multiplied into a kernel: hashable, so a layer can keep it as a static field.

    Linen keeps the ``mask`` of a convolution as a module attribute, not a
    variable, so it is not part of the variables; here it is part of the
    layer's ModuleDef, compared and hashed by shape, dtype and values.

    Example:
        >>> import numpy as np
        >>> from nnx_bridge.nn.spatial import KernelMask
        >>> KernelMask(np.ones((2, 3))) == KernelMask(np.ones((2, 3))), KernelMask(np.ones(2)).shape
        (True, (2,))
    """

    __slots__ = ("_hash", "array")

    def __init__(self, mask: tp.Any):
        self.array = np.array(mask)  # a private, read-only copy
        self.array.flags.writeable = False
        self._hash = hash((self.array.shape, self.array.dtype.str, self.array.tobytes()))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, KernelMask)
            and self._hash == other._hash
            and self.array.dtype == other.array.dtype
            and self.array.shape == other.array.shape
            and bool(np.array_equal(self.array, other.array))
        )

    def __repr__(self) -> str:
        return f"KernelMask(shape={self.shape}, dtype={self.array.dtype})"


def kernel_mask(mask: tp.Any, kernel_shape: tuple[int, ...], *, layer: str) -> KernelMask | None:
    """``mask`` as a `KernelMask`, checked to have the kernel's shape (None stays None).

    Example:
        >>> import numpy as np
        >>> from nnx_bridge.nn.spatial import kernel_mask
        >>> kernel_mask(np.ones((3, 2, 4)), (3, 2, 4), layer="Conv"), kernel_mask(None, (3,), layer="Conv")
        (KernelMask(shape=(3, 2, 4), dtype=float64), None)
    """
    if mask is None:
        return None
    found = KernelMask(mask.array if isinstance(mask, KernelMask) else mask)
    if found.shape != tuple(kernel_shape):
        raise ValueError(
            f"{layer}: mask must have the kernel's shape {tuple(kernel_shape)}; found shape "
            f"{found.shape}. Build the mask for this kernel (kernel_size + (in, out) features)."
        )
    return found


def call_operands(
    x: jax.Array, kernel: jax.Array, mask: KernelMask | None, bias: jax.Array | None, dtype: tp.Any
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``x``, the kernel (times `mask`, if any) and ``bias``, promoted to one computation dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.spatial import KernelMask, call_operands
        >>> mask = KernelMask(jnp.array([1.0, 0.0]))
        >>> x, k, b = call_operands(jnp.ones(2), jnp.full(2, 3.0), mask, None, None)
        >>> k.tolist(), b
        ([3.0, 0.0], None)
    """
    if mask is not None:
        kernel = kernel * mask.array
    x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
    return x, kernel, bias
