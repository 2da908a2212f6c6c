"""Creating a layer's parameters: Linen's default initialisers, keys, sharding names.

Every layer draws one key per parameter from ``ctx.make_rng("params")``, in the
order Linen creates them (kernel before bias, scale before bias), calls the
initialiser with ``(key, shape, param_dtype)`` and wraps the result in a
`Param` carrying its sharding names. Initialisers are only used while a layer
is built; they are never stored on it.
"""

from __future__ import annotations

import typing as tp

import jax
from jax.nn import initializers

from nnx_bridge.context import Context
from nnx_bridge.variables import Param

Initializer = tp.Callable[..., jax.Array]
Shape = tp.Tuple[int, ...]

#: Linen's default kernel initialiser (``Dense``, ``DenseGeneral``, ``Conv``, attention).
default_kernel_init: Initializer = initializers.lecun_normal()
#: Linen's default bias initialiser.
default_bias_init: Initializer = initializers.zeros
#: Linen's default scale initialiser for normalisation layers.
default_scale_init: Initializer = initializers.ones
#: Linen's default ``Embed`` initialiser: unit variance per embedding vector.
default_embed_init: Initializer = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def make_param(ctx: Context, init: Initializer, shape: Shape, param_dtype: tp.Any,
               sharding: tp.Sequence[str | None] | None = None) -> Param[jax.Array]:
    """A `Param` holding ``init(ctx.make_rng("params"), shape, param_dtype)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.nn.params import make_param, default_scale_init
        >>> p = make_param(nnx.Context(0), default_scale_init, (2,), jnp.float32, ("model",))
        >>> p.value.tolist(), p.sharding
        ([1.0, 1.0], ('model',))
    """
    return Param(init(ctx.make_rng("params"), shape, param_dtype), sharding=sharding)


def check_sharding(sharding: tp.Any, ndim: int, *, layer: str,
                   what: str) -> tuple[str | None, ...] | None:
    """Validates `sharding` as one name (str or None) per dimension of an ``ndim``-D array.

    Args:
      sharding: the ``sharding=`` argument of a layer, or None.
      ndim: the rank of the array it names.
      layer: the layer's name, for the error message.
      what: what the names are for (e.g. ``"kernel (in, out)"``), for the error message.

    Returns:
      The names as a tuple, or None.

    Example:
        >>> from nnx_bridge.nn.params import check_sharding
        >>> check_sharding(["data", None], 2, layer="Linear", what="kernel (in, out)")
        ('data', None)
    """
    if sharding is None:
        return None
    if isinstance(sharding, str) or not isinstance(sharding, tp.Sequence):
        raise TypeError(
            f"{layer}: sharding must be a sequence of {ndim} axis names (str or None), one per "
            f"dimension of the {what}; found {sharding!r}."
        )
    names = tuple(sharding)
    if len(names) != ndim:
        raise ValueError(
            f"{layer}: sharding names one axis per dimension of the {what}, so it needs {ndim} "
            f"entries; found {len(names)}: {names!r}."
        )
    return names
