"""Module and ModuleDef: stateful Python objects split into (State, ModuleDef) and back.

`Module.partition` walks the object graph in sorted attribute order, puts every
Variable into a State at its first path (``"layers/0/kernel"``) and records
everything else in an immutable, hashable `ModuleDef`. `ModuleDef.merge` is the
exact inverse: it rebuilds the graph, shared submodules and shared Variables
included, from the ModuleDef and a State.
"""

from __future__ import annotations

import typing as tp

import numpy as np
import jax

from nnx_bridge import filters as filterlib
from nnx_bridge import phase as phaselib
from nnx_bridge.context import Context
from nnx_bridge.state import State, _item_key, escape_name, unescape_name
from nnx_bridge.variables import Variable, make_variable

M = tp.TypeVar("M", bound="Module")

# A field spec of a ModuleDef is one of:
#   ModuleDef                  a module seen for the first time
#   int                        a module seen before (its index), as in the seed
#   ("var", path)              the Variable stored in the State at `path`
#   ("static", type, value)    any other hashable value
#   ("list"|"tuple", specs)    a list or tuple of specs
#   ("namedtuple", type, specs)
#   ("dict", keys, specs)      a dict; keys sorted by their string form
_VAR, _STATIC, _LIST, _TUPLE, _NAMEDTUPLE, _DICT = "var", "static", "list", "tuple", "namedtuple", "dict"
# Types whose values are hashable, array-free static fields: partition takes them as they are.
_PLAIN_STATIC = frozenset({int, float, bool, str, bytes, complex, type(None)})


class ModuleDef(tp.Generic[M]):
    """The static structure of a Module graph: types, static fields, where Variables go.

    Immutable, equal by structure and hashable (the hash is computed once), so it
    can be a ``static_argnums`` argument of `jax.jit`.

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> class Scale(nnx.Module):
        ...     def __init__(self):
        ...         self.s = nnx.Param(jnp.array(2.0))
        ...     def __call__(self, x):
        ...         return x * self.s.value
        >>> state, moduledef = Scale().partition()
        >>> y, (state, moduledef) = moduledef.apply(state)(3.0)
        >>> float(y), moduledef == Scale().partition()[1]
        (6.0, True)
    """

    __slots__ = ("type", "index", "fields", "_hash", "_paths")

    type: tp.Type[M]
    index: int
    fields: tuple[tuple[str, tp.Any], ...]

    def __init__(self, type: tp.Type[M], index: int, fields: tuple[tuple[str, tp.Any], ...]):
        _set_type(self, type)
        _set_index(self, index)
        _set_fields(self, fields)
        _set_hash(self, None)
        _set_paths(self, None)

    def __setattr__(self, name: str, value: tp.Any) -> None:
        raise AttributeError(f"ModuleDef is immutable; cannot set {name!r}.")

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash((self.type, self.index, self.fields))
            _set_hash(self, h)
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ModuleDef) or hash(self) != hash(other):
            return False
        return self.type is other.type and self.index == other.index and self.fields == other.fields

    def __reduce__(self) -> tuple[tp.Any, ...]:
        return (ModuleDef, (self.type, self.index, self.fields))

    @property
    def submodules(self) -> dict[str, tp.Union["ModuleDef[tp.Any]", int]]:
        """Attributes holding a Module: a ModuleDef, or the index of one seen before."""
        return {n: s for n, s in self.fields if isinstance(s, (ModuleDef, int))}

    @property
    def static_fields(self) -> dict[str, tp.Any]:
        """Attributes holding plain hashable values."""
        return {n: s[2] for n, s in self.fields if isinstance(s, tuple) and s[0] == _STATIC}

    def __repr__(self) -> str:
        return (
            f"ModuleDef(type={self.type}, index={self.index}, submodules={self.submodules}, "
            f"static_fields={self.static_fields})"
        )

    @property
    def paths(self) -> frozenset[str]:
        """The State paths this ModuleDef expects (computed once)."""
        paths = self._paths
        if paths is None:
            collected: set[str] = set()
            _collect_paths(self, collected, set())
            paths = frozenset(collected)
            _set_paths(self, paths)
        return paths

    def merge(self, *states: State) -> M:
        """Builds a new Module graph from this structure and `states`.

        The States together must hold exactly this ModuleDef's paths; a path in
        several States takes the last one. The new graph gets its own Variable
        objects, so updating it never changes the States given.

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> class Bias(nnx.Module):
            ...     def __init__(self):
            ...         self.b = nnx.Param(jnp.zeros(2))
            >>> state, moduledef = Bias().partition()
            >>> moduledef.merge(state).b.value.shape
            (2,)
        """
        if not states:
            raise TypeError(
                "ModuleDef.merge needs the State(s) from Module.partition(), e.g. moduledef.merge(state)."
            )
        state = states[0] if len(states) == 1 else State.merge(*states)
        if state.keys() != self.paths:
            _raise_path_mismatch("merge", self.type, self.paths, state)
        variables: dict[str, Variable[tp.Any]] = {}
        for path, variable in state.items():
            if not isinstance(variable, Variable):
                raise TypeError(
                    f"merge: expected a Variable at path {path!r}, found {type(variable).__name__}. "
                    f"States hold Variables; convert Linen-style arrays with nnx.from_variables(...)."
                )
            copy = object.__new__(type(variable))
            copy.__dict__.update(variable.__dict__)
            variables[path] = copy
        return _build_module(self, {}, variables)  # type: ignore[return-value]

    def apply(self, *states: State) -> "Apply[M]":
        """A function running the merged module: ``(out, (state, moduledef))``.

        ``moduledef.apply(state)(*args)`` calls the module;
        ``moduledef.apply(state).method(*args)`` calls another method. The
        given States are left unchanged; the new ones are returned.

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> class Counter(nnx.Module):
            ...     def __init__(self):
            ...         self.n = nnx.Variable("counts", 0)
            ...     def __call__(self):
            ...         self.n.value += 1
            >>> state, moduledef = Counter().partition()
            >>> _, (new_state, _) = moduledef.apply(state)()
            >>> state["n"].value, new_state["n"].value
            (0, 1)
        """
        return Apply(self, states)


