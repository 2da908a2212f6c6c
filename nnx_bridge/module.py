"""Module and ModuleDef: stateful Python objects split into (State, ModuleDef) and back.

`Module.partition` walks the object graph in sorted attribute order, puts every
Variable into a State at its first path in State order (``"layers/0/kernel"``)
and records everything else in an immutable, hashable `ModuleDef`: one flat
record per module, so deep graphs need no recursion. Every Variable or Module
reachable from the root is either in the State or an error naming its path.
`ModuleDef.merge` is the exact inverse: it rebuilds the graph, shared submodules
and shared Variables included, from the ModuleDef and a State, checking that each
path holds the Variable type partitioned there.
"""

from __future__ import annotations

import builtins
import gc
import operator
import typing as tp

import numpy as np

from nnx_bridge import filters as filterlib
from nnx_bridge import phase as phaselib
from nnx_bridge import statics
from nnx_bridge.errors import ReadableKeyError, listing
from nnx_bridge.state import State, escape_name, path_sort_key, unescape_name
from nnx_bridge.variables import Variable, make_variable, variable_type

M = tp.TypeVar("M", bound="Module")


class ModuleDef(tp.Generic[M]):
    """The static structure of a Module graph: types, static fields, where Variables go.

    Immutable, equal by structure and hashable (the hash is computed once), so it
    can be a ``static_argnums`` argument of `jax.jit`. It is stored flat (one
    record per module, submodules referred to by index), so hashing, comparing
    and merging never recurse, however deep the graph. It records the type and
    collection of the Variable partitioned at each path, and `merge` checks them.

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

    __slots__ = ("_firsts", "_hash", "_key", "_meta", "_nodes", "_root", "_slotted", "_vars")
    # Slot types, for type checkers (set once by `_make_moduledef` and the cached `_set_*`).
    _nodes: tuple[tp.Any, ...]
    _vars: tuple[tuple[tp.Any, ...], ...]
    _root: int
    _firsts: tuple[tuple[int, tp.Any], ...]
    _slotted: tuple[int, ...]
    _hash: int | None
    _key: tuple[tp.Any, ...] | None
    _meta: dict[str, tuple[int, builtins.type[Variable[tp.Any]], str]] | None

    def __setattr__(self, name: str, value: tp.Any) -> None:
        raise AttributeError(f"ModuleDef is immutable; cannot set {name!r}.")

    @property
    def type(self) -> builtins.type[M]:
        """The class of the module this ModuleDef builds."""
        return self._nodes[self._root][0]

    @property
    def index(self) -> int:
        """The module's index in its graph (0 for the root, in walk order)."""
        return self._root

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash(self._structure())
            _set_hash(self, h)
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ModuleDef) or hash(self) != hash(other):
            return False
        return self._structure() == other._structure()

    def __reduce__(self) -> tuple[tp.Any, ...]:
        return (_make_moduledef, (self._nodes, self._vars, self._root, self._firsts, self._slotted))

    def _structure(self) -> tuple[tp.Any, ...]:
        """What equality and the hash compare: every reachable record, static types included."""
        key = self._key
        if key is None:
            nodes = self._nodes
            order = _reachable(nodes, self._root)
            numbers = {number for number, _, _ in self._meta_map().values()}
            key = (
                self._root,
                tuple(_record_key(nodes[i]) for i in order),
                self._vars
                if self._root == 0
                else tuple(v for n, v in enumerate(zip(*self._vars, strict=True)) if n in numbers),
            )
            _set_key(self, key)
        return key

    def _meta_map(self) -> dict[str, tuple[int, builtins.type[Variable[tp.Any]], str]]:
        """``path -> (number, Variable type, collection)`` of every Variable this ModuleDef places."""
        meta = self._meta
        if meta is None:
            variables = list(zip(*self._vars, strict=True))
            if self._root == 0:
                meta = {path: (n, t, c) for n, (path, t, c) in enumerate(variables)}
            else:
                wanted: set[int] = set()
                for i in _reachable(self._nodes, self._root):
                    _record_numbers(self._nodes[i], wanted)
                meta = {variables[n][0]: (n, *variables[n][1:]) for n in sorted(wanted)}
            _set_meta(self, meta)
        return meta

    @property
    def submodules(self) -> dict[str, "ModuleDef[tp.Any]" | int]:
        """Attributes holding a Module: a ModuleDef where it was first seen, else its index."""
        out: dict[str, ModuleDef[tp.Any] | int] = {}
        for name, index in self._nodes[self._root][3]:
            first = self._firsts[index] == (self._root, name)
            out[name] = (
                _make_moduledef(self._nodes, self._vars, index, self._firsts, self._slotted)
                if first
                else index
            )
        return dict(sorted(out.items()))

    @property
    def static_fields(self) -> dict[str, tp.Any]:
        """Attributes holding plain hashable values."""
        return dict(self._nodes[self._root][1])

    def __repr__(self) -> str:
        # Built bottom-up over the tree of first occurrences (no recursion for deep chains).
        nodes, firsts, root = self._nodes, self._firsts, self._root
        owned: dict[int, list[int]] = {}
        for i in _reachable(nodes, root):
            if i != root:
                owned.setdefault(firsts[i][0], []).append(i)
        order, stack = [], [root]
        while stack:
            i = stack.pop()
            order.append(i)
            stack.extend(owned.get(i, ()))
        shown: dict[int, str] = {}
        for i in reversed(order):  # children before their parents
            cls, statics_, _, modules, _ = nodes[i]
            subs = ", ".join(
                f"{name!r}: {shown[index] if index != root and firsts[index] == (i, name) else index}"
                for name, index in sorted(modules)
            )
            shown[i] = (
                f"ModuleDef(type={cls}, index={i}, submodules={{{subs}}}, static_fields={dict(statics_)})"
            )
        return shown[root]

    @property
    def paths(self) -> frozenset[str]:
        """The State paths this ModuleDef expects (computed once)."""
        return frozenset(self._meta_map())

    def merge(self, *states: State) -> M:
        """Builds a new Module graph from this structure and `states`.

        The States together must hold exactly this ModuleDef's paths; a path in
        several States takes the last one. Each path must hold a Variable of the
        type and collection partitioned there (a plain ``Variable`` and its
        collection's own type, e.g. `Param` for ``"params"``, stand for each
        other). The new graph gets its own Variable objects, so updating it never
        changes the States given.

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> class Bias(nnx.Module):
            ...     def __init__(self):
            ...         self.b = nnx.Param(jnp.zeros(2))
            >>> state, moduledef = Bias().partition()
            >>> moduledef.merge(state).b.value.shape
            (2,)
        """
        return _without_gc(self._merge, states)

    def _merge(self, states: tuple[State, ...]) -> M:
        if not states:
            raise TypeError(
                "ModuleDef.merge needs the State(s) from Module.partition(), e.g. moduledef.merge(state)."
            )
        state = states[0] if len(states) == 1 else State.merge(*states)
        meta = self._meta_map()
        if not isinstance(state, dict) or state.keys() != meta.keys():
            if not isinstance(state, dict):
                raise TypeError(
                    f"merge: expected a State (from Module.partition()), found {type(state).__name__}."
                )
            _raise_path_mismatch("merge", self.type, frozenset(meta), state)
        variables: list[tp.Any] = [None] * len(self._vars[0])
        for path, variable in state.items():
            number, expected, collection = meta[path]
            if type(variable) is not expected or variable.collection != collection:
                _check_merged(path, variable, expected, collection)
            variables[number] = variable.copy()
        return _build(self._nodes, self._root, self._slotted, variables)

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


