"""`WeightNorm`: a wrapped layer's weights l2-normalised (and scaled) on every call.

Shared with `SpectralNorm`: how a wrapper names state that belongs to one of the
wrapped layer's variables (Linen's keys ``"layer_instance/kernel/scale"``, one
name containing "/"), and how it runs the layer with substituted weights.
"""

from __future__ import annotations

import contextlib
import typing as tp

import jax
import jax.numpy as jnp
from jax import lax

from nnx_bridge import filters as filterlib
from nnx_bridge.context import Context
from nnx_bridge.graph import walk
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.nn.moments import Axes
from nnx_bridge.nn.params import Initializer, default_scale_init, make_param
from nnx_bridge.state import State, split_path
from nnx_bridge.variables import Variable

#: The attribute holding the wrapped layer; Linen's field (and variable) name.
LAYER = "layer_instance"


def l2_normalize(x: jax.Array, axis: tp.Any = None, eps: float = 1e-12) -> jax.Array:
    """``x * rsqrt(sum(x * x, axis) + eps)``, Linen's l2 normalisation (all axes for None).

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.weight_norm import l2_normalize
        >>> l2_normalize(jnp.array([3.0, 4.0])).tolist()
        [0.6000000238418579, 0.800000011920929]
    """
    return x * lax.rsqrt((x * x).sum(axis=axis, keepdims=True) + eps)


def state_name(path: str, suffix: str) -> str:
    """The wrapper's attribute (and Linen key) for `suffix` of the wrapped variable at `path`.

    Example:
        >>> from nnx_bridge.nn.weight_norm import state_name
        >>> state_name("kernel", "scale")
        'layer_instance/kernel/scale'
    """
    return "/".join((LAYER, *split_path(path), suffix))


@contextlib.contextmanager
def substituted(layer: Module, values: dict[str, Variable[tp.Any]]) -> tp.Iterator[None]:
    """Runs the body with `layer`'s Variables at the paths of `values` holding those values.

    Afterwards each Variable gets its own value back, unless the body assigned it
    a new one (that one stays).
    """
    own = walk(layer).variables  # one walk: the same Variable objects are set and restored
    before = {path: own[path].value for path in values}
    for path, variable in values.items():
        own[path].value = variable.value
    try:
        yield
    finally:
        for path, variable in values.items():
            if own[path].value is variable.value:
                own[path].value = before[path]


def assign(layer: Module, values: tp.Mapping[str, Variable[tp.Any]]) -> None:
    """Sets `layer`'s Variables at the paths of `values` to those values, dtype included.

    Unlike ``update_state`` (which keeps each Variable's dtype) this lets the wrapper
    store the layer's weights in its result dtype, as Linen's ``init`` does.
    """
    own = walk(layer).variables
    for path, variable in values.items():
        own[path].value = variable.value


def _feature_axes(axes: Axes | None, ndim: int, where: str) -> tuple[int, ...]:
    if axes is None:
        return ()
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    if any(not -ndim <= a < ndim for a in axes):
        raise ValueError(
            f"WeightNorm: feature_axes={axes!r} do not fit the {ndim}-D variable {where}. Give "
            f"feature axes of every normalised variable, or feature_axes=None for one norm per "
            f"variable (use variable_filter to choose the variables)."
        )
    return tuple(sorted({a % ndim for a in axes}))