_set_type, _set_index, _set_fields, _set_hash, _set_paths = (
    ModuleDef.__dict__[slot].__set__ for slot in ("type", "index", "fields", "_hash", "_paths")
)


class Apply(tp.Generic[M]):
    """What `ModuleDef.apply` returns: call it, or get a method by attribute."""

    __slots__ = ("_moduledef", "_states")

    def __init__(self, moduledef: ModuleDef[M], states: tuple[State, ...]):
        self._moduledef = moduledef
        self._states = states

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tuple[tp.Any, tuple[State, ModuleDef[M]]]:
        module = self._moduledef.merge(*self._states)
        out = module(*args, **kwargs)  # type: ignore[operator]
        return out, module.partition()

    def __getattr__(self, name: str) -> tp.Callable[..., tuple[tp.Any, tuple[State, ModuleDef[M]]]]:
        moduledef = self._moduledef
        if not callable(getattr(moduledef.type, name, None)):
            raise AttributeError(
                f"{moduledef.type.__name__} has no method {name!r} to apply."
            )

        def method(*args: tp.Any, **kwargs: tp.Any) -> tuple[tp.Any, tuple[State, ModuleDef[M]]]:
            module = moduledef.merge(*self._states)
            out = getattr(module, name)(*args, **kwargs)
            return out, module.partition()

        return method


# Bumped on every attribute assignment or deletion on any Module: `nnx_bridge.jit` reuses
# its walk of a module graph while this number is unchanged (see `structure_version`).
_STRUCTURE_VERSION = [0]


def structure_version() -> int:
    """A number that changes whenever an attribute of any Module is set or deleted.

    Example:
        >>> import nnx_bridge as nnx
        >>> from nnx_bridge.module import structure_version
        >>> m, before = nnx.Module(), structure_version()
        >>> m.flag = True
        >>> structure_version() != before
        True
    """
    return _STRUCTURE_VERSION[0]