_set_nodes, _set_vars, _set_root, _set_firsts, _set_slotted, _set_hash, _set_key, _set_meta = (
    ModuleDef.__dict__[slot].__set__
    for slot in ("_nodes", "_vars", "_root", "_firsts", "_slotted", "_hash", "_key", "_meta")
)


def _make_moduledef(
    nodes: tuple[tp.Any, ...],
    variables: tuple[tuple[tp.Any, ...], ...],
    root: int,
    firsts: tuple[tuple[int, tp.Any], ...],
    slotted: tuple[int, ...],
) -> ModuleDef[tp.Any]:
    moduledef = object.__new__(ModuleDef)
    _set_nodes(moduledef, nodes)
    _set_vars(moduledef, variables)
    _set_root(moduledef, root)
    _set_firsts(moduledef, firsts)
    _set_slotted(moduledef, slotted)
    _set_hash(moduledef, None)
    _set_key(moduledef, None)
    _set_meta(moduledef, None)
    return moduledef


def _check_merged(path: str, variable: tp.Any, expected: type, collection: str) -> None:
    """Accepts a Variable standing for the one partitioned at `path`; raises otherwise."""
    if not isinstance(variable, Variable):
        raise TypeError(
            f"merge: expected a Variable at path {path!r}, found {type(variable).__name__}. "
            f"States hold Variables; convert Linen-style arrays with nnx.from_variables(...)."
        )
    found = type(variable)
    if (
        variable.collection == collection
        and Variable in (found, expected)
        and (variable_type(collection) in (found, expected))
    ):
        return
    raise TypeError(
        f"merge: path {path!r} was partitioned as a {expected.__name__} of collection "
        f"{collection!r}, but the State holds a {found.__name__} of collection "
        f"{variable.collection!r} there. Merge the State this module's partition() produced "
        f"(or a State of the same Variable types, e.g. restored from its checkpoint)."
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
            raise AttributeError(f"{moduledef.type.__name__} has no method {name!r} to apply.")

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

    @tp.overload
    def partition(self: M) -> tuple[State, ModuleDef[M]]: ...

    @tp.overload
    def partition(self: M, filter: filterlib.Filter, /) -> tuple[State, ModuleDef[M]]: ...

    @tp.overload
    def partition(
        self: M, first: filterlib.Filter, second: filterlib.Filter, /
    ) -> tuple[State, State, ModuleDef[M]]: ...

    @tp.overload
    def partition(
        self: M, first: filterlib.Filter, second: filterlib.Filter, third: filterlib.Filter, /
    ) -> tuple[State, State, State, ModuleDef[M]]: ...

    @tp.overload
    def partition(
        self: M,
        first: filterlib.Filter,
        second: filterlib.Filter,
        third: filterlib.Filter,
        fourth: filterlib.Filter,
        /,
        *filters: filterlib.Filter,
    ) -> tuple[State | ModuleDef[M], ...]: ...

    def partition(self: M, *filters: filterlib.Filter) -> tuple[State | ModuleDef[M], ...]:
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
        state: State
        moduledef: ModuleDef[M]
        state, moduledef = _without_gc(_partition, self)
        if not filters:
            return state, moduledef
        states = state.split(*filters)
        return (*states, moduledef) if isinstance(states, tuple) else (states, moduledef)

    def update_state(self, state: State) -> None:
        """Sets the values of this module's Variables at the paths in `state`, in place.

        A partial update is allowed: `state` may hold any subset of the paths
        (paths it lacks keep their values), and a Variable shared between several
        paths may be addressed by any of them; it stays shared. Every path given
        must lead to a Variable of this module of the same collection, and the new
        value must have the Variable's shape and, when the current value is an
        array, its dtype; otherwise nothing is changed and the error names the path.

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
        _without_gc(self._update_state, state)

    def _update_state(self, state: State) -> None:
        walk = _Walk(copy=False)
        walk.run(self)
        targets = dict(zip(walk.var_paths, walk.var_values, strict=True))
        updates = []
        for path, new in state.items():
            if not isinstance(new, Variable):
                raise TypeError(
                    f"update_state: expected a Variable at path {path!r}, found "
                    f"{type(new).__name__}. Convert Linen-style arrays with nnx.from_variables(...)."
                )
            target = targets.get(path)
            if target is None:
                target = _variable_at(self, path)
            _check_update(path, target, new)
            updates.append((target, new.value))
        for target, value in updates:
            target.value = value

    def variable(
        self, collection: str, name: str, init_fn: tp.Callable[..., tp.Any], *init_args: tp.Any
    ) -> Variable[tp.Any]:
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

    def sow(
        self,
        collection: str,
        name: str,
        value: tp.Any,
        reduce_fn: tp.Callable[[tp.Any, tp.Any], tp.Any] = lambda xs, x: xs + (x,),
        init_fn: tp.Callable[[], tp.Any] = tuple,
    ) -> bool:
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
# partition: the walk (iterative: a stack of modules, never recursion)
# ----------------------------------------------------------------------------------
# A ModuleDef is a tuple of records, one per module, in index order (the four
# collections are lists or tuples; never changed once made):
#   (type, statics, variables, modules, others)
#     statics    ((name, value), ...)          hashable static fields
#     variables  ((name, number), ...)         the Variable of that number (its path: the
#                                              ModuleDef's variable table)
#     modules    ((name, index), ...)          the module of that index
#     others     ((name, spec), ...)           containers, as specs:
#                (_LIST | _TUPLE, items) | (_NAMEDTUPLE, type, items) | (_DICT, keys, items)
#                with items (_STATIC, value, type) | (_VAR, number) | (_MOD, index) | a container
_STATIC, _VAR, _MOD, _LIST, _TUPLE, _NAMEDTUPLE, _DICT = range(7)
_CONTAINER_TAG = {statics.LIST: _LIST, statics.TUPLE: _TUPLE}


def check_segment(name: str, owner: type | None, where: str) -> None:
    """Rejects an attribute name or dict key that cannot be one State path segment.

    The one place that decides which names a path segment may be: any non-empty
    name. A name holding "/" or "~" (Linen's ``"layer_instance/kernel/scale"``)
    becomes one escaped segment (`segment`). `owner` is the Module class of an
    attribute (None for a dict key) and `where` the path of that Module (or of the
    dict), for the message.
    """
    if not name:
        if owner is not None:
            raise ValueError(
                f"{owner.__name__} at {_where(where.rstrip('/'))} has an attribute with an empty "
                f"name; State paths need non-empty names. Rename the attribute."
            )
        raise ValueError(
            f"Dict key {name!r} at path {where!r} is empty; State paths need non-empty names. "
            f"Use non-empty keys."
        )


def segment(name: str) -> str:
    """The State path segment of an attribute name or dict key: escaped if it holds "/" or "~"."""
    return escape_name(name) if "/" in name or "~" in name else name


def _needs_escape(names: tp.Iterable[str]) -> bool:
    return any("/" in name or "~" in name for name in names)


def _unescape_record(record: tuple[tp.Any, ...]) -> tuple[tp.Any, ...]:
    """A record built from escaped attribute names, with the attributes' own names back."""
    cls, statics_, variables, modules, others = record
    real = [[(unescape_name(name), ref) for name, ref in fields] for fields in (statics_, variables)]
    return (
        cls,
        real[0],
        real[1],
        tuple((unescape_name(n), r) for n, r in modules),
        tuple((unescape_name(n), r) for n, r in others),
    )


class _Walk:
    """One partition walk: records, Variables by path, and what merge needs to rebuild."""

    __slots__ = (
        "containers",
        "copy",
        "firsts",
        "last",
        "module_index",
        "modules",
        "nodes",
        "owner",
        "paths",
        "pending",
        "reorder",
        "shuffled",
        "slotted",
        "unsorted",
        "var_number",
        "var_paths",
        "var_values",
    )

    def __init__(self, copy: bool, objects: bool = False) -> None:
        self.nodes: list[tp.Any] = []  # one record per module, by index
        self.firsts: list[tuple[int, tp.Any]] = []  # (parent index, attribute) where each module was found
        self.paths: list[str] = []  # the path each module was found at, plus "/" ("" for the root)
        self.slotted: list[int] = []
        # Each Variable found, by number: its path, and the Variable (or its copy).
        self.var_paths: list[str] = []
        self.var_values: list[Variable[tp.Any]] = []
        self.var_number: dict[int, int] = {}
        self.module_index: dict[int, int] = {}
        self.pending: list[tuple[tp.Any, ...]] = []  # the current module's new submodules
        self.shuffled = False  # they were not found in State order (a long list, a namedtuple)
        self.unsorted = False  # Variables were not found in State order: sort them
        self.reorder = False  # something was found again at a smaller path: recompute the paths
        self.last = ""
        self.copy = copy
        self.owner: type = object
        # With `objects` (graph.walk): every Module in walk order with its path prefix, every
        # list and dict with its items.
        self.modules: list[tuple[Module, str]] | None = [] if objects else None
        self.containers: list[tuple[tp.Any, tuple[tp.Any, ...]]] | None = [] if objects else None

    # Paths are compared as plain strings while walking. That is State order (which
    # compares part by part) as long as no part holds a character sorting before
    # "/"; names that do (possible as dict keys or setattr names) mark the walk
    # `unsorted`, and every sort and comparison that decides a result uses `_sort_key`.

    def run(self, root: "Module") -> None:
        """Walks the graph from `root`: a stack of modules, each processed once, in State order."""
        # The hot loop: one pass over each module's attributes, new Variables and
        # plain static values handled inline; containers and errors go to helpers.
        nodes, module_index, var_number = self.nodes, self.module_index, self.var_number
        add_path, add_value = self.var_paths.append, self.var_values.append
        kinds, kind_of, copy_variables, new = _KINDS_GET, statics.kind_of, self.copy, object.__new__
        plain, variable_types = _PLAIN_TYPES, statics.VARIABLE_TYPES
        module_index[id(root)] = 0
        nodes.append(None)
        self.firsts.append((-1, None))
        self.paths.append("")
        stack = [(root, "", 0)]
        last, unsorted = "", False
        children, found_modules = self.pending, self.modules
        while stack:
            module, prefix, index = stack.pop()
            if found_modules is not None:
                found_modules.append((module, prefix))
            cls = type(module)
            attributes = module.__dict__
            names = _SORTED_NAMES_GET((cls, *attributes))  # None: new names, or slots to read
            escaped = False
            if names is None:
                slots = _slot_names(cls)
                if slots:
                    attributes = _with_slots(module, attributes, slots, prefix)
                    self.slotted.append(index)
                if _needs_escape(attributes):  # rare: walk by path segments, record the real names
                    attributes = {segment(name): value for name, value in attributes.items()}
                    escaped = unsorted = True
                names = _sorted_names(attributes, cls, prefix, cache=not slots and not escaped)
                if _odd(names):
                    unsorted = True
            statics_, variables = [], []
            modules = others = None
            for name in names:
                value = attributes[name]
                value_type = type(value)
                if value_type in plain:
                    statics_.append((name, value))
                    continue
                if value_type in variable_types:
                    vid = id(value)
                    path = prefix + name
                    if vid not in var_number:  # a new Variable (its value is checked after the walk)
                        number = var_number[vid] = len(var_number)
                        if copy_variables:  # Variable.copy() inlined: this loop is the measured hot path
                            copy = new(value_type)
                            copy.__dict__ = value.__dict__.copy()
                            value = copy
                        if path < last:
                            unsorted = True
                        last = path
                        add_path(path)
                        add_value(value)
                    else:  # shared, or a value type not seen yet: the checked way
                        self.last, self.unsorted = last, unsorted
                        number = self.variable(value, path)
                        last, unsorted = self.last, self.unsorted
                    variables.append((name, number))
                    continue
                kind = kinds(value_type)
                if kind is None:
                    kind = kind_of(value_type, Module)
                if kind == 1:  # VARIABLE of a type met for the first time
                    self.last, self.unsorted = last, unsorted
                    variables.append((name, self.variable(value, prefix + name)))
                    last, unsorted = self.last, self.unsorted
                elif kind == 0 or kind == 7:  # PLAIN, ATOMIC
                    statics_.append((name, value))
                elif kind == 2:  # MODULE
                    if modules is None:
                        modules = []
                    modules.append((name, self.module(value, prefix + name, index, name)))
                elif kind == 8:  # SCAN
                    statics.check_static(value, prefix + name, cls, Module)
                    statics_.append((name, value))
                else:
                    if others is None:
                        others = []
                    self.last, self.unsorted, self.owner = last, unsorted, cls
                    try:
                        others.append((name, self.container(value, kind, prefix + name, index, {})))
                    except RecursionError:
                        raise ValueError(
                            f"partition: the containers at path {prefix + name!r} are nested hundreds of "
                            f"levels deep (lists/tuples/dicts inside each other). Containers are walked "
                            f"recursively; Modules are not: hold the deeper levels in Modules (a chain "
                            f"of Modules may be as deep as you like)."
                        ) from None
                    last, unsorted = self.last, self.unsorted
            # Lists as built (cheaper than copies); `_record_key` gives the hashable form.
            nodes[index] = (cls, statics_, variables, modules or (), others or ())
            if escaped:
                nodes[index] = _unescape_record(nodes[index])
            if children:
                if self.shuffled:
                    children.sort(key=_prefix_key)
                    self.shuffled = False
                children.reverse()
                stack.extend(children)
                children.clear()
        self.last, self.unsorted = last, unsorted
        if not _NOT_MODULE.issuperset(map(type, map(_value, self.var_values))):
            for path, variable in zip(self.var_paths, self.var_values, strict=True):  # a value of a new type
                _check_variable_value(variable, path)
        if self.reorder:
            self.exact_paths()

    def variable(self, variable: Variable[tp.Any], path: str) -> int:
        number = self.var_number.get(id(variable))
        if number is not None:
            if _sort_key(path) < _sort_key(self.var_paths[number]):
                self.reorder = True
            return number
        _check_variable_value(variable, path)
        number = self.var_number[id(variable)] = len(self.var_number)
        if self.copy:
            variable = variable.copy()
        if path < self.last:
            self.unsorted = True
        self.last = path
        self.var_paths.append(path)
        self.var_values.append(variable)
        return number

    def module(self, module: "Module", path: str, parent: int, field: tp.Any) -> int:
        index = self.module_index.get(id(module))
        if index is None:
            index = len(self.nodes)
            self.module_index[id(module)] = index
            self.nodes.append(None)
            self.firsts.append((parent, field))
            prefix = path + "/"
            self.paths.append(prefix)
            self.pending.append((module, prefix, index))
        elif _sort_key(path + "/") < _sort_key(self.paths[index]):
            self.reorder = True
        return index

    def exact_paths(self) -> None:
        """Recomputes every path as the smallest one (a walk of the records in State order)."""
        nodes, found, paths = self.nodes, [False] * len(self.var_paths), list(self.var_paths)
        firsts: list[tuple[int, tp.Any]] = [(-1, None)] * len(nodes)
        seen = {0}
        stack = [_entries(nodes[0], "", 0)]
        while stack:
            for kind, ref, path, parent, field in stack[-1]:
                if kind == _VAR:
                    if not found[ref]:
                        found[ref] = True
                        paths[ref] = path
                elif ref not in seen:
                    seen.add(ref)
                    firsts[ref] = (parent, field)
                    stack.append(_entries(nodes[ref], path + "/", ref))
                    break
            else:
                stack.pop()
        self.firsts = firsts
        self.var_paths = paths
        self.unsorted = True

    def container(
        self, value: tp.Any, kind: int, path: str, parent: int, active: dict[int, tp.Any]
    ) -> tuple[tp.Any, ...]:
        if id(value) in active:
            raise ValueError(
                f"partition: the {type(value).__name__} at path {path!r} contains itself (a container "
                f"cycle), so it has no finite State path. Break the cycle; Modules may refer to each "
                f"other (and to themselves), containers may not."
            )
        active[id(value)] = value
        if self.containers is not None:
            if type(value) is list:
                self.containers.append((value, tuple(value)))
            elif type(value) is dict:
                self.containers.append((value, tuple(value.items())))
        if kind == statics.DICT:
            keys = sorted(value, key=str)
            names = [str(k) for k in keys]
            for name in names:
                check_segment(name, None, path)
            if len(set(names)) != len(names):
                raise ValueError(
                    f"Dict at path {path!r} has keys with the same string form ({keys!r}); State paths "
                    f"could not tell them apart. Use distinct string keys."
                )
            if _odd(names):
                self.unsorted = self.shuffled = True
            for k in keys:
                _check_dict_key(k, path, self.owner)
            items = tuple(
                [
                    self.item(value[k], f"{path}/{segment(n)}", parent, active)
                    for k, n in zip(keys, names, strict=True)
                ]
            )
            spec: tuple[tp.Any, ...] = (_DICT, tuple(keys), items)
        elif kind == statics.NAMEDTUPLE:
            self.shuffled = True
            items = tuple(
                [
                    self.item(v, f"{path}/{f}", parent, active)
                    for f, v in zip(value._fields, value, strict=True)
                ]
            )
            spec = (_NAMEDTUPLE, type(value), items)
        else:
            path += "/"
            found, module_index, module_types, nodes = [], self.module_index, statics.MODULE_TYPES, self.nodes
            firsts, paths, pending = self.firsts, self.paths, self.pending
            if len(value) > 10:
                self.shuffled = True
            mod, first = _MOD, (parent, None)
            for i, v in zip(_index_names(len(value)), value, strict=True):
                if type(v) in module_types and (vid := id(v)) not in module_index:  # a new Module, inline
                    index = module_index[vid] = len(nodes)
                    nodes.append(None)
                    firsts.append(first)
                    prefix = f"{path}{i}/"
                    paths.append(prefix)
                    pending.append((v, prefix, index))
                    found.append((mod, index))
                else:
                    found.append(self.item(v, path + i, parent, active))
            items = tuple(found)
            spec = (_CONTAINER_TAG[kind], items)
        del active[id(value)]
        return spec

    def item(self, value: tp.Any, path: str, parent: int, active: dict[int, tp.Any]) -> tp.Any:
        kind = _KINDS_GET(type(value))
        if kind is None:
            kind = statics.kind_of(type(value), Module)
        if kind == _PLAIN:
            return (_STATIC, value, type(value))
        if kind == _VARIABLE:
            return (_VAR, self.variable(value, path))
        if kind == _MODULE:
            return (_MOD, self.module(value, path, parent, None))
        if kind == _SCAN:
            statics.check_static(value, path, self.owner, Module)
        if kind >= _ATOMIC:
            return (_STATIC, value, type(value))
        return self.container(value, kind, path, parent, active)

    def state(self) -> State:
        paths, values = self.var_paths, self.var_values
        if not self.unsorted:
            return State.from_sorted(zip(paths, values, strict=True))
        order = sorted(range(len(paths)), key=lambda i: _sort_key(paths[i]))
        return State.from_sorted([(paths[i], values[i]) for i in order])

    def moduledef(self) -> ModuleDef[tp.Any]:
        values = self.var_values
        variables = (tuple(self.var_paths), tuple(map(type, values)), tuple(map(_collection, values)))
        return _make_moduledef(tuple(self.nodes), variables, 0, tuple(self.firsts), tuple(self.slotted))


def _check_variable_value(variable: Variable[tp.Any], path: str) -> None:
    """Raises for a Variable holding a Module; remembers value types that are not Modules."""
    if isinstance(variable.value, Module):
        raise TypeError(
            f"The {type(variable).__name__} at path {path!r} holds a Module "
            f"({type(variable.value).__name__}); Variables hold arrays and other leaf values. "
            f"Assign the Module directly as an attribute instead."
        )
    _NOT_MODULE.add(type(variable.value))


def _check_dict_key(key: tp.Any, path: str, owner: type) -> None:
    """Dict keys are kept as they are (part of the ModuleDef): they may not be or hide state."""
    if type(key) in (str, int):
        return
    if isinstance(key, (Variable, Module)):
        raise TypeError(
            f"The dict at path {path!r} has a {type(key).__name__} as a key. Keys are kept as static "
            f"parts of the ModuleDef, so it would be neither in the State nor trained nor saved. Key "
            f"the dict by names (str) and hold the {type(key).__name__} as a value."
        )
    statics.check_static(key, f"{path}[{key!r}]", owner, Module)


def _sort_key(path: str) -> str:
    """State order of paths as plain string order: the separator sorts before every character."""
    if "~" in path:  # escaped segments sort by the names they stand for
        return path_sort_key(path)
    return path.replace("/", "\0")


def _prefix_key(pending: tuple[tp.Any, ...]) -> str:
    return _sort_key(pending[1])


def _odd(names: tp.Iterable[str]) -> bool:
    """Whether a name holds a character sorting before "/" (then "/"-joined paths do not sort
    in State order)."""
    return any(min(name, default="0") < "/" for name in names)


def _entries(record: tuple[tp.Any, ...], prefix: str, index: int) -> tp.Iterator[tuple[tp.Any, ...]]:
    """A record's Variables and modules as ``(kind, ref, path, index, field)``, in State order."""
    fields: list[tuple[str, int | None, tp.Any]] = [(name, _VAR, number) for name, number in record[2]]
    fields += [(name, _MOD, ref) for name, ref in record[3]]
    fields += [(name, None, spec) for name, spec in record[4]]
    for name, kind, ref in sorted(fields, key=_first):
        if kind is not None:
            yield kind, ref, prefix + segment(name), index, name
            continue
        stack = [(prefix + segment(name), ref)]  # containers, depth first, items in State order
        while stack:
            path, spec = stack.pop()
            if spec[0] in (_VAR, _MOD):
                yield spec[0], spec[1], path, index, None
            elif spec[0] != _STATIC:
                if spec[0] == _DICT:
                    names = [str(k) for k in spec[1]]
                elif spec[0] == _NAMEDTUPLE:
                    names = list(spec[1]._fields)
                else:
                    names = [str(i) for i in range(len(spec[1]))]
                children = sorted(zip(names, _spec_children(spec), strict=True), key=_first, reverse=True)
                stack.extend((f"{path}/{segment(n)}", child) for n, child in children)


def graph_objects(
    root: "Module",
) -> tuple[State, list[tuple["Module", str]], list[tuple[tp.Any, tuple[tp.Any, ...]]]]:
    """Partition's walk without copies: the Variables themselves, the Modules and the containers.

    The State holds `root`'s own Variable objects at the paths `partition` gives
    them; the Modules come in walk order (the root first), each with the path
    prefix where the walk found it (``""`` for the root, else ending in ``"/"``);
    every list and dict met comes with a snapshot of its items.
    `nnx_bridge.graph.walk` is built on it.

    Example:
        >>> import nnx_bridge as nnx
        >>> from nnx_bridge.module import graph_objects
        >>> layer = nnx.Linear(2, 2, ctx=nnx.Context(0))
        >>> state, modules, containers = graph_objects(layer)
        >>> state["kernel"] is layer.kernel, modules == [(layer, "")], containers
        (True, True, [])
    """
    walk = _Walk(copy=False, objects=True)
    _without_gc(walk.run, root)
    assert walk.modules is not None and walk.containers is not None
    return walk.state(), walk.modules, walk.containers


def _partition(module: "Module") -> tuple[State, ModuleDef[tp.Any]]:
    walk = _Walk(copy=True)
    walk.run(module)
    return walk.state(), walk.moduledef()


def _without_gc(function: tp.Callable[..., tp.Any], *args: tp.Any) -> tp.Any:
    """Runs `function` with Python's cyclic garbage collector paused (and restored after).

    Partition and merge create many objects and no garbage cycles; without the
    pause, collections triggered by those allocations scan the whole heap over and
    over, which costs more than the walk itself in graphs of 100,000 Variables.
    """
    if not gc.isenabled():
        return function(*args)
    gc.disable()
    try:
        return function(*args)
    finally:
        gc.enable()


_KINDS_GET = statics._KINDS.get
_PLAIN_TYPES = frozenset({int, float, bool, str, bytes, complex, type(None)})
# Types of Variable values seen so far that are not Modules (their Variables need no check).
_NOT_MODULE: set[type] = set()
_SORTED_NAMES: dict[tuple[tp.Any, ...], tuple[str, ...]] = {}  # (class, *names in dict order)
_SORTED_NAMES_GET = _SORTED_NAMES.get


_INDEX_NAMES: list[str] = [str(i) for i in range(256)]


def _index_names(n: int) -> list[str]:
    """``["0", "1", ..., str(n - 1)]``, the path segments of a list's items (cached)."""
    while len(_INDEX_NAMES) < n:
        _INDEX_NAMES.append(str(len(_INDEX_NAMES)))
    return _INDEX_NAMES[:n] if n < len(_INDEX_NAMES) else _INDEX_NAMES


def _sorted_names(attributes: dict[str, tp.Any], owner: type, prefix: str, cache: bool) -> tuple[str, ...]:
    """The attribute names in walk order, checked as path segments once per class and names.

    Not cached for classes with slots (their slots are read each time) nor for
    names sorting before "/" (which need the walk's attention each time).
    """
    names = tuple(sorted(attributes))
    for name in names:
        check_segment(name, owner, prefix)
    if cache and len(_SORTED_NAMES) < 10_000 and not _odd(names):
        _SORTED_NAMES[(owner, *attributes)] = names
    return names


_PLAIN, _VARIABLE, _MODULE, _ATOMIC, _SCAN = (
    statics.PLAIN,
    statics.VARIABLE,
    statics.MODULE,
    statics.ATOMIC,
    statics.SCAN,
)
_first = operator.itemgetter(0)
_collection = operator.attrgetter("collection")
_value = operator.attrgetter("value")


_SLOTS: dict[type, tuple[str, ...]] = {}


def _slot_names(cls: type) -> tuple[str, ...]:
    """The ``__slots__`` attribute names of a Module class (usually none), cached."""
    names = _SLOTS.get(cls)
    if names is None:
        found: list[str] = []
        for klass in cls.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in ("__dict__", "__weakref__") and name not in found:
                    found.append(name)
        names = _SLOTS[cls] = tuple(found)
    return names


def _with_slots(
    module: "Module", attributes: dict[str, tp.Any], slots: tuple[str, ...], prefix: str
) -> dict[str, tp.Any]:
    merged = dict(attributes)
    for name in slots:
        if name in merged:
            raise ValueError(
                f"{type(module).__name__} at {_where(prefix.rstrip('/'))} has {name!r} both as a "
                f"slot and in its __dict__. Keep one of them."
            )
        try:
            merged[name] = object.__getattribute__(module, name)
        except AttributeError:
            continue
    return merged


# ----------------------------------------------------------------------------------
# merge: the inverse walk (every module is created first, then filled in: no recursion)
# ----------------------------------------------------------------------------------
def _build(nodes: tuple[tp.Any, ...], root: int, slotted: tuple[int, ...], variables: tp.Any) -> tp.Any:
    new = object.__new__
    if root == 0:
        modules: tp.Any = [new(record[0]) for record in nodes]
        order: tp.Iterable[int] = range(len(nodes))
    else:
        order = _reachable(nodes, root)
        modules = {i: new(nodes[i][0]) for i in order}
    for i in order:
        _, statics_, variable_fields, module_fields, others = nodes[i]
        attributes = modules[i].__dict__
        if statics_:
            attributes.update(statics_)
        for name, number in variable_fields:
            attributes[name] = variables[number]
        for name, index in module_fields:
            attributes[name] = modules[index]
        for name, spec in others:
            attributes[name] = _build_spec(spec, modules, variables)
    for i in slotted:
        if i in order:
            module = modules[i]
            attributes = module.__dict__
            for name in _slot_names(type(module)):
                if name in attributes:
                    object.__setattr__(module, name, attributes.pop(name))
    return modules[root]


def _build_spec(spec: tuple[tp.Any, ...], modules: tp.Any, variables: tp.Any) -> tp.Any:
    kind = spec[0]
    if kind == _STATIC:
        return spec[1]
    if kind == _VAR:
        return variables[spec[1]]
    if kind == _MOD:
        return modules[spec[1]]
    if kind == _LIST:
        return [_build_spec(s, modules, variables) for s in spec[1]]
    if kind == _TUPLE:
        return tuple(_build_spec(s, modules, variables) for s in spec[1])
    if kind == _NAMEDTUPLE:
        return spec[1](*(_build_spec(s, modules, variables) for s in spec[2]))
    return {k: _build_spec(s, modules, variables) for k, s in zip(spec[1], spec[2], strict=True)}


def _spec_children(spec: tuple[tp.Any, ...]) -> tuple[tp.Any, ...]:
    kind = spec[0]
    if kind in (_LIST, _TUPLE):
        return spec[1]
    if kind in (_NAMEDTUPLE, _DICT):
        return spec[2]
    return ()


def _record_specs(record: tuple[tp.Any, ...]) -> tp.Iterator[tuple[tp.Any, ...]]:
    """Every container item spec of a record (iteratively)."""
    stack = [spec for _, spec in record[4]]
    while stack:
        spec = stack.pop()
        yield spec
        stack.extend(_spec_children(spec))


def _reachable(nodes: tuple[tp.Any, ...], root: int) -> list[int]:
    """The indices of the modules reachable from `root`, in increasing order."""
    if root == 0:
        return list(range(len(nodes)))
    seen = {root}
    stack = [root]
    while stack:
        record = nodes[stack.pop()]
        refs = [index for _, index in record[3]]
        refs += [spec[1] for spec in _record_specs(record) if spec[0] == _MOD]
        for index in refs:
            if index not in seen:
                seen.add(index)
                stack.append(index)
    return sorted(seen)


def _record_numbers(record: tuple[tp.Any, ...], numbers: set[int]) -> None:
    numbers.update(number for _, number in record[2])
    numbers.update(spec[1] for spec in _record_specs(record) if spec[0] == _VAR)


def _record_key(record: tuple[tp.Any, ...]) -> tuple[tp.Any, ...]:
    """A record with the types of its static values, so that ``1``, ``1.0`` and ``True`` differ."""
    cls, statics_, variables, modules, others = record
    return (
        cls,
        tuple(statics_),
        tuple(variables),
        tuple(modules),
        tuple(others),
        tuple(type(value) for _, value in statics_),
    )


def _raise_path_mismatch(what: str, module_type: type, expected: frozenset[str], state: State) -> tp.NoReturn:
    missing = sorted(expected - state.keys())
    unknown = sorted(state.keys() - expected)
    parts = []
    if missing:
        parts.append(f"missing path(s) {listing(missing)}")
    if unknown:
        parts.append(f"unknown path(s) {listing(unknown)}")
    raise ValueError(
        f"{what}: the State does not fit the {module_type.__name__} ModuleDef: "
        f"{'; '.join(parts)}. Pass the States from this module's partition() "
        f"(all of them, e.g. moduledef.{what}(params, counts)), with no extra paths."
    )


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
            if part not in getattr(node, "_fields"):  # noqa: B009 (a namedtuple, unknown to the checker)
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


def _check_update(path: str, target: Variable[tp.Any], new: Variable[tp.Any]) -> None:
    """Raises unless `new` may replace the value of `target`: same collection, shape and dtype."""
    if new.collection != target.collection:
        raise ValueError(
            f"update_state: path {path!r} holds a {type(target).__name__} of collection "
            f"{target.collection!r}, but the State has collection {new.collection!r} there. "
            f"Load each collection's values into the Variables of that collection."
        )
    have, got = np.shape(target.value), np.shape(new.value)
    if have != got:
        raise ValueError(
            f"update_state: shape mismatch at path {path!r}: the module has {have}, the State "
            f"has {got}. Check that the State (or checkpoint) was made for this module's "
            f"configuration."
        )
    have_dtype = getattr(target.value, "dtype", None)
    if have_dtype is None:
        return
    got_dtype = getattr(new.value, "dtype", None)
    if got_dtype is None or np.dtype(got_dtype) != np.dtype(have_dtype):
        found = f"dtype {got_dtype}" if got_dtype is not None else f"a {type(new.value).__name__}"
        raise TypeError(
            f"update_state: dtype mismatch at path {path!r}: the module has dtype {have_dtype}, "
            f"the State has {found}. Cast it first, e.g. value.astype({str(have_dtype)!r}), or "
            f"pass an array of that dtype."
        )


def _where(path: str) -> str:
    """How errors name a place in the module graph: its quoted path, or the root."""
    return repr(path) if path else "the root"


class UnknownPathError(ReadableKeyError):
    """A State path that does not lead to a Variable of the module."""


def _unknown_path(path: str, reason: str) -> UnknownPathError:
    return UnknownPathError(
        f"update_state: unknown path {path!r}: {reason}. Use the paths from this module's partition()."
    )
