"""`grad` and `value_and_grad` with respect to the Variables of Module arguments.

The function runs on the caller's own objects: for the duration of the call the
selected Variables (``wrt``, a filter) hold JAX's differentiation values, and
afterwards every Variable is restored and then given its new value if the
function changed it (BatchNorm statistics, counters), exactly as a call without
`grad` would leave it. Variables the function creates (``Module.variable``)
stay, with plain values. Gradients come back as a `State` holding, at each
selected Variable's path, a Variable of the same type whose value is the
gradient. Under `nnx_bridge.jit` the caller's objects are the traced copies,
and `jit` carries the changes out.
"""

from __future__ import annotations

import typing as tp

import jax

from nnx_bridge import filters as filterlib
from nnx_bridge.graph import walk
from nnx_bridge.module import Module, structure_version
from nnx_bridge.state import State
from nnx_bridge.variables import Variable


def value_and_grad(
    fn: tp.Callable[..., tp.Any],
    argnums: int | tp.Sequence[int] = 0,
    *,
    has_aux: bool = False,
    wrt: filterlib.Filter = "params",
) -> tp.Callable[..., tp.Any]:
    """Like `jax.value_and_grad`, with Module arguments differentiated through their Variables.

    For an argument that is a Module, the gradient is a State of the Variables
    that `wrt` selects (paths as in ``module.partition()``); any other argument
    is differentiated as a pytree, as `jax.value_and_grad` does. Other Variable
    changes the function makes reach the caller.

    Args:
      fn: returns a scalar (or ``(scalar, aux)`` with ``has_aux=True``).
      argnums: the argument(s) to differentiate; a tuple gives a tuple of gradients.
      has_aux: whether `fn` returns ``(value, aux)``.
      wrt: the filter selecting the differentiated Variables of Module arguments.

    Returns:
      A function returning ``(value, grads)``, or ``((value, aux), grads)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> model = nnx.Linear(2, 1, ctx=nnx.Context(0))
        >>> loss, grads = nnx.value_and_grad(lambda m, x: m(x).sum())(model, jnp.ones((3, 2)))
        >>> list(grads), grads["kernel"].value.tolist()
        (['bias', 'kernel'], [[3.0], [3.0]])
    """
    many = not isinstance(argnums, int)
    nums: tuple[int, ...] = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums or any(not isinstance(n, int) or n < 0 for n in nums):
        raise TypeError(
            f"value_and_grad: argnums takes an int or a tuple of ints (argument positions); "
            f"found {argnums!r}."
        )
    predicate = filterlib.to_predicate(wrt)
    name = getattr(fn, "__name__", type(fn).__name__)

    def wrapped(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        for n in nums:
            if n >= len(args):
                raise TypeError(
                    f"value_and_grad({name}): argnums includes {n}, but the call has only {len(args)} "
                    f"positional argument(s). Pass the differentiated arguments positionally."
                )
        selected: dict[int, dict[str, Variable[tp.Any]]] = {}
        for n in nums:
            if isinstance(args[n], Module):
                chosen = {p: v for p, v in walk(args[n]).variables.items() if predicate(p, v)}
                if not chosen:
                    raise ValueError(
                        f"value_and_grad({name}): wrt={wrt!r} selects no Variable of argument {n} "
                        f"({type(args[n]).__name__}). Use a filter that matches its parameters, e.g. "
                        f"wrt='params' or wrt=nnx.Param."
                    )
                selected[n] = chosen
        everything = _variables(args, kwargs)
        primals = tuple([v.value for v in selected[n].values()] if n in selected else args[n] for n in nums)
        changed: list[Variable[tp.Any]] = []

        def inner(primals: tuple[tp.Any, ...]) -> tuple[tp.Any, tuple[tp.Any, list[tp.Any]]]:
            saved = [(v, v.value) for v in everything]
            version = structure_version()
            call_args = list(args)
            given: dict[int, tp.Any] = {}
            for n, p in zip(nums, primals, strict=True):
                if n in selected:
                    for v, x in zip(selected[n].values(), p, strict=True):
                        v.value = x
                        given[id(v)] = x
                else:
                    call_args[n] = p
            try:
                out = fn(*call_args, **kwargs)
                if has_aux and not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(
                        f"value_and_grad({name}, has_aux=True): the function must return a pair "
                        f"(value, aux); it returned a {type(out).__name__}."
                    )
                value, aux = out if has_aux else (out, None)
                now = everything if structure_version() == version else _variables(call_args, kwargs)
                old = {id(v): x for v, x in saved}
                for v in now:
                    before = given.get(id(v), old.get(id(v), _NEW))
                    if before is _NEW or v.value is not before:
                        changed.append(v)
                new_values = [v.value for v in changed]
            finally:
                for v, x in saved:
                    v.value = x
            return value, (aux, new_values)

        (value, (aux, new_values)), grads = jax.value_and_grad(inner, has_aux=True)(primals)
        for v, x in zip(changed, new_values, strict=True):
            v.value = x
        out_grads = tuple(
            State({p: v.replace(g) for (p, v), g in zip(selected[n].items(), grad, strict=True)})
            if n in selected
            else grad
            for n, grad in zip(nums, grads, strict=True)
        )
        result = out_grads if many else out_grads[0]
        return ((value, aux), result) if has_aux else (value, result)

    return wrapped


def grad(
    fn: tp.Callable[..., tp.Any],
    argnums: int | tp.Sequence[int] = 0,
    *,
    has_aux: bool = False,
    wrt: filterlib.Filter = "params",
) -> tp.Callable[..., tp.Any]:
    """Like `jax.grad`, with Module arguments differentiated through their Variables.

    Same arguments as `value_and_grad`; returns the gradients, or
    ``(grads, aux)`` with ``has_aux=True``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> model = nnx.Linear(2, 1, ctx=nnx.Context(0))
        >>> grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum(), wrt=nnx.PathContains("bias"))(model)
        >>> {p: g.value.tolist() for p, g in grads.items()}
        {'bias': [1.0]}
    """
    value_and_grad_fn = value_and_grad(fn, argnums, has_aux=has_aux, wrt=wrt)

    def wrapped(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if has_aux:
            (_, aux), grads = value_and_grad_fn(*args, **kwargs)
            return grads, aux
        return value_and_grad_fn(*args, **kwargs)[1]

    return wrapped


_NEW = object()


def _variables(args: tp.Sequence[tp.Any], kwargs: dict[str, tp.Any]) -> list[Variable[tp.Any]]:
    """Every Variable reachable from the arguments (each once)."""
    found: dict[int, Variable[tp.Any]] = {}
    for leaf in jax.tree.leaves((tuple(args), kwargs), is_leaf=lambda x: isinstance(x, (Module, Variable))):
        if isinstance(leaf, Variable):
            found.setdefault(id(leaf), leaf)
        elif isinstance(leaf, Module):
            for v in walk(leaf).variables.values():
                found.setdefault(id(v), v)
    return list(found.values())
