"""`ToLinen`: an nnx_bridge Module as a genuine `flax.linen.Module`."""

from __future__ import annotations

import functools
import inspect
import types
import typing as tp

import flax.linen as nn
import jax.numpy as jnp
from flax.core import FrozenDict

from nnx_bridge import phase as phaselib
from nnx_bridge.errors import ReadableKeyError, listing
from nnx_bridge.linen import arguments, boxes, checks, config
from nnx_bridge.linen.phases import BridgePhase
from nnx_bridge.linen.rngs import LinenRngs
from nnx_bridge.module import Module, ModuleDef
from nnx_bridge.state import State, nest, split_path, unescape_name

_MISSING = object()


class ToLinen(nn.Module):
    """A Linen module that builds ``factory(*args, ctx=ctx, **kwargs)`` and runs it.

    ``init`` builds the module with a Context drawn from Linen's RNGs, runs the
    call (``is_initializing()`` True; ``self.variable(...)`` may create Variables
    sized from the inputs) and returns its Variables as constructed, plus those
    the call created with the values it gave them, in Linen's layout
    (``params/l1/kernel``; list elements under ``"0"``, ``"1"``...; sharded
    Variables boxed as ``nn.Partitioned``, or ``nn.LogicallyPartitioned`` with
    ``logical_axes=True`` when the names are logical names for
    ``nn.logical_axis_rules``). ``apply`` merges the given variables into the
    ModuleDef of this configuration (computed once, cached) and never re-runs
    initialisers; variables that ``init`` created lazily are put in place for
    ``self.variable(...)`` to find; updated Variables are written back only to
    mutable collections, and anything missing, unexpected, misshapen or
    changing shape or dtype in the call is an error (see `BridgePhase`).

    The configuration reads as attributes (``model.dtype``); ``to_linen`` is the
    usual way to build one (a subclass named after the wrapped class).

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
        arguments.check_factory(self.factory, self.kwargs)
        # The configuration's hashable form, computed once per instance (an unhashable
        # configuration fails here, at construction); every apply looks it up.
        key = (self.factory, config.freeze(tuple(self.args), "args"), config.freeze(self.kwargs, "kwargs"))
        object.__setattr__(self, "_config", key)
        super().__post_init__()

    def __hash__(self) -> int:
        return hash((type(self), self._config_key(), self.name))

    @nn.nowrap
    def __reduce_ex__(self, protocol: tp.SupportsIndex) -> tp.Any:
        # A class made by `linen_class` is not importable by name: pickle the factory instead.
        reduced = super().__reduce_ex__(protocol)
        if (
            type(self) is not ToLinen
            and isinstance(reduced, tuple)
            and len(reduced) > 2
            and reduced[1][:1] == (type(self),)
        ):
            return (_instance_of, (self.factory,), *reduced[2:])
        return reduced

    @nn.nowrap
    def _config_key(self) -> tp.Hashable:
        return self.__dict__["_config"]

    @nn.nowrap
    def __getattr__(self, name: str) -> tp.Any:
        # The wrapped module's configuration reads as attributes (model.dtype), and its
        # methods as methods of this module (self.child.encode(x) in a Linen parent).
        if not name.startswith("_") and "factory" in self.__dict__:
            configuration = self._named_configuration()
            if name in configuration:
                return configuration[name]
            target = self._wrapped_type()
            if callable(getattr(target, name, None)):

                def forward(module: ToLinen, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
                    return module._bridged_call(name, args, kwargs)

                forward.__name__ = name
                return types.MethodType(forward, self)
        arguments.check_method(self, name)
        return super().__getattr__(name)

    @nn.nowrap
    def _named_configuration(self) -> dict[str, tp.Any]:
        named = self.__dict__.get("_named")
        if named is None:
            named = config.named_configuration(self.factory, tuple(self.args), dict(self.kwargs))
            object.__setattr__(self, "_named", named)
        return named

    # Linen's entry points, taking the wrapped class's own functions as method= (Model.encode).
    @nn.nowrap
    def init(self, rngs: tp.Any, *args: tp.Any, method: tp.Any = None, **kwargs: tp.Any) -> tp.Any:
        return super().init(rngs, *args, method=self._linen_method(method), **kwargs)

    @nn.nowrap
    def init_with_output(
        self, rngs: tp.Any, *args: tp.Any, method: tp.Any = None, **kwargs: tp.Any
    ) -> tp.Any:
        return super().init_with_output(rngs, *args, method=self._linen_method(method), **kwargs)

    @nn.nowrap
    def apply(self, variables: tp.Any, *args: tp.Any, method: tp.Any = None, **kwargs: tp.Any) -> tp.Any:
        return super().apply(variables, *args, method=self._linen_method(method), **kwargs)

    @nn.nowrap
    def _linen_method(self, method: tp.Any) -> tp.Any:
        """A function of the wrapped class (``Model.encode``) becomes its name; others pass as they are."""
        if method is None or isinstance(method, str):
            return method
        name = getattr(method, "__name__", None)
        if name and getattr(self._wrapped_type(), name, None) is method:
            return name
        return method

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
        """Builds the module, runs the call, and stores its Variables as constructed.

        Variables created by the call (``variable(...)``, ``sow(...)``) are
        stored with the values the call gave them.
        """
        ctx = LinenRngs(self, self._owner())
        phase = BridgePhase(self, self._owner(), self._full)
        with phaselib.active(phase):
            module = config.build(self.factory, tuple(self.args), dict(self.kwargs), ctx)
            constructed, moduledef = module.partition()
            config.remember(
                self._config_key(), config.Structure(moduledef, config.abstract_state(constructed))
            )
            phase.made.clear()  # Variables made while constructing are part of the structure
            phase.root = module
            out = _call_method(module, method, args, kwargs, ctx)
        after = self._checked_state(module, moduledef, constructed, phase, method)
        created = [(p, v) for p, v in after.items() if p not in constructed]
        self._store(State({**constructed, **dict(created)}))
        return out

    @nn.nowrap
    def _apply(
        self,
        incoming: dict[tuple[str, str], tp.Any],
        method: str,
        args: tuple[tp.Any, ...],
        kwargs: dict[str, tp.Any],
    ) -> tp.Any:
        """Merges the given variables into the cached structure, runs the call, writes back.

        Given variables that the structure lacks (created lazily by ``init``) are put
        in place before the call. Inside a Linen parent's ``init`` (a shared wrapper
        called again), only Variables this call creates are stored: the others keep
        the values ``init`` gives them.
        """
        structure = self._structure()
        state, leaves = self._state_from(incoming, structure.abstract)
        module = structure.moduledef.merge(state)
        phase = BridgePhase(self, self._owner(), self._full)
        placed, unplaceable = phase.place(module, incoming)
        if unplaceable:
            self._raise_unexpected(unplaceable)
        before = {**state, **placed}
        leaves.update((path, incoming[(v.collection, path)]) for path, v in placed.items())
        with phaselib.active(phase):
            out = _call_method(module, method, args, kwargs, LinenRngs(self, self._owner()))
        new_state = self._checked_state(module, structure.moduledef, before, phase, method)
        unclaimed = phase.unclaimed()
        if unclaimed:
            self._raise_unexpected(unclaimed)
        if phase.is_initializing():
            created = State({p: v for p, v in new_state.items() if p not in before})
            if created:
                self._store(created)
            return out
        self._write_back(before, new_state, leaves)
        return out

    @nn.nowrap
    def _state_from(
        self, incoming: dict[tuple[str, str], tp.Any], abstract: State
    ) -> tuple[State, dict[str, tp.Any]]:
        """The State of the constructed structure's paths; they are removed from `incoming`."""
        items, leaves = [], {}
        for path, expected in abstract.items():
            leaf = incoming.pop((expected.collection, path), _MISSING)
            if leaf is _MISSING:
                raise ReadableKeyError(
                    f"{self._owner()}: variable {self._full(expected.collection, path)!r} is missing "
                    f"(expected shape {tuple(expected.value.shape)}). Pass every collection that "
                    f"init returned, e.g. apply({{'params': ..., 'batch_stats': ...}}, ...)."
                )
            value = boxes.unbox(leaf)
            if tuple(jnp.shape(value)) != tuple(expected.value.shape):
                raise ValueError(
                    f"{self._owner()}: variable {self._full(expected.collection, path)!r} has shape "
                    f"{tuple(jnp.shape(value))}, but the module expects {tuple(expected.value.shape)}. "
                    f"Check that the variables were made for this configuration."
                )
            items.append((path, expected.replace(value)))
            leaves[path] = leaf
        return State.from_sorted(items), leaves

    @nn.nowrap
    def _raise_unexpected(self, found: list[tuple[str, str]]) -> tp.NoReturn:
        unexpected = sorted(self._full(c, p) for c, p in found)
        raise ReadableKeyError(
            f"{self._owner()}: unexpected variable(s) {listing(unexpected)}: the module "
            f"has no such variable. Pass the variables that this model's init returned."
        )

    @nn.nowrap
    def _checked_state(
        self,
        module: Module,
        moduledef: ModuleDef[tp.Any],
        before: tp.Mapping[str, tp.Any],
        phase: BridgePhase,
        method: str,
    ) -> State:
        return checks.state_after_call(
            module, moduledef, before, phase, owner=self._owner(), method=method, full_path=self._full
        )

    @nn.nowrap
    def _store(self, state: State) -> None:
        """Puts `state` into the Linen collections (boxed), which must be mutable."""
        for collection, tree in boxes.boxed_variables(state, _box(self.logical_axes)).items():
            if not self.is_mutable_collection(collection):
                raise ValueError(
                    f"{self._owner()}: init creates variables in collection {collection!r}, which "
                    f"is not mutable in this init call. Leave `mutable` at its default for init, "
                    f"or include {collection!r}."
                )
            for name, subtree in tree.items():
                self.put_variable(collection, name, subtree)

    @nn.nowrap
    def _write_back(self, before: tp.Mapping[str, tp.Any], after: State, leaves: dict[str, tp.Any]) -> None:
        """Writes changed and newly created Variables to their (mutable) Linen collections."""
        changed: dict[tuple[str, str], None] = {}
        for path, variable in after.items():
            old = before.get(path)
            if old is not None and variable.value is old.value:
                continue
            if not self.is_mutable_collection(variable.collection):
                raise ValueError(
                    f"{self._owner()}: the module updated {self._full(variable.collection, path)!r}, "
                    f"but collection {variable.collection!r} is not mutable. Pass "
                    f"mutable=[{variable.collection!r}] to apply, as for any Linen module."
                )
            changed[(variable.collection, path.split("/", 1)[0])] = None
        for collection, name in changed:
            # Path segments are escaped (nnx_bridge.state.escape_name); Linen's keys are not.
            entries = [
                (split_path(path)[1:], boxes.rebox(leaves[path], v.value) if path in leaves else v.value)
                for path, v in after.items()
                if v.collection == collection and path.partition("/")[0] == name
            ]
            whole = entries[0][1] if len(entries) == 1 and not entries[0][0] else nest(entries)
            self.put_variable(collection, unescape_name(name), whole)

    @nn.nowrap
    def _full(self, collection: str, path: str) -> str:
        # Linen's names in messages: escaped path segments (nnx_bridge.state.escape_name) unescaped.
        return "/".join((collection, *(self.scope.path if self.scope is not None else ()), *split_path(path)))


