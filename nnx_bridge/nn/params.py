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
from nnx_bridge.variables import Param, check_sharding

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


def kernel_and_bias(
    ctx: Context,
    *,
    layer: str,
    what: str,
    kernel_shape: Shape,
    bias_shape: Shape | None,
    param_dtype: tp.Any,
    kernel_init: Initializer,
    bias_init: Initializer,
    sharding: tp.Any,
    bias_axes: tp.Sequence[int] | None,
) -> tuple[Param[jax.Array], Param[jax.Array] | None]:
    """A layer's ``kernel`` and optional ``bias``, keys drawn in that order, as Linen.

    `sharding` names the kernel's axes (checked by `check_sharding`); the bias
    gets the names of the kernel axes `bias_axes` (None: no names).

    Args:
      ctx: the Context the ``params`` keys come from.
      layer: the layer's name, for the error message.
      what: what the kernel's axes are (e.g. ``"kernel (in, out)"``), for the error message.
      kernel_shape: the kernel's shape.
      bias_shape: the bias's shape, or None for no bias.
      param_dtype: storage dtype of both.
      kernel_init: the kernel's initialiser.
      bias_init: the bias's initialiser.
      sharding: the layer's ``sharding=`` argument: one name per kernel axis, or None.
      bias_axes: the kernel axes whose names the bias takes, or None.

    Returns:
      ``(kernel, bias)``; ``bias`` is None when `bias_shape` is.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.nn.params import kernel_and_bias, default_kernel_init, default_bias_init
        >>> kernel, bias = kernel_and_bias(
        ...     nnx.Context(0), layer="Mine", what="kernel (in, out)", kernel_shape=(2, 3),
        ...     bias_shape=(3,), param_dtype=jnp.float32, kernel_init=default_kernel_init,
        ...     bias_init=default_bias_init, sharding=("embed", "mlp"), bias_axes=(-1,))
        >>> kernel.value.shape, bias.sharding
        ((2, 3), ('mlp',))
    """
    names = check_sharding(sharding, len(kernel_shape), where=layer, what=what)
    kernel = make_param(ctx, kernel_init, kernel_shape, param_dtype, names)
    if bias_shape is None:
        return kernel, None
    bias_names = None if names is None or bias_axes is None else tuple(names[a] for a in bias_axes)
    return kernel, make_param(ctx, bias_init, bias_shape, param_dtype, bias_names)


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
