"""Creating a layer's parameters: Linen's default initialisers, keys, shape checks.

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
Shape = tuple[int, ...]

#: Linen's default kernel initialiser (``Dense``, ``DenseGeneral``, ``Conv``, attention).
default_kernel_init: Initializer = initializers.lecun_normal()
#: Linen's default bias initialiser.
default_bias_init: Initializer = initializers.zeros
#: Linen's default scale initialiser for normalisation layers.
default_scale_init: Initializer = initializers.ones
#: Linen's default ``Embed`` initialiser: unit variance per embedding vector.
default_embed_init: Initializer = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def make_param(
    ctx: Context,
    init: Initializer,
    shape: Shape,
    param_dtype: tp.Any,
    sharding: tp.Sequence[str | None] | None = None,
) -> Param[jax.Array]:
    """A `Param` holding ``init(ctx.make_rng("params"), shape, param_dtype)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.nn.params import make_param, default_scale_init
        >>> p = make_param(nnx.Context(0), default_scale_init, (2,), jnp.float32, ("model",))
        >>> p.value.tolist(), p.sharding
        ([1.0, 1.0], ('model',))
    """
    return Param(init(ctx.make_rng("params"), shape, param_dtype), sharding=sharding)


def check_shapes(layer: tp.Any, config: str, **expected: Shape) -> None:
    """Checks each named Variable of `layer` against the shape its configuration needs.

    Layers call this first thing in ``__call__``, so a State made for another
    configuration (e.g. ``Linear(2, 1)``'s merged into ``Linear(2, 2)``'s
    ModuleDef, or a misshapen restored checkpoint) fails with the path and both
    shapes instead of a wrong result or an XLA error. Under `jax.jit` it runs at
    trace time only. Attributes holding None (e.g. no bias) are skipped.

    Args:
      layer: the layer (a Module).
      config: its configuration attributes that decide the shapes, space-separated
        (e.g. ``"in_features out_features"``), for the message.
      **expected: Variable attribute name -> the shape it must have.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.nn.params import check_shapes
        >>> layer = nnx.nn.Linear(2, 2, ctx=nnx.Context(0))
        >>> layer.kernel = nnx.Param(jnp.zeros((2, 1)))
        >>> check_shapes(layer, "in_features out_features", kernel=(2, 2))
        Traceback (most recent call last):
        ...
        ValueError: Linear: kernel has shape (2, 1) but in_features=2, out_features=2 need (2, 2). ...
    """
    for name, shape in expected.items():
        variable = getattr(layer, name, None)
        if variable is None:
            continue
        found = tuple(getattr(variable.value, "shape", ()))
        if found != tuple(shape):
            settings = ", ".join(f"{key}={getattr(layer, key)!r}" for key in config.split())
            raise ValueError(
                f"{type(layer).__name__}: {name} has shape {found} but {settings} need "
                f"{tuple(shape)}. Its value (a merged State or a restored checkpoint) was made "
                f"for another configuration: build the layer with the configuration the State "
                f"came from, or give it a State made for this one."
            )