class Module:
    """Base class of stateful modules: plain Python objects holding Variables.

    Attributes may hold Variables, other Modules, lists/tuples/dicts of those,
    and hashable static values. Arrays must be wrapped in a Variable.

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> class Linear(nnx.Module):
        ...     def __init__(self, din, dout, *, ctx):
        ...         self.w = nnx.Param(jax.random.uniform(ctx.make_rng("params"), (din, dout)))
        ...         self.b = nnx.Param(jnp.zeros((dout,)))
        ...     def __call__(self, x):
        ...         return x @ self.w.value + self.b.value
        >>> state, moduledef = Linear(2, 3, ctx=nnx.Context(0)).partition()
        >>> list(state)
        ['b', 'w']
    """

    def __setattr__(self, name: str, value: tp.Any) -> None:
        _STRUCTURE_VERSION[0] += 1
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        _STRUCTURE_VERSION[0] += 1
        object.__delattr__(self, name)

    def partition(self: M, *filters: filterlib.Filter) -> tp.Any:
        """Splits into ``(state, moduledef)``, or ``(state_1, ..., state_n, moduledef)``.

        With filters, each Variable goes to the State of the first filter that
        matches it; every Variable must be matched (end with ``...`` for the rest).

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> class M(nnx.Module):
            ...     def __init__(self):
            ...         self.w = nnx.Param(jnp.ones(2))
            ...         self.n = nnx.Variable("counts", 0)
            >>> params, counts, moduledef = M().partition("params", "counts")
            >>> list(params), list(counts)
            (['w'], ['n'])
        """
        walker = _Walker()
        moduledef = walker.module(self, "")
        state = State._from_sorted(sorted(walker.variables.items(), key=_item_key))
        if not filters:
            return state, moduledef
        states = state.split(*filters)
        return (*states, moduledef) if isinstance(states, tuple) else (states, moduledef)

    def update_state(self, state: State) -> None:
        """Sets the values of this module's Variables at the paths in `state`, in place.

        Variables shared between several paths stay shared. Paths not in `state`
        keep their values. A path that does not lead to a Variable of this module,
        another collection, or another shape is an error.

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> class M(nnx.Module):
            ...     def __init__(self):
            ...         self.w = nnx.Param(jnp.zeros(2))
            >>> m = M()
            >>> m.update_state(nnx.State({"w": nnx.Param(jnp.ones(2))}))
            >>> m.w.value.tolist()
            [1.0, 1.0]
        """
        for path, new in state.items():
            if not isinstance(new, Variable):
                raise TypeError(
                    f"update_state: expected a Variable at path {path!r}, found "
                    f"{type(new).__name__}. Convert Linen-style arrays with nnx.from_variables(...)."
                )
            target = _variable_at(self, path)
            if new.collection != target.collection:
                raise ValueError(
                    f"update_state: path {path!r} holds a {type(target).__name__} of collection "
                    f"{target.collection!r}, but the State has collection {new.collection!r} there. "
                    f"Load each collection's values into the Variables of that collection."
                )
            have, got = getattr(target.value, "shape", None), getattr(new.value, "shape", None)
            if have is not None and got is not None and tuple(have) != tuple(got):
                raise ValueError(
                    f"update_state: shape mismatch at path {path!r}: the module has "
                    f"{tuple(have)}, the State has {tuple(got)}. Check that the State (or "
                    f"checkpoint) was made for this module's configuration."
                )
            target.value = new.value

    def variable(self, collection: str, name: str, init_fn: tp.Callable[..., tp.Any],
                 *init_args: tp.Any) -> Variable[tp.Any]:
        """The Variable in attribute `name`, created as ``init_fn(*init_args)`` if absent.

        Linen's ``self.variable``: state whose shape comes from the first input
        (a decode cache, data-dependent initialisation) is created on first use.
        Creating is allowed eagerly, in ``moduledef.apply`` and in the Linen
        bridge's ``init``; under the bridge's ``apply`` the Variable must be
        among the variables given. The new Variable is of the collection's type
        (`nnx.variable_type`), e.g. a `Param` for ``"params"``.

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> class Total(nnx.Module):
            ...     def __call__(self, x):
            ...         total = self.variable("stats", "total", jnp.zeros, x.shape[-1:])
            ...         total.value = total.value + x.sum(0)
            ...         return total.value
            >>> m = Total()
            >>> m(jnp.ones((2, 3))).tolist(), m(jnp.ones((1, 3))).tolist()
            ([2.0, 2.0, 2.0], [3.0, 3.0, 3.0])
        """
        existing = self.__dict__.get(name, _ABSENT)
        if existing is _ABSENT:
            variable = phaselib.current().missing(self, collection, name)
            if variable is None:
                variable = make_variable(collection, init_fn(*init_args))
            setattr(self, name, variable)
            phaselib.current().created(self, name)
            return variable
        if not isinstance(existing, Variable):
            raise TypeError(
                f"{type(self).__name__}.variable({collection!r}, {name!r}): attribute {name!r} "
                f"already holds a {type(existing).__name__}, not a Variable. Use another name."
            )
        if existing.collection != collection:
            raise ValueError(
                f"{type(self).__name__}.variable({collection!r}, {name!r}): attribute {name!r} "
                f"holds a Variable of collection {existing.collection!r}, not {collection!r}. Ask "
                f"for the collection it was created in, or use another name."
            )
        phaselib.current().claim(self, name)
        return existing

    def has_variable(self, collection: str, name: str) -> bool:
        """Whether attribute `name` holds a Variable of `collection` (Linen's ``has_variable``).

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> m = nnx.Module()
            >>> m.has_variable("cache", "index")
            False
            >>> _ = m.variable("cache", "index", jnp.zeros, (), jnp.int32)
            >>> m.has_variable("cache", "index"), m.has_variable("params", "index")
            (True, False)
        """
        existing = self.__dict__.get(name)
        return isinstance(existing, Variable) and existing.collection == collection

    def is_initializing(self) -> bool:
        """True while the Linen bridge runs ``init`` (also nested in a Linen parent's init).

        Example:
            >>> import nnx_bridge as nnx
            >>> nnx.Module().is_initializing()
            False
        """
        return phaselib.current().is_initializing()

    def sow(self, collection: str, name: str, value: tp.Any,
            reduce_fn: tp.Callable[[tp.Any, tp.Any], tp.Any] = lambda xs, x: xs + (x,),
            init_fn: tp.Callable[[], tp.Any] = tuple) -> bool:
        """Records `value` in Variable `name` of `collection`, as Linen's ``self.sow``.

        Nothing is recorded, and False returned, when the collection is not mutable
        in this call (the bridge's ``apply`` without ``mutable=[collection]``).
        By default values accumulate in a tuple.

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> class Probe(nnx.Module):
            ...     def __call__(self, x):
            ...         self.sow("intermediates", "h", x * 2)
            ...         return x
            >>> m = Probe()
            >>> _ = m(jnp.ones(2)); _ = m(jnp.ones(2))
            >>> len(m.h.value)
            2
        """
        phase = phaselib.current()
        existing = self.__dict__.get(name, _ABSENT)
        if existing is not _ABSENT:
            phase.claim(self, name)
        if not phase.is_mutable(collection):
            return False
        if existing is _ABSENT:
            existing = make_variable(collection, init_fn())
            setattr(self, name, existing)
            phase.created(self, name)
        elif not isinstance(existing, Variable) or existing.collection != collection:
            raise TypeError(
                f"{type(self).__name__}.sow({collection!r}, {name!r}): attribute {name!r} already "
                f"holds {type(existing).__name__} that is not a Variable of collection "
                f"{collection!r}. Use another name."
            )
        existing.value = reduce_fn(existing.value, value)
        return True