class WeightNorm(Module):
    """L2 weight normalisation of a wrapped layer (Linen's ``nn.WeightNorm``, arxiv 1602.07868).

    On each call, every selected variable ``w`` of the wrapped layer is replaced
    by ``w / ||w|| * scale`` (the norm over every axis but ``feature_axes``) while
    the layer runs; the layer's own variables keep their values. As Linen's
    ``init`` stores the normalised weights, the constructor replaces the
    selected variables of `layer_instance` by their normalised values.

    Args:
      layer_instance: the layer to wrap (stored under the name ``layer_instance``).
      ctx: the Context the ``params`` keys of the scales come from.
      feature_axes: axes of each variable that keep their own norm and scale
        (default: the last); None normalises each variable as a whole.
      use_scale: whether to learn a scale per feature.
      scale_init: initialiser of the scales (default: ones).
      epsilon: added to the squared norm.
      dtype: dtype of the normalised weights; None infers it from weight and scale.
      param_dtype: storage dtype of the scales.
      variable_filter: which variables to normalise. As Linen: strings, and a
        variable is selected when one of them is a substring of its Linen path
        ``"layer_instance/<path>"`` (default ``{"kernel"}``); None or empty
        selects every variable. Any other nnx_bridge filter (a Variable type, a
        predicate ``(path, variable)``) is applied to the layer's State paths.

    Variables: the wrapped layer's under ``layer_instance/...``, and params
    ``"layer_instance/<path>/scale"`` (one name containing "/", as Linen's key),
    shaped like the feature axes of each selected variable.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> ctx = nnx.Context(0)
        >>> layer = nnx.nn.WeightNorm(nnx.nn.Linear(3, 2, ctx=ctx), ctx=ctx)
        >>> params = nnx.to_variables(layer.partition()[0])["params"]
        >>> sorted(params), params["layer_instance/kernel/scale"].shape
        (['layer_instance', 'layer_instance/kernel/scale'], (2,))
        >>> layer(jnp.ones((4, 3))).shape
        (4, 2)
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        ctx: Context,
        feature_axes: Axes | None = -1,
        use_scale: bool = True,
        scale_init: Initializer = default_scale_init,
        epsilon: float = 1e-12,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        variable_filter: tp.Any = frozenset({"kernel"}),
    ):
        if not isinstance(layer_instance, Module):
            raise TypeError(
                f"WeightNorm wraps a layer instance (an nnx_bridge Module); found "
                f"{type(layer_instance).__name__}. Build the layer first, e.g. "
                f"WeightNorm(nnx.nn.Linear(3, 4, ctx=ctx), ctx=ctx)."
            )
        self.layer_instance = layer_instance
        self.feature_axes = (
            feature_axes if feature_axes is None or isinstance(feature_axes, int) else tuple(feature_axes)
        )
        self.epsilon = float(epsilon)
        self.dtype = dtypes.as_dtype(dtype)
        self.use_scale = bool(use_scale)
        select = _selector(variable_filter)
        state, _ = layer_instance.partition()
        targets = []
        for path, variable in state.items():
            if not select(path, variable):
                continue
            targets.append(path)
            if use_scale:
                value = jnp.asarray(variable.value)
                axes = _feature_axes(self.feature_axes, value.ndim, repr(f"{LAYER}/{path}"))
                shape = tuple(value.shape[a] for a in axes)
                setattr(self, state_name(path, "scale"), make_param(ctx, scale_init, shape, param_dtype))
        self.targets = tuple(targets)  # the layer's State paths that are normalised
        # As Linen's init: the wrapped layer keeps its variables normalised.
        assign(layer_instance, self._normalized(state))

    def _normalized(self, state: State) -> dict[str, Variable[tp.Any]]:
        return {path: state[path].replace(self._normalize(path, state[path].value)) for path in self.targets}

    def _normalize(self, path: str, weight: tp.Any) -> jax.Array:
        value = jnp.asarray(weight)
        axes = _feature_axes(self.feature_axes, value.ndim, repr(f"{LAYER}/{path}"))
        value_bar = l2_normalize(
            value, tuple(i for i in range(value.ndim) if i not in axes), eps=self.epsilon
        )
        operands = [value]
        if self.use_scale:
            feature_shape = [1] * value.ndim
            for a in axes:
                feature_shape[a] = value.shape[a]
            scale = getattr(self, state_name(path, "scale")).value.reshape(feature_shape)
            value_bar = value_bar * scale
            operands.append(scale)
        return jnp.asarray(value_bar, dtypes.canonicalize_dtype(*operands, dtype=self.dtype))

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        """Calls the wrapped layer with its selected variables normalised."""
        state, _ = self.layer_instance.partition()
        with substituted(self.layer_instance, self._normalized(state)):
            return tp.cast(tp.Any, self.layer_instance)(*args, **kwargs)


def _selector(variable_filter: tp.Any) -> tp.Callable[[str, Variable[tp.Any]], bool]:
    if variable_filter is None:
        return lambda path, variable: True
    if isinstance(variable_filter, str):
        raise TypeError(
            f"WeightNorm: variable_filter={variable_filter!r} is one string; Linen reads it as a "
            f"collection of names (each matched as a substring of 'layer_instance/<path>'). Pass "
            f"{{{variable_filter!r}}} instead."
        )
    if isinstance(variable_filter, (set, frozenset, list, tuple)):
        names = tuple(variable_filter)
        if not all(isinstance(n, str) for n in names):
            raise TypeError(
                f"WeightNorm: variable_filter={variable_filter!r} mixes strings with other "
                f"values; give strings (matched as substrings of 'layer_instance/<path>') or one "
                f"nnx_bridge filter."
            )
        if not names:
            return lambda path, variable: True
        return lambda path, variable: any(n in "/".join((LAYER, *split_path(path))) for n in names)
    return filterlib.to_predicate(variable_filter)
