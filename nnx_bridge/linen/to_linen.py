"""`ToLinen`: an nnx_bridge Module as a genuine `flax.linen.Module`."""

from __future__ import annotations

import functools
import inspect
import types
import typing as tp

import flax.linen as nn
from flax.core import FrozenDict
import jax.numpy as jnp

from nnx_bridge.linen import boxes, config
from nnx_bridge.linen import checks
from nnx_bridge.linen.rngs import LinenRngs
from nnx_bridge.module import Module, ModuleDef
from nnx_bridge.state import State

_MISSING = object()


class ToLinen(nn.Module):
    """A Linen module that builds ``factory(*args, ctx=ctx, **kwargs)`` and runs it.

    ``init`` builds the module with a Context drawn from Linen's RNGs, runs the
    call and returns its Variables in Linen's layout (``params/l1/kernel``;
    list elements under ``"0"``, ``"1"``...; sharded Variables boxed as
    ``nn.Partitioned``, or ``nn.LogicallyPartitioned`` with ``logical_axes=True``
    when the names are logical names for ``nn.logical_axis_rules``). ``apply``
    merges the given variables into the ModuleDef of this configuration
    (computed once, cached) and never re-runs initialisers; updated Variables
    are written back only to mutable collections, and anything missing,
    unexpected or misshapen is an error.

    Methods of the wrapped module are methods of this one, so
    ``model.apply(v, x, method="encode")`` works; a method with a ``ctx``
    parameter receives the RNGs given to ``init``/``apply``.

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> class Affine(nnx.Module):
        ...     def __init__(self, n, *, ctx):
        ...         self.w = nnx.Param(jax.random.normal(ctx.make_rng("params"), (n, n)))
        ...     def __call__(self, x):
        ...         return x @ self.w.value
        >>> model = nnx.ToLinen(Affine, args=(3,))
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
        >>> jax.tree.map(jnp.shape, variables)
        {'params': {'w': (3, 3)}}
        >>> model.apply(variables, jnp.ones((1, 3))).shape
        (1, 3)
    """

    factory: tp.Callable[..., Module]
    args: tp.Sequence[tp.Any] = ()
    kwargs: tp.Mapping[str, tp.Any] = FrozenDict()
    logical_axes: bool = False

    def __post_init__(self) -> None:
        checks.check_factory(self.factory, self.kwargs)
        # The configuration's hashable form, computed once per instance (an unhashable
        # configuration fails here, at construction); every apply looks it up.
        key = (self.factory, config.freeze(tuple(self.args), "args"), config.freeze(self.kwargs, "kwargs"))
        object.__setattr__(self, "_config", key)
        super().__post_init__()

    def __hash__(self) -> int:
        return hash((type(self), self._config_key(), self.name))

    @nn.nowrap
    def _config_key(self) -> tp.Hashable:
        return self.__dict__["_config"]

    @nn.nowrap
    def __getattr__(self, name: str) -> tp.Any:
        if not name.startswith("_") and "factory" in self.__dict__:
            target = self._wrapped_type()
            if callable(getattr(target, name, None)):
                def forward(module: ToLinen, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
                    return module._bridged_call(name, args, kwargs)

                forward.__name__ = name
                return types.MethodType(forward, self)
        checks.check_method(self, name)
        return super().__getattr__(name)

    @nn.nowrap
    def _wrapped_type(self) -> type:
        if isinstance(self.factory, type):
            return self.factory
        return self._structure().moduledef.type

    @nn.nowrap
    def _structure(self) -> config.Structure:
        return config.structure_of(self._config_key(), self.factory, tuple(self.args), dict(self.kwargs))

    @nn.nowrap
    def _owner(self) -> str:
        where = "/".join(self.scope.path) if self.scope is not None else ""
        return f"ToLinen({config._name(self.factory)}) at {where or '/'!r}"

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        return self._bridged_call("__call__", args, kwargs)

    @nn.compact
    def _bridged_call(self, method: str, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]) -> tp.Any:
        incoming = boxes.flat_leaves(self.variables)
        if self.is_initializing() and not incoming:
            return self._initialize(method, args, kwargs)
        return self._apply(incoming, method, args, kwargs)

    @nn.nowrap
    def _initialize(self, method: str, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]) -> tp.Any:
        ctx = LinenRngs(self, self._owner())
        module = config.build(self.factory, tuple(self.args), dict(self.kwargs), ctx)
        state, moduledef = module.partition()
        config.remember(self._config_key(), config.Structure(moduledef, config.abstract_state(state)))
        out = _call_method(module, method, args, kwargs, ctx)
        state = self._partition_after_call(module, moduledef, method)
        for collection, tree in boxes.boxed_variables(state, _box(self.logical_axes)).items():
            if not self.is_mutable_collection(collection):
                raise ValueError(
                    f"{self._owner()}: init creates variables in collection {collection!r}, which "
                    f"is not mutable in this init call. Leave `mutable` at its default for init, "
                    f"or include {collection!r}."
                )
            for name, subtree in tree.items():
                self.put_variable(collection, name, subtree)
        return out

    @nn.nowrap
    def _apply(self, incoming: dict[tuple[str, str], tp.Any], method: str,
               args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]) -> tp.Any:
        structure = self._structure()
        state, leaves = self._state_from(incoming, structure.abstract)
        module = structure.moduledef.merge(state)
        out = _call_method(module, method, args, kwargs, LinenRngs(self, self._owner()))
        new_state = self._partition_after_call(module, structure.moduledef, method)
        self._write_back(state, new_state, leaves)
        return out

    @nn.nowrap
    def _state_from(self, incoming: dict[tuple[str, str], tp.Any], abstract: State
                    ) -> tuple[State, dict[str, tp.Any]]:
        items, leaves = [], {}
        for path, expected in abstract.items():
            leaf = incoming.pop((expected.collection, path), _MISSING)
            if leaf is _MISSING:
                raise KeyError(_Message(
                    f"{self._owner()}: variable {self._full(expected.collection, path)!r} is missing "
                    f"(expected shape {tuple(expected.value.shape)}). Pass every collection that "
                    f"init returned, e.g. apply({{'params': ..., 'batch_stats': ...}}, ...)."
                ))
            value = boxes.unbox(leaf)
            if tuple(jnp.shape(value)) != tuple(expected.value.shape):
                raise ValueError(
                    f"{self._owner()}: variable {self._full(expected.collection, path)!r} has shape "
                    f"{tuple(jnp.shape(value))}, but the module expects {tuple(expected.value.shape)}. "
                    f"Check that the variables were made for this configuration."
                )
            items.append((path, expected.replace(value)))
            leaves[path] = leaf
        if incoming:
            unexpected = sorted(self._full(c, p) for c, p in incoming)
            shown = ", ".join(repr(p) for p in unexpected[:10])
            raise KeyError(_Message(
                f"{self._owner()}: unexpected variable(s) {shown}"
                f"{f' and {len(unexpected) - 10} more' if len(unexpected) > 10 else ''}: the module "
                f"has no such variable. Pass the variables that this model's init returned."
            ))
        return State._from_sorted(items), leaves

    @nn.nowrap
    def _partition_after_call(self, module: Module, moduledef: ModuleDef[tp.Any], method: str) -> State:
        state, after = module.partition()
        if after != moduledef:
            raise ValueError(
                f"{self._owner()}: calling {method!r} changed the module's structure (its "
                f"submodules, Variables or static attributes). A bridged module must create every "
                f"Variable and submodule in __init__ and keep plain attributes fixed; store values "
                f"that change in Variables."
            )
        return state

    @nn.nowrap
    def _write_back(self, before: State, after: State, leaves: dict[str, tp.Any]) -> None:
        changed: dict[tuple[str, str], None] = {}
        for path, variable in after.items():
            if variable.value is before[path].value:
                continue
            if not self.is_mutable_collection(variable.collection):
                raise ValueError(
                    f"{self._owner()}: the module updated {self._full(variable.collection, path)!r}, "
                    f"but collection {variable.collection!r} is not mutable. Pass "
                    f"mutable=[{variable.collection!r}] to apply, as for any Linen module."
                )
            changed[(variable.collection, path.split("/", 1)[0])] = None
        for collection, name in changed:
            subtree: dict[str, tp.Any] = {}
            for path, variable in after.items():
                top, _, rest = path.partition("/")
                if variable.collection != collection or top != name:
                    continue
                value = boxes.rebox(leaves[path], variable.value)
                if not rest:
                    self.put_variable(collection, name, value)
                    break
                node = subtree
                *parents, leaf = rest.split("/")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = value
            else:
                self.put_variable(collection, name, subtree)

    @nn.nowrap
    def _full(self, collection: str, path: str) -> str:
        return "/".join((collection, *(self.scope.path if self.scope is not None else ()), path))