_ABSENT = object()


# ----------------------------------------------------------------------------------
# partition: the walk
# ----------------------------------------------------------------------------------
class _Walker:
    __slots__ = ("module_index", "variable_path", "variables")

    def __init__(self) -> None:
        self.module_index: dict[int, int] = {}
        self.variable_path: dict[int, str] = {}
        self.variables: dict[str, Variable[tp.Any]] = {}

    def module(self, module: "Module", prefix: str) -> ModuleDef[tp.Any] | int:
        index = self.module_index.get(id(module))
        if index is not None:
            return index
        index = len(self.module_index)
        self.module_index[id(module)] = index
        attributes = module.__dict__
        owner = type(module)
        fields = []
        for name in sorted(attributes):
            value = attributes[name]
            value_type = type(value)
            if value_type in _PLAIN_STATIC:
                fields.append((name, (_STATIC, value_type, value)))
            else:
                # A name containing "/" (Linen's "layer_instance/kernel/scale") or the
                # escape "~" is one escaped path segment (nnx_bridge.state.escape_name).
                segment = escape_name(name) if "/" in name or "~" in name else name
                fields.append((name, self.value(value, prefix + segment, owner)))
        return ModuleDef(owner, index, tuple(fields))

    def value(self, value: tp.Any, path: str, owner: type) -> tp.Any:
        value_type = type(value)
        if value_type in _PLAIN_STATIC:
            return (_STATIC, value_type, value)
        if isinstance(value, Module):
            return self.module(value, path + "/")
        if isinstance(value, Variable):
            return self.variable(value, path)
        if value_type is list:
            return (_LIST, tuple(self.value(v, f"{path}/{i}", owner) for i, v in enumerate(value)))
        if value_type is tuple:
            return (_TUPLE, tuple(self.value(v, f"{path}/{i}", owner) for i, v in enumerate(value)))
        if value_type is dict:
            return self.dict(value, path, owner)
        if isinstance(value, tuple) and hasattr(value_type, "_fields"):
            items = tuple(self.value(v, f"{path}/{f}", owner) for f, v in zip(value._fields, value))
            return (_NAMEDTUPLE, value_type, items)
        return _static(value, path, owner)

    def variable(self, variable: Variable[tp.Any], path: str) -> tuple[str, str]:
        first = self.variable_path.get(id(variable))
        if first is not None:
            return (_VAR, first)
        if isinstance(variable.value, Module):
            raise TypeError(
                f"The {type(variable).__name__} at path {path!r} holds a Module "
                f"({type(variable.value).__name__}); Variables hold arrays and other leaf values. "
                f"Assign the Module directly as an attribute instead."
            )
        self.variable_path[id(variable)] = path
        copy = object.__new__(type(variable))
        copy.__dict__.update(variable.__dict__)
        self.variables[path] = copy
        return (_VAR, path)

    def dict(self, value: dict[tp.Any, tp.Any], path: str, owner: type) -> tuple[str, tuple[tp.Any, ...], tuple[tp.Any, ...]]:
        keys = sorted(value, key=str)
        names = [str(k) for k in keys]
        for name in names:
            if not name:
                raise ValueError(
                    f"Dict key {name!r} at path {path!r} is empty; State paths need non-empty "
                    f"names. Use non-empty keys."
                )
        if len(set(names)) != len(names):
            raise ValueError(
                f"Dict at path {path!r} has keys with the same string form ({keys!r}); State paths "
                f"could not tell them apart. Use distinct string keys."
            )
        # A key containing "/" or "~" is one escaped path segment, as attribute names.
        specs = tuple(self.value(value[k], f"{path}/{escape_name(n)}", owner) for k, n in zip(keys, names))
        return (_DICT, tuple(keys), specs)


