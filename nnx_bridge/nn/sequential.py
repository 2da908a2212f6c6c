"""`Sequential`: layers applied one after another, keyword arguments routed by signature."""

from __future__ import annotations

import functools
import inspect
import typing as tp

from nnx_bridge.module import Module


def _keywords_of(layer: tp.Callable[..., tp.Any]) -> frozenset[str] | None:
    """The keywords ``layer`` accepts besides its input; None when it takes ``**kwargs``."""
    if isinstance(layer, Module):  # by class, so the cache is shared by every instance
        return _keywords_of_function(type(layer).__call__, 2)  # skip self and the input
    try:
        return _keywords_of_function(layer, 1)
    except TypeError:  # an unhashable callable: inspect it without the cache
        return _keywords_of_function.__wrapped__(layer, 1)


@functools.cache
def _keywords_of_function(function: tp.Callable[..., tp.Any], skip: int) -> frozenset[str] | None:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature take no keywords
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    names = []
    for p in parameters:
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) and skip:
            skip -= 1
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return frozenset(names)


class Sequential(Module):
    """Applies its layers in order: ``x -> layers[0](x) -> layers[1](...) -> ...``.

    Layers are Modules or plain functions such as ``jax.nn.relu``. Each keyword
    argument of the call goes to every layer whose ``__call__`` accepts it (e.g.
    ``deterministic`` and ``ctx`` to `Dropout`, ``use_running_average`` to
    `BatchNorm`); a keyword that no layer accepts is an error.

    Variables: those of its layers, at ``layers/0/...``, ``layers/1/...``.

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> ctx = nnx.Context(0)
        >>> mlp = nnx.nn.Sequential(
        ...     nnx.nn.Linear(2, 8, ctx=ctx), jax.nn.relu, nnx.nn.Dropout(0.1),
        ...     nnx.nn.Linear(8, 1, ctx=ctx))
        >>> mlp(jnp.ones((3, 2)), deterministic=True).shape
        (3, 1)
        >>> sorted(mlp.partition()[0])
        ['layers/0/bias', 'layers/0/kernel', 'layers/3/bias', 'layers/3/kernel']
    """

    def __init__(self, *layers: tp.Callable[..., tp.Any]):
        if not layers:
            raise ValueError(
                "Sequential needs at least one layer, e.g. Sequential(Linear(...), jax.nn.relu)."
            )
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(
                    f"Sequential: layer {i} is a {type(layer).__name__}, which is not callable; "
                    f"pass Modules or functions."
                )
        self.layers = list(layers)

    def __call__(self, x: tp.Any, **kwargs: tp.Any) -> tp.Any:
        """Runs ``x`` through every layer, giving each the keyword arguments it accepts."""
        accepted = [_keywords_of(layer) for layer in self.layers]
        unused = set(kwargs).difference(*(a for a in accepted if a is not None))
        if unused and all(a is not None for a in accepted):
            raise TypeError(
                f"Sequential got keyword argument(s) {sorted(unused)} that none of its layers "
                f"accepts ({', '.join(_name(layer) for layer in self.layers)}). Check the spelling, "
                f"or call the layer that needs it directly."
            )
        for layer, names in zip(self.layers, accepted, strict=True):
            x = layer(x, **(kwargs if names is None else {k: v for k, v in kwargs.items() if k in names}))
        return x


def _name(layer: tp.Any) -> str:
    return type(layer).__name__ if isinstance(layer, Module) else getattr(layer, "__name__", repr(layer))