def _box(logical_axes: bool) -> type[nn.Partitioned]:
    return nn.LogicallyPartitioned if logical_axes else nn.Partitioned


class ToLinenFunction:
    """`to_linen`: wraps ``factory(*args, ctx=ctx, **kwargs)`` as a Linen module.

    ``nnx.to_linen(Model, *args, name=None, **kwargs)`` passes every argument
    except ``name=`` (the Linen submodule name) to the factory. Options of the
    bridge itself never share that namespace: set them with `options`, which
    returns a `to_linen` with those options, e.g.
    ``nnx.to_linen.options(logical_axes=True)(Model, cfg)``.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, nnx_bridge as nnx
        >>> class Scale(nnx.Module):
        ...     def __init__(self, n, *, ctx, logical_axes=("embed",)):
        ...         self.s = nnx.Param(jnp.ones((n,)), sharding=logical_axes)
        ...     def __call__(self, x):
        ...         return x * self.s.value
        >>> model = nnx.to_linen.options(logical_axes=True)(Scale, 3, logical_axes=("hidden",))
        >>> type(model.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))["params"]["s"]).__name__
        'LogicallyPartitioned'
        >>> model.n, model.logical_axes  # the factory's configuration, by parameter name
        (3, True)
    """

    def __init__(self, *, logical_axes: bool = False):
        self._logical_axes = logical_axes

    def __call__(
        self, factory: tp.Callable[..., Module], /, *args: tp.Any, name: str | None = None, **kwargs: tp.Any
    ) -> ToLinen:
        """Wraps ``factory(*args, ctx=ctx, **kwargs)`` as a Linen module named `name`.

        A class factory gives a Linen module class of the same name (a subclass of
        `ToLinen`), so ``nn.tabulate``, Linen's error messages and automatic names
        (``ResNet_0`` in a compact parent) read as for the Linen twin; the factory's
        arguments read as attributes (``model.dtype``), positional ones named by
        the factory's signature.

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
            >>> type(nnx.to_linen(Scale, 3)).__name__, nnx.to_linen(Scale, 3).n
            ('Scale', 3)
        """
        return linen_class(factory)(
            factory, args, FrozenDict(kwargs), logical_axes=self._logical_axes, name=name
        )

    def options(self, *, logical_axes: bool = False) -> ToLinenFunction:
        """A `to_linen` with these bridge options (they never reach the factory).

        Args:
          logical_axes: box sharded Variables as ``nn.LogicallyPartitioned`` (their
            names are logical names for ``nn.logical_axis_rules``) instead of
            ``nn.Partitioned`` (mesh axis names).

        Example:
            >>> import nnx_bridge as nnx
            >>> nnx.to_linen.options(logical_axes=True)(nnx.Linear, 2, 3).logical_axes
            True
        """
        return ToLinenFunction(logical_axes=logical_axes)

    def __repr__(self) -> str:
        return f"to_linen.options(logical_axes={self._logical_axes})" if self._logical_axes else "to_linen"