def _static(value: tp.Any, path: str, owner: type) -> tuple[str, type, tp.Any]:
    if isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(
            f"{owner.__name__} stores an array as a plain attribute at path {path!r} "
            f"(shape {tuple(value.shape)}, dtype {value.dtype}). Arrays must live in Variables: "
            f"wrap it, e.g. nnx.Param(x) or nnx.Variable('constants', x)."
        )
    if isinstance(value, Context):
        raise TypeError(
            f"{owner.__name__} stores a Context at path {path!r}. A Context is for building and "
            f"calling modules only: use it in __init__ (or pass it to __call__) without keeping it."
        )
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"{owner.__name__} has an unhashable static attribute at path {path!r} of type "
            f"{type(value).__name__}. Static attributes become part of the hashable ModuleDef: "
            f"use a hashable value (e.g. a tuple), or wrap the value in a Variable if it is state."
        ) from None
    return (_STATIC, type(value), value)


# ----------------------------------------------------------------------------------
# merge: the inverse walk
# ----------------------------------------------------------------------------------
def _build_module(moduledef: ModuleDef[tp.Any] | int, modules: dict[int, tp.Any],
                  variables: dict[str, Variable[tp.Any]]) -> tp.Any:
    if type(moduledef) is int:
        return modules[moduledef]
    module = object.__new__(moduledef.type)  # type: ignore[union-attr]
    modules[moduledef.index] = module  # type: ignore[union-attr]
    attributes = module.__dict__
    for name, spec in moduledef.fields:  # type: ignore[union-attr]
        if type(spec) is tuple:  # the common leaves inline: this loop runs on every merge
            kind = spec[0]
            if kind == _STATIC:
                attributes[name] = spec[2]
                continue
            if kind == _VAR:
                attributes[name] = variables[spec[1]]
                continue
        attributes[name] = _build_value(spec, modules, variables)
    return module