def _box(logical_axes: bool) -> type[nn.Partitioned]:
    return nn.LogicallyPartitioned if logical_axes else nn.Partitioned


class _Message(str):
    """Keeps a KeyError's message readable (KeyError would print it quoted)."""

    def __repr__(self) -> str:
        return str(self)


def to_linen(factory: tp.Callable[..., Module], *args: tp.Any, name: str | None = None,
             **kwargs: tp.Any) -> ToLinen:
    """Wraps ``factory(*args, ctx=ctx, **kwargs)`` as a Linen module.

    ``name=`` is the Linen submodule name and is not passed to the factory.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, nnx_bridge as nnx
        >>> class Scale(nnx.Module):
        ...     def __init__(self, n, *, ctx):
        ...         self.s = nnx.Param(jnp.ones((n,)))
        ...     def __call__(self, x):
        ...         return x * self.s.value
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         return nn.Dense(2)(nnx.to_linen(Scale, 3, name="scale")(x))
        >>> variables = Net().init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
        >>> sorted(variables["params"])
        ['Dense_0', 'scale']
    """
    return ToLinen(factory, args, kwargs, name=name)


def _call_method(module: Module, method: str, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any],
                 ctx: LinenRngs) -> tp.Any:
    function = getattr(module, method, None)
    if not callable(function):
        raise AttributeError(
            f"{type(module).__name__} has no method {method!r} to call through to_linen; "
            f"pass method= the name of one of its methods."
        )
    if "ctx" not in kwargs and _takes_ctx(type(module), method):
        kwargs = {**kwargs, "ctx": ctx}
    return function(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _takes_ctx(module_type: type, method: str) -> bool:
    try:
        parameters = inspect.signature(getattr(module_type, method)).parameters
    except (TypeError, ValueError):
        return False
    ctx = parameters.get("ctx")
    return ctx is not None and ctx.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
