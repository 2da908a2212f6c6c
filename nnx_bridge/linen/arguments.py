"""The bridge's argument checks: misuses that Linen would report cryptically, named plainly.

Each check is called from one line where the bridge takes the argument
(`to_linen`, `ToLinen`, ``apply(method=...)``, the abstract build of
``apply``-before-``init``, `from_linen`), and raises an error that names the
argument, what was expected, what was found and the fix.
"""

from __future__ import annotations

import inspect
import typing as tp

import flax.linen as nn
import jax

from nnx_bridge.module import Module

_TRACER_ERRORS = (
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def _name(factory: tp.Any) -> str:
    return getattr(factory, "__qualname__", None) or type(factory).__name__


def check_factory(factory: tp.Any, kwargs: tp.Mapping[str, tp.Any]) -> None:
    """Checks what `to_linen`/`ToLinen` wrap: a Module class or a function taking ``ctx``.

    Example:
        >>> import nnx_bridge as nnx
        >>> from nnx_bridge.linen.arguments import check_factory
        >>> check_factory(nnx.nn.Linear, {})
        >>> check_factory(nnx.nn.Linear, {"ctx": nnx.Context(0)})
        Traceback (most recent call last):
        ...
        TypeError: to_linen(Linear): do not pass ctx=: the bridge supplies it, ...
    """
    if isinstance(factory, Module):
        kind = type(factory).__name__
        raise TypeError(
            f"to_linen takes a Module class (or a function building one) and its arguments, not "
            f"a built {kind} module: the bridge builds the module itself, with a ctx drawn from "
            f"Linen's RNGs. Write nnx.to_linen({kind}, *args, **kwargs) instead of "
            f"nnx.to_linen({kind}(*args, ctx=..., **kwargs))."
        )
    if isinstance(factory, nn.Module):
        raise TypeError(
            f"to_linen wraps nnx_bridge Modules, but it was given the Linen module "
            f"{type(factory).__name__}: use a Linen module directly in Linen code (or wrap it for "
            f"nnx_bridge code with nnx_bridge.from_linen)."
        )
    if not callable(factory):
        raise TypeError(
            f"to_linen takes a Module class or a function returning a Module (called as "
            f"factory(*args, ctx=ctx, **kwargs)); found a {type(factory).__name__}."
        )
    name = _name(factory)
    if "ctx" in kwargs:
        raise TypeError(
            f"to_linen({name}): do not pass ctx=: the bridge supplies it, a Context drawn from the "
            f"RNGs given to init/apply (rngs={{'params': key, 'dropout': key}}). Remove ctx= from "
            f"the arguments."
        )
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read: trust it
        return
    takes_ctx = any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (
            p.name == "ctx"
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        for p in parameters
    )
    if not takes_ctx:
        raise TypeError(
            f"to_linen({name}): the factory takes no `ctx` keyword, but the bridge calls it as "
            f"factory(*args, ctx=ctx, **kwargs). Give it a keyword-only ctx parameter "
            f"(def __init__(self, ..., *, ctx)), or wrap it: "
            f"to_linen(lambda *args, ctx, **kwargs: {name}(*args, **kwargs), ...)."
        )


def check_method(wrapper: tp.Any, name: str) -> None:
    """Raises for ``method=name`` when the wrapped Module type has no such public method.

    Called by the Linen wrapper (`ToLinen`) when an attribute lookup fails, before
    Linen's own message (which speaks of ``setup()`` fields of "ToLinen").
    """
    factory = wrapper.__dict__.get("factory")
    if factory is None or name.startswith("__"):
        return
    if name.startswith("_"):
        target = factory if isinstance(factory, type) else None  # private names: no abstract build
    else:
        target = wrapper._wrapped_type()
    if target is None or (name.startswith("_") and not callable(getattr(target, name, None))):
        return  # Linen's own message for private names the module does not have
    public = sorted(n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n, None)))
    methods = ", ".join((["__call__"] if "__call__" in dir(target) else []) + public)
    owner = wrapper._owner()
    if name.startswith("_"):
        raise AttributeError(
            f"{owner}: method={name!r} is a private method of {target.__name__}; the bridge "
            f"runs public methods only ({methods}). Call it from a public method, or rename it."
        )
    raise AttributeError(
        f"{owner}: method={name!r} is not a method of {target.__name__}; its methods are: "
        f'{methods or "none"}. Pass method= one of them. ("{target.__name__}" object has no '
        f'attribute "{name}": it is neither a method nor a configuration argument.)'
    )


def abstract_build(build: tp.Callable[[jax.Array], tp.Any], factory: tp.Any) -> tp.Any:
    """Runs ``jax.eval_shape(build, key)``, explaining a build that needs concrete values.

    ``apply`` before any ``init`` in a process (e.g. after restoring a
    checkpoint) learns the module's structure by building it abstractly.
    """
    try:
        return jax.eval_shape(build, jax.random.PRNGKey(0))
    except _TRACER_ERRORS as error:
        raise TypeError(
            f"to_linen({_name(factory)}): apply was called before init in this process, so the "
            f"bridge built the module abstractly (under jax.eval_shape) to learn its structure, and "
            f"its __init__ needs concrete values ({type(error).__name__}: e.g. np.asarray, float() "
            f"or an `if` on a random draw). Call model.init(...) once in this process before "
            f"apply (its result may be discarded), or keep __init__ traceable (jnp instead of np, "
            f"no Python conversions of arrays)."
        ) from error


def check_sample_inputs(
    owner: str, module: tp.Any, sample_inputs: tuple[tp.Any, ...], kwargs: tp.Mapping[str, tp.Any]
) -> None:
    """Checks that `from_linen`'s sample inputs fit the Linen method ``init`` will run.

    Example:
        >>> import flax.linen as nn
        >>> from nnx_bridge.linen.arguments import check_sample_inputs
        >>> check_sample_inputs("from_linen(Dense)", nn.Dense(2), (), {})
        Traceback (most recent call last):
        ...
        TypeError: from_linen(Dense): init needs sample inputs for Dense.__call__...
    """
    method = kwargs.get("method")
    if method is None:
        function = inspect.getattr_static(type(module), "__call__", None)
    elif isinstance(method, str):
        function = getattr(type(module), method, None)
    else:
        function = method
    if function is None:
        return
    call_kwargs = {k: v for k, v in kwargs.items() if k != "method"}
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(module, *sample_inputs, **call_kwargs)
    except TypeError as error:
        shown = (
            str(signature.replace(return_annotation=inspect.Signature.empty))
            .replace("(self, ", "(")
            .replace("(self)", "()")
        )
        what = (
            "needs sample inputs"
            if not sample_inputs and not call_kwargs
            else "got sample inputs that do not fit"
        )
        raise TypeError(
            f"{owner}: init {what} for {type(module).__name__}.{getattr(function, '__name__', 'method')}"
            f"{shown}: {error}. Pass them after the module, e.g. from_linen(module, x, ctx=ctx) with "
            f"x an array or a jax.ShapeDtypeStruct of the input's shape."
        ) from None