def _build_value(spec: tp.Any, modules: dict[int, tp.Any], variables: dict[str, Variable[tp.Any]]) -> tp.Any:
    if type(spec) is not tuple:
        return _build_module(spec, modules, variables)
    kind = spec[0]
    if kind == _VAR:
        return variables[spec[1]]
    if kind == _STATIC:
        return spec[2]
    if kind == _LIST:
        return [_build_value(s, modules, variables) for s in spec[1]]
    if kind == _TUPLE:
        return tuple(_build_value(s, modules, variables) for s in spec[1])
    if kind == _NAMEDTUPLE:
        return spec[1](*(_build_value(s, modules, variables) for s in spec[2]))
    return {k: _build_value(s, modules, variables) for k, s in zip(spec[1], spec[2])}


def _collect_paths(spec: tp.Any, paths: set[str], seen: set[int]) -> None:
    if isinstance(spec, ModuleDef):
        if spec.index in seen:
            return
        seen.add(spec.index)
        for _, field in spec.fields:
            _collect_paths(field, paths, seen)
    elif type(spec) is tuple:
        kind = spec[0]
        if kind == _VAR:
            paths.add(spec[1])
        elif kind in (_LIST, _TUPLE):
            for s in spec[1]:
                _collect_paths(s, paths, seen)
        elif kind in (_NAMEDTUPLE, _DICT):
            for s in spec[2]:
                _collect_paths(s, paths, seen)


def _raise_path_mismatch(what: str, module_type: type, expected: frozenset[str], state: State) -> tp.NoReturn:
    missing = sorted(expected - state.keys())
    unknown = sorted(state.keys() - expected)
    parts = []
    if missing:
        parts.append(f"missing path(s) {_listing(missing)}")
    if unknown:
        parts.append(f"unknown path(s) {_listing(unknown)}")
    raise ValueError(
        f"{what}: the State does not fit the {module_type.__name__} ModuleDef: "
        f"{'; '.join(parts)}. Pass the States from this module's partition() "
        f"(all of them, e.g. moduledef.{what}(params, counts)), with no extra paths."
    )


def _listing(paths: list[str]) -> str:
    shown = ", ".join(repr(p) for p in paths[:10])
    return shown + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")


# ----------------------------------------------------------------------------------
# update_state: find the Variable at a path
# ----------------------------------------------------------------------------------
def _variable_at(module: Module, path: str) -> Variable[tp.Any]:
    node: tp.Any = module
    parts = path.split("/")
    for depth, part in enumerate(parts):
        here = _where("/".join(parts[:depth]))
        part = unescape_name(part)  # an escaped segment names an attribute/key with "/" or "~"
        if isinstance(node, Module):
            if part not in vars(node):
                raise _unknown_path(path, f"{type(node).__name__} at {here} has no attribute {part!r}")
            node = vars(node)[part]
        elif isinstance(node, tuple) and hasattr(type(node), "_fields"):
            if part not in node._fields:
                raise _unknown_path(path, f"the {type(node).__name__} at {here} has no field {part!r}")
            node = getattr(node, part)
        elif isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                raise _unknown_path(path, f"the {type(node).__name__} at {here} has no index {part!r}")
            node = node[int(part)]
        elif isinstance(node, dict):
            matches = [k for k in node if str(k) == part]
            if not matches:
                raise _unknown_path(path, f"the dict at {here} has no key {part!r}")
            node = node[matches[0]]
        else:
            raise _unknown_path(path, f"{here} is a {type(node).__name__}, not a Module or container")
    if not isinstance(node, Variable):
        raise _unknown_path(path, f"it holds a {type(node).__name__}, not a Variable")
    return node


def _where(path: str) -> str:
    """How errors name a place in the module graph: its quoted path, or the root."""
    return repr(path) if path else "the root"


class UnknownPathError(KeyError):
    """A State path that does not lead to a Variable of the module."""

    def __str__(self) -> str:
        return str(self.args[0])


def _unknown_path(path: str, reason: str) -> UnknownPathError:
    return UnknownPathError(
        f"update_state: unknown path {path!r}: {reason}. Use the paths from this module's "
        f"partition()."
    )