to_linen = ToLinenFunction()

_classes: dict[tp.Any, type[ToLinen]] = {}


def _instance_of(factory: tp.Any) -> ToLinen:
    """An empty instance of ``linen_class(factory)`` (unpickling sets its fields)."""
    return object.__new__(linen_class(factory))


def linen_class(factory: tp.Any) -> type[ToLinen]:
    """The Linen module class for `factory`: a `ToLinen` subclass named after a class factory.

    Other factories (functions, partials) use `ToLinen` itself.

    Example:
        >>> import nnx_bridge as nnx
        >>> from nnx_bridge.linen.to_linen import linen_class
        >>> cls = linen_class(nnx.Linear)
        >>> cls.__name__, issubclass(cls, nnx.ToLinen), linen_class(nnx.Linear) is cls
        ('Linear', True, True)
    """
    if not isinstance(factory, type) or not factory.__name__.isidentifier():
        return ToLinen
    cls = _classes.get(factory)
    if cls is None:
        namespace = {
            "__hash__": ToLinen.__hash__,
            "__module__": ToLinen.__module__,
            "__qualname__": factory.__name__,
            "__doc__": f"{factory.__name__} (an nnx_bridge Module) as a Linen module; see ToLinen.",
        }
        cls = types.new_class(factory.__name__, (ToLinen,), {}, lambda ns: ns.update(namespace))
        _classes[factory] = cls
    return cls


def _call_method(
    module: Module, method: str, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any], ctx: LinenRngs
) -> tp.Any:
    function = getattr(module, method, None)
    if not callable(function):
        raise AttributeError(
            f"{type(module).__name__} has no method {method!r} to call through to_linen; "
            f"pass method= the name of one of its methods."
        )
    module_type: type = type(module)
    if "ctx" not in kwargs and _takes_ctx(module_type, method):
        kwargs = {**kwargs, "ctx": ctx}
    return function(*args, **kwargs)


@functools.cache
def _takes_ctx(module_type: type, method: str) -> bool:
    try:
        parameters = inspect.signature(getattr(module_type, method)).parameters
    except (TypeError, ValueError):
        return False
    ctx = parameters.get("ctx")
    return ctx is not None and ctx.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )
