"""`jit`: `jax.jit` for functions that take and change Modules, Variables and Contexts.

How a call works. The arguments are flattened as a pytree in which Modules,
Variables and Contexts are leaves. The Modules and Variables among them form one
graph (shared submodules and Variables, also between arguments, are found once);
its walk — the ModuleDef, the caller's Variable objects in State order, the lists
and dicts it holds — is cached per argument objects, and reused while no Module
attribute was set anywhere (`nnx_bridge.module.structure_version`) and no list or
dict of the graph changed in place. A call then costs a cache look-up, reading
each Variable's ``.value``, and JAX's own dispatch.

Inside, the compiled function rebuilds the graph from the ModuleDef (sharing
included), calls ``fn``, and returns only the values of the Variables it
changed; those are written back into the caller's Variables. Variables created
inside on an existing Module (``Module.variable``, ``Module.sow``) are created on
the caller's Module. Any other structure change — a new submodule, a changed
static attribute, a replaced Variable, an item added to a list — raises an
error that names the path: make such changes outside the jitted function.

A Context argument is passed as its key(s) and its position (fork-path hash and
call count, kept on the device from one call to the next), so it never causes a
retrace; each call draws keys from a stream of its own, and the caller's Context
advances by one call.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import operator
import typing as tp
import weakref

import jax
import numpy as np

from nnx_bridge.context import Context, stable_hash
from nnx_bridge.graph import Graph, walk
from nnx_bridge.jit_structure import check_structure, relative
from nnx_bridge.module import Module, ModuleDef, structure_version
from nnx_bridge.state import State
from nnx_bridge.variables import Variable

F = tp.TypeVar("F", bound=tp.Callable[..., tp.Any])
_GRAPH_TYPES = (Module, Variable)
_NODE_TYPES = (Module, Variable, Context)
# Leaf types whose arguments need no pytree flatten (see Jitted._prepare).
# The concrete array class joins on first sight (making an array at import would start
# the backend before a program can call jax.distributed.initialize).
_FLAT_TYPES = {jax.Array, np.ndarray, int, float, bool, complex}


def _is_node(x: tp.Any) -> bool:
    return isinstance(x, _NODE_TYPES)


class _Refs(Module):
    """The graph of one call: every Module and Variable argument, in argument order."""

    refs: list[tp.Any]


def _refs_module(refs: list[tp.Any]) -> _Refs:
    container = object.__new__(_Refs)
    container.__dict__["refs"] = refs  # not setattr: no structure change is recorded
    return container


def _meta(variable: Variable[tp.Any]) -> tuple[type, tuple[tuple[str, tp.Any], ...]]:
    return type(variable), tuple(sorted((k, v) for k, v in variable.__dict__.items() if k != "value"))


def _rebuild_variable(meta: tuple[type, tuple[tuple[str, tp.Any], ...]], value: tp.Any) -> Variable[tp.Any]:
    new: Variable[tp.Any] = object.__new__(meta[0])
    new.__dict__.update(meta[1])
    new.value = value
    return new


@functools.lru_cache(maxsize=1024)
def _path_hash(count_path: tuple[int, ...]) -> int:
    return stable_hash(count_path)


_VALUE = operator.attrgetter("value")
_VALUE_NAMES = itertools.repeat("value")


class _Static:
    """An output pytree node without children: carries trace-time facts out of `jax.jit`."""

    __slots__ = ("value",)

    def __init__(self, value: tp.Any):
        self.value = value


jax.tree_util.register_pytree_node(_Static, lambda s: ((), s.value), lambda value, _: _Static(value))


class _Spec(tp.NamedTuple):
    """Everything about a call that is not an array: the key of the compiled function."""

    moduledef: ModuleDef[tp.Any]
    paths: tuple[str, ...]
    metas: tuple[tp.Any, ...]
    treedef: tp.Any
    graph_positions: tuple[int, ...]
    ctx_positions: tuple[tuple[int, int], ...]  # (leaf position, index among distinct Contexts)
    other_positions: tuple[int, ...]
    ctx_streams: tuple[tuple[str, ...] | None, ...]
    static: tuple[tp.Any, ...]
    donated_vars: tuple[bool, ...]
    donated_leaves: tuple[bool, ...]
    var_shardings: tuple[tp.Any, ...]
    leaf_shardings: tuple[tp.Any, ...]


class _Out(tp.NamedTuple):
    """Trace-time facts about the outputs."""

    changed: tuple[int, ...]
    created: tuple[tuple[int, str, tp.Any], ...]  # (module index, attribute, variable meta)
    plain: bool  # the result holds no Module, Variable or input Context
    out_treedef: tp.Any
    out_kinds: tuple[tuple[str, int], ...]  # per output leaf: ("leaf"|"module"|"var"|"new"|"ctx", index)
    new_moduledef: ModuleDef[tp.Any] | None
    new_paths: tuple[str, ...]
    new_metas: tuple[tp.Any, ...]


class _Entry:
    """One argument graph's cached walk.

    It holds the Variables strongly (reading their values is the hot path) but the
    argument objects and Modules only weakly, and it is stored under its first argument
    object weakly (`Jitted._entries`), so a model dropped by the caller is freed.
    """

    __slots__ = (
        "compiled",
        "containers",
        "copies",
        "modules",
        "objects",
        "spec",
        "variables",
        "version",
        "written",
    )

    def __init__(self, objects: list[tp.Any], graph: Graph, spec: _Spec, compiled: tp.Any):
        self.objects = [weakref.ref(o) for o in objects]
        self.version = structure_version()
        self.variables = list(graph.variables.values())
        self.modules = [weakref.ref(m) for m in graph.modules]
        self.spec = spec
        self.compiled = compiled
        # The graph's lists and dicts beside shallow copies: one C-level == tells whether any
        # changed in place (items compare by identity first, Modules and Variables only so).
        # The first container is the call's own list of arguments, which nothing changes.
        self.containers = [c for c, _ in graph.containers[1:]]
        self.copies = [list(c) if type(c) is list else dict(c) for c in self.containers]
        self.written: tuple[tp.Any, list[Variable[tp.Any]]] = (None, [])

    def valid(self, objects: list[tp.Any]) -> bool:
        """Same objects, no Module attribute set since, no list or dict changed in place."""
        if self.version != structure_version() or self.containers != self.copies:
            return False
        return all(ref() is obj for ref, obj in zip(self.objects, objects, strict=False))

    def module(self, index: int) -> Module:
        module = self.modules[index]()
        if module is None:  # the caller holds the arguments during the call
            raise AssertionError("jit: internal error, an argument's Module was freed during the call")
        return module


class _Fast:
    """How the last call's arguments split, when each was a Module, Variable, Context or array.

    A call with arguments of the same types and the same Module/Variable objects (checked
    by `_Entry.valid`) takes them by position, without classifying each one again.
    """

    __slots__ = ("aliasing", "contexts", "entry", "graph", "others", "streams", "types")

    def __init__(
        self, entry: _Entry, args: tuple[tp.Any, ...], streams: list[tp.Any], aliasing: tuple[int, ...]
    ):
        self.entry, self.streams, self.aliasing = entry, streams, aliasing
        self.types = tuple(map(type, args))
        self.graph = _picker([i for i, a in enumerate(args) if isinstance(a, _GRAPH_TYPES)])
        self.contexts = _picker([i for i, a in enumerate(args) if isinstance(a, Context)])
        self.others = _picker([i for i, a in enumerate(args) if not isinstance(a, _NODE_TYPES)])


def _picker(positions: list[int]) -> tp.Callable[[tuple[tp.Any, ...]], list[tp.Any]]:
    """``args -> [args[i] for i in positions]``, at C speed where possible."""
    if not positions:
        return lambda args: []
    if len(positions) == 1:
        (i,) = positions
        return lambda args: [args[i]]
    get = operator.itemgetter(*positions)
    return lambda args: list(get(args))


class Jitted(tp.Generic[F]):
    """What `jit` returns: call it like the function; ``trace``/``lower`` give JAX's AOT stages.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> double = nnx.jit(lambda v: v.value * 2)
        >>> float(double(nnx.Param(jnp.array(3.0))))
        6.0
        >>> "stablehlo" in double.lower(nnx.Param(jnp.ones((2, 2)))).as_text()
        True
    """

    def __init__(
        self,
        fn: F,
        *,
        static_argnums: tp.Sequence[int],
        static_argnames: tp.Sequence[str],
        donate_argnums: tp.Sequence[int],
        in_shardings: tp.Any,
        out_shardings: tp.Any,
        jit_kwargs: dict[str, tp.Any],
    ):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.static_argnums = tuple(sorted(static_argnums))
        self.static_argnames = frozenset(static_argnames)
        # positions among the non-static positional arguments, which is how calls are split
        self.donate_argnums = frozenset(
            i - sum(s < i for s in static_argnums) for i in donate_argnums if i not in static_argnums
        )
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self.jit_kwargs = jit_kwargs
        # id of the first argument object -> key -> entry, dropped when that object is freed
        # (a weakref.finalize); calls without a Module or Variable argument use `_plain`
        self._entries: dict[int, dict[tp.Any, _Entry]] = {}
        self._plain: dict[tp.Any, _Entry] = {}
        self._fast: _Fast | None = None  # the last call's argument kinds, when each is a leaf
        # id of a Context -> (weakref, count, count_path, its next position as a device array)
        self._positions: dict[int, tuple[tp.Any, int, tuple[int, ...], jax.Array]] = {}
        self._compiled: dict[_Spec, tp.Any] = {}

    # -- the call ------------------------------------------------------------------
    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        entry, flat, contexts = self._prepare(args, kwargs)
        changed, created, result, new_values, positions, facts = entry.compiled(*flat)
        facts = facts.value
        if entry.written[0] is not facts:  # the Variables this program writes, looked up once
            entry.written = (facts, [entry.variables[i] for i in facts.changed])
        list(map(setattr, entry.written[1], _VALUE_NAMES, changed))  # variable.value = new, at C speed
        if contexts:
            cache = self._positions
            for c, position in zip(contexts, positions, strict=False):
                c.count += 1
                cached = cache.get(id(c))
                ref = cached[0] if cached is not None and cached[0]() is c else weakref.ref(c)
                cache[id(c)] = (ref, c.count, c.count_path, position)
        if not facts.created and facts.plain:
            return result
        created_vars: list[Variable[tp.Any]] = []
        for (module_index, name, meta), value in zip(facts.created, created, strict=True):
            variable = _rebuild_variable(meta, value)
            setattr(entry.module(module_index), name, variable)
            created_vars.append(variable)
        if facts.plain:
            return result
        return self._outputs(entry, facts, result, new_values, created_vars, contexts)

    def trace(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        """JAX's ahead-of-time ``Traced`` of the compiled function for these arguments.

        ``.lower()`` and ``.compile()`` give the program for inspection (HLO, cost,
        memory). Its inputs are the Variables' values, so run the step through
        this `Jitted` itself: that is what writes the results back.
        """
        entry, flat, _ = self._prepare(args, kwargs)
        return entry.compiled.trace(*flat)

    def lower(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        """``self.trace(*args, **kwargs).lower()``."""
        return self.trace(*args, **kwargs).lower()

    def _cache_size(self) -> int:
        """How many programs JAX has traced for this function so far (as ``jax.jit``'s)."""
        return sum(compiled._cache_size() for compiled in self._compiled.values())

    def _prepare(
        self, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]
    ) -> tuple[_Entry, tuple[tp.Any, ...], list[Context]]:
        """The cache entry and the flat inputs of the compiled function for one call."""
        fast = self._fast
        objects: list[tp.Any]
        contexts: list[Context]
        if fast is not None and not kwargs and tuple(map(type, args)) == fast.types:
            # The last call's kind of arguments (each its own leaf): pick them by position.
            objects, contexts = fast.graph(args), fast.contexts(args)
            if (
                fast.entry.valid(objects)
                and [c.streams for c in contexts] == fast.streams
                and (len(contexts) < 2 or _aliasing(contexts) == fast.aliasing)
            ):
                return self._inputs(fast.entry, fast.others(args), contexts)
        static: tuple[tp.Any, ...] = ()
        if self.static_argnums or self.static_argnames:
            args, kwargs, static = self._split_static(args, kwargs)
        # Fast path: positional arguments that are each a Module, Variable, Context or array
        # are their own leaves, so the pytree flatten (and its treedef) can be skipped.
        leaves: tp.Sequence[tp.Any] = args
        treedef = None
        if kwargs or not _flat(args):
            leaves, treedef = jax.tree.flatten((args, kwargs), is_leaf=_is_node)
        objects = []
        ids: list[tp.Any] = []
        contexts = []
        others: list[tp.Any] = []
        for leaf in leaves:
            if isinstance(leaf, _GRAPH_TYPES):
                objects.append(leaf)
                ids.append(id(leaf))
            elif isinstance(leaf, Context):  # by kind, not identity: a new Context each step is fine
                contexts.append(leaf)
                ids.append(("ctx", leaf.streams))
            else:
                ids.append(type(leaf))
                others.append(leaf)
        key = (treedef, static, tuple(ids), _aliasing(contexts) if len(contexts) > 1 else ())
        entries = self._entries.get(id(objects[0])) if objects else self._plain
        entry = entries.get(key) if entries is not None else None
        if entry is None or not entry.valid(objects):
            leaves, treedef = jax.tree.flatten((args, kwargs), is_leaf=_is_node)
            entry = self._build(key, args, leaves, treedef, objects, contexts, static)
        if treedef is None and not static:
            self._fast = _Fast(
                entry, args, [c.streams for c in contexts], _aliasing(contexts) if len(contexts) > 1 else ()
            )
        return self._inputs(entry, others, contexts)

    def _inputs(
        self, entry: _Entry, others: list[tp.Any], contexts: list[Context]
    ) -> tuple[_Entry, tuple[tp.Any, ...], list[Context]]:
        spec = entry.spec
        values = list(map(_VALUE, entry.variables))
        if contexts:
            contexts = _distinct(contexts)
            ctx_in = [(c.key, self._position(c)) for c in contexts]
        else:
            ctx_in = []
        if spec.donated_vars:
            return (
                entry,
                (*_split(values, spec.donated_vars), ctx_in, *_split(others, spec.donated_leaves)),
                contexts,
            )
        return entry, (values, ctx_in, others), contexts

    def _position(self, ctx: Context) -> tp.Any:
        """``[hash of the fork path, count]`` of `ctx`, as uint32: on the device already when
        the last call returned it (a host-to-device copy per call costs more than the step's
        arithmetic on a small model), else from the host."""
        cached = self._positions.get(id(ctx))
        if (
            cached is not None
            and cached[0]() is ctx
            and cached[1] == ctx.count
            and cached[2] == ctx.count_path
        ):
            return cached[3]
        if len(self._positions) > 64:
            self._positions.clear()
        return np.array([_path_hash(ctx.count_path), ctx.count], np.uint32)

    def _split_static(
        self, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]
    ) -> tuple[tuple[tp.Any, ...], dict[str, tp.Any], tuple[tp.Any, ...]]:
        static: list[tuple[tp.Any, tp.Any]] = []
        for i in self.static_argnums:
            if i >= len(args):
                raise TypeError(
                    f"jit({_name(self.fn)}): static_argnums includes {i}, but the call has only "
                    f"{len(args)} positional argument(s). Pass that argument positionally."
                )
            static.append((i, _hashable(args[i], f"argument {i}", self.fn)))
        dynamic = tuple(a for i, a in enumerate(args) if i not in self.static_argnums)
        kw = {k: v for k, v in kwargs.items() if k not in self.static_argnames}
        for k in sorted(self.static_argnames & kwargs.keys()):
            static.append((k, _hashable(kwargs[k], f"keyword argument {k!r}", self.fn)))
        return dynamic, kw, tuple(static)

    # -- building a cache entry (once per argument objects and structure) -----------
    def _build(
        self,
        key: tp.Any,
        args: tuple[tp.Any, ...],
        leaves: list[tp.Any],
        treedef: tp.Any,
        objects: list[tp.Any],
        contexts: list[Context],
        static: tuple[tp.Any, ...],
    ) -> _Entry:
        container = _refs_module(objects)
        state, moduledef = container.partition()
        graph = walk(container)
        if list(graph.variables) != list(state):
            raise AssertionError(
                f"jit: internal error, walk and partition disagree: "
                f"{list(graph.variables)[:5]} vs {list(state)[:5]}"
            )
        variables = list(graph.variables.values())
        distinct = _distinct(contexts)
        index = {id(c): k for k, c in enumerate(distinct)}
        ctx_positions = tuple(
            (i, index[id(leaf)]) for i, leaf in enumerate(leaves) if isinstance(leaf, Context)
        )
        graph_positions = tuple(i for i, leaf in enumerate(leaves) if isinstance(leaf, _GRAPH_TYPES))
        arg_of_leaf = _arg_of_leaf(args, len(leaves), self.donate_argnums or self.in_shardings is not None)
        others = [i for i, leaf in enumerate(leaves) if not isinstance(leaf, _NODE_TYPES)]
        donated_vars: tuple[bool, ...] = ()
        donated_leaves: tuple[bool, ...] = ()
        if self.donate_argnums:
            donated_ids = _variables_of(
                [
                    leaf
                    for i, leaf in enumerate(leaves)
                    if arg_of_leaf[i] in self.donate_argnums and isinstance(leaf, _GRAPH_TYPES)
                ]
            )
            donated_vars = tuple(id(v) in donated_ids for v in variables)
            donated_leaves = tuple(arg_of_leaf[i] in self.donate_argnums for i in others)
        var_shardings, leaf_shardings = self._input_shardings(args, leaves, arg_of_leaf, others, variables)
        spec = _Spec(
            moduledef,
            tuple(state),
            tuple(_hashable(_meta(v), f"Variable {p!r}", self.fn) for p, v in graph.variables.items()),
            treedef,
            graph_positions,
            ctx_positions,
            tuple(others),
            tuple(c.streams for c in distinct),
            static,
            donated_vars,
            donated_leaves,
            var_shardings,
            leaf_shardings,
        )
        compiled = self._compiled.get(spec)
        if compiled is None:
            options = dict(self.jit_kwargs)
            if donated_vars:
                options["donate_argnums"] = (0, 3)
            if var_shardings:
                vs, ls = list(var_shardings), list(leaf_shardings)
                options["in_shardings"] = (
                    (*_split(vs, donated_vars), None, *_split(ls, donated_leaves))
                    if donated_vars
                    else (vs, None, ls)
                )
            if self.out_shardings is not None and not isinstance(self.out_shardings, tp.Mapping):
                options["out_shardings"] = (None, None, self.out_shardings, None, None, None)  # see _pure
            compiled = jax.jit(functools.partial(self._pure, spec), **options)
            self._compiled[spec] = compiled
        entry = _Entry(objects, graph, spec, compiled)
        if objects:
            entries = self._entries.get(id(objects[0]))
            if entries is None or _entry_owner_changed(entries, objects[0]):
                entries = self._entries[id(objects[0])] = {}
                weakref.finalize(objects[0], _forget, self._entries, id(objects[0]), entries)
        else:
            entries = self._plain
        if len(entries) >= 16:  # drop the oldest
            entries.pop(next(iter(entries)))
        entries[key] = entry
        return entry

    def _input_shardings(
        self,
        args: tuple[tp.Any, ...],
        leaves: list[tp.Any],
        arg_of_leaf: list[int],
        others: list[int],
        variables: list[Variable[tp.Any]],
    ) -> tuple[tuple[tp.Any, ...], tuple[tp.Any, ...]]:
        if self.in_shardings is None:
            return (), ()
        given = self.in_shardings
        if not isinstance(given, (tuple, list)):
            given = (given,) * len(args)
        if len(given) != len(args):
            raise ValueError(
                f"jit({_name(self.fn)}): in_shardings has {len(given)} entries but the call has "
                f"{len(args)} positional (non-static) argument(s). Give one entry per argument "
                f"(None, a Sharding, or for a Module a State of shardings from get_named_sharding)."
            )
        by_variable: dict[int, tp.Any] = {}
        for arg, entry in zip(args, given, strict=False):
            if entry is None:
                continue
            if isinstance(entry, jax.sharding.Sharding):
                if isinstance(arg, Module):
                    for v in walk(arg).variables.values():
                        by_variable.setdefault(id(v), entry)
                continue
            if isinstance(arg, Module) and isinstance(entry, tp.Mapping):
                for path, v in walk(arg).variables.items():
                    if path in entry:
                        s = entry[path]
                        by_variable.setdefault(id(v), s.value if isinstance(s, Variable) else s)
                continue
            raise TypeError(
                f"jit({_name(self.fn)}): an in_shardings entry is a {type(entry).__name__} for an "
                f"argument of type {type(arg).__name__}. Use None, a jax.sharding.Sharding, or for a "
                f"Module argument a State of shardings (nnx.get_named_sharding(model.partition()[0], mesh))."
            )
        leaf_shardings = []
        for i in others:
            entry = given[arg_of_leaf[i]]
            leaf_shardings.append(entry if isinstance(entry, jax.sharding.Sharding) else None)
        return tuple(by_variable.get(id(v)) for v in variables), tuple(leaf_shardings)

    # -- the traced function -----------------------------------------------------
    def _pure(self, spec: _Spec, *flat: tp.Any) -> tp.Any:
        if spec.donated_vars:
            donated_values, kept_values, ctx_in, donated_leaves, kept_leaves = flat
            values = _join(donated_values, kept_values, spec.donated_vars)
            others = _join(donated_leaves, kept_leaves, spec.donated_leaves)
        else:
            values, ctx_in, others = flat
        rebuilt = (_rebuild_variable(m, v) for m, v in zip(spec.metas, values, strict=False))
        state = State(dict(zip(spec.paths, rebuilt, strict=False)))
        container = spec.moduledef.merge(state)
        graph = walk(container)
        inner_vars = list(graph.variables.values())
        inner_values = [v.value for v in inner_vars]
        before = [dict(m.__dict__) for m in graph.modules]
        inner_contexts = [
            _inner_context(key, position, streams)
            for (key, position), streams in zip(ctx_in, spec.ctx_streams, strict=False)
        ]
        leaves: list[tp.Any] = [None] * spec.treedef.num_leaves
        for i, obj in zip(spec.graph_positions, container.refs, strict=False):
            leaves[i] = obj
        for i, k in spec.ctx_positions:
            leaves[i] = inner_contexts[k]
        for i, leaf in zip(spec.other_positions, others, strict=False):
            leaves[i] = leaf
        args, kwargs = jax.tree.unflatten(spec.treedef, leaves)
        if spec.static:
            args, kwargs = _insert_static(args, kwargs, spec.static)
        result = self.fn(*args, **kwargs)
        created = check_structure(graph, before, inner_vars, f"jit({_name(self.fn)})")
        changed = tuple(
            i
            for i, (v, old) in enumerate(zip(inner_vars, inner_values, strict=False))
            if v.value is not old or (spec.donated_vars and spec.donated_vars[i])
        )
        changed_values = [inner_vars[i].value for i in changed]
        created_values = [v.value for _, _, v in created]
        created_facts = tuple(
            (m, name, _hashable(_meta(v), f"new Variable {name!r}", self.fn)) for m, name, v in created
        )
        result = self._constrain_output(result)
        out_leaves, out_treedef = jax.tree.flatten(result, is_leaf=_is_node)
        module_index = {id(m): k for k, m in enumerate(graph.modules)}
        var_index = {id(v): k for k, v in enumerate(inner_vars)}
        created_index = {id(v): k for k, (_, _, v) in enumerate(created)}
        ctx_index = {id(c): k for k, c in enumerate(inner_contexts)}
        kinds: list[tuple[str, int]] = []
        plain_leaves: list[tp.Any] = []
        new_objects: list[tp.Any] = []
        for leaf in out_leaves:
            if isinstance(leaf, Module) and id(leaf) in module_index:
                kinds.append(("module", module_index[id(leaf)]))
            elif isinstance(leaf, Variable) and id(leaf) in var_index:
                kinds.append(("var", var_index[id(leaf)]))
            elif isinstance(leaf, Variable) and id(leaf) in created_index:
                kinds.append(("created", created_index[id(leaf)]))
            elif isinstance(leaf, Context) and id(leaf) in ctx_index:
                kinds.append(("ctx", ctx_index[id(leaf)]))
            elif isinstance(leaf, _GRAPH_TYPES):
                kinds.append(("new", len(new_objects)))
                new_objects.append(leaf)
            else:
                kinds.append(("leaf", len(plain_leaves)))
                plain_leaves.append(leaf)
        plain = all(kind == "leaf" for kind, _ in kinds)
        new_moduledef, new_paths, new_metas, new_values = None, (), (), []
        if new_objects:
            new_moduledef, new_paths, new_metas, new_values = self._new_objects(new_objects, graph)
        facts = _Out(
            changed, created_facts, plain, out_treedef, tuple(kinds), new_moduledef, new_paths, new_metas
        )
        next_positions = [position + np.array([0, 1], np.uint32) for _, position in ctx_in]
        return (
            changed_values,
            created_values,
            result if plain else plain_leaves,
            new_values,
            next_positions,
            _Static(facts),
        )

    def _constrain_output(self, result: tp.Any) -> tp.Any:
        """A State of shardings for a returned Module: constrains its Variables by path."""
        shardings = self.out_shardings
        if not isinstance(shardings, tp.Mapping):
            return result  # given to jax.jit as out_shardings of the result
        if not isinstance(result, Module):
            raise TypeError(
                f"jit({_name(self.fn)}): out_shardings is a State (or mapping) of shardings by path, "
                f"which fits a returned Module, but the function returned a {type(result).__name__}. "
                f"Give a Sharding or a pytree of Shardings matching the result instead."
            )
        for path, v in walk(result).variables.items():
            if path in shardings:
                s = shardings[path]
                v.value = _constrain(v.value, s.value if isinstance(s, Variable) else s)
        return result

    def _new_objects(self, objects: list[tp.Any], inputs: Graph) -> tuple[tp.Any, ...]:
        container = _refs_module(objects)
        state, moduledef = container.partition()
        graph = walk(container)
        known = {id(m) for m in inputs.modules} | {id(v) for v in inputs.variables.values()}
        for path, v in graph.variables.items():
            if id(v) in known:
                raise ValueError(
                    f"jit({_name(self.fn)}): a new Module returned from the jitted function holds, at "
                    f"{relative(path)!r}, a Variable of an argument. A new Module cannot share state "
                    f"with the arguments across jit: build it outside, or return the argument's "
                    f"Variables themselves."
                )
        for m in graph.modules[1:]:
            if id(m) in known:
                raise ValueError(
                    f"jit({_name(self.fn)}): a new Module returned from the jitted function holds a "
                    f"{type(m).__name__} that is an argument's submodule. Build the new Module outside "
                    f"the jitted function, or return the argument itself."
                )
        metas = tuple(_hashable(_meta(v), f"Variable {p!r}", self.fn) for p, v in graph.variables.items())
        return moduledef, tuple(state), metas, [v.value for v in graph.variables.values()]

    def _outputs(
        self,
        entry: _Entry,
        facts: _Out,
        leaves: list[tp.Any],
        new_values: list[tp.Any],
        created: list[Variable[tp.Any]],
        contexts: list[Context],
    ) -> tp.Any:
        new_objects: list[tp.Any] = []
        if facts.new_moduledef is not None:
            state = State(
                dict(
                    zip(
                        facts.new_paths,
                        (_rebuild_variable(m, v) for m, v in zip(facts.new_metas, new_values, strict=False)),
                        strict=False,
                    )
                )
            )
            new_objects = facts.new_moduledef.merge(state).refs
        out = []
        for kind, k in facts.out_kinds:
            if kind == "leaf":
                out.append(leaves[k])
            elif kind == "module":
                out.append(entry.module(k))
            elif kind == "var":
                out.append(entry.variables[k])
            elif kind == "created":
                out.append(created[k])
            elif kind == "ctx":
                out.append(contexts[k])
            else:
                out.append(new_objects[k])
        return jax.tree.unflatten(facts.out_treedef, out)

    def __repr__(self) -> str:
        return f"nnx_bridge.jit({_name(self.fn)})"


def jit(
    fn: F | None = None,
    *,
    static_argnums: int | tp.Sequence[int] = (),
    static_argnames: str | tp.Sequence[str] = (),
    donate_argnums: int | tp.Sequence[int] = (),
    in_shardings: tp.Any = None,
    out_shardings: tp.Any = None,
    **jit_kwargs: tp.Any,
) -> tp.Any:
    """`jax.jit` for functions of Modules: changes to their Variables reach the caller.

    Arguments and results may be Modules, Variables, Contexts, States, arrays, or
    pytrees holding them. What the function does to the arguments' Variables
    (``.value = ...``) is written back; Modules and Variables shared between
    arguments stay shared; Variables created inside on an argument's Module
    (``Module.variable``, ``Module.sow``) appear on the caller's Module; a Module
    or Variable returned from the arguments is the caller's object. A Context
    argument advances for the caller (one call per call) and gives new keys on
    every call without retracing. Any other structure change inside (a new
    submodule or static attribute, a replaced Variable) is an error: make it
    outside the jitted function.

    Args:
      fn: the function (or use ``@jit(...)`` as a decorator factory).
      static_argnums: positional arguments that are hashable compile-time constants.
      static_argnames: keyword arguments that are hashable compile-time constants.
      donate_argnums: positional arguments whose buffers (the Variables of a Module
        argument included) may be reused for the results.
      in_shardings: per positional argument: None, a ``jax.sharding.Sharding``, or for a
        Module a State of shardings (`nnx_bridge.get_named_sharding` of its State).
      out_shardings: for the result: a Sharding, a pytree of them, or for a returned
        Module a State of shardings.
      **jit_kwargs: passed on to `jax.jit` (e.g. ``keep_unused``, ``backend``).

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> class Counter(nnx.Module):
        ...     def __init__(self):
        ...         self.n = nnx.Variable("counts", jnp.array(0))
        >>> @nnx.jit
        ... def bump(counter, by):
        ...     counter.n.value += by
        >>> c = Counter()
        >>> bump(c, 2); bump(c, 3)
        >>> int(c.n.value)
        5
    """
    if fn is None:
        return functools.partial(
            jit,
            static_argnums=static_argnums,
            static_argnames=static_argnames,
            donate_argnums=donate_argnums,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            **jit_kwargs,
        )
    if not callable(fn):
        raise TypeError(f"jit expects a function to compile; found {type(fn).__name__}.")
    if "donate_argnames" in jit_kwargs:
        raise TypeError(
            "nnx_bridge.jit takes donate_argnums only: pass the donated arguments positionally and "
            "list their positions, e.g. jit(step, donate_argnums=(0, 1))."
        )
    static = _ints(static_argnums, "static_argnums")
    donate = _ints(donate_argnums, "donate_argnums")
    names = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
    module = getattr(fn, "__self__", None)
    if isinstance(module, Module) and inspect.ismethod(fn):
        # A Module's bound method: its Module becomes argument 0, so that its changes are
        # written back instead of leaking traced values into the object.
        if isinstance(in_shardings, (tuple, list)):
            in_shardings = (None, *in_shardings)
        inner = Jitted(
            fn.__func__,
            static_argnums=tuple(i + 1 for i in static),
            static_argnames=names,
            donate_argnums=tuple(i + 1 for i in donate),
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            jit_kwargs=jit_kwargs,
        )
        return functools.wraps(fn)(functools.partial(inner, module))
    return Jitted(
        fn,
        static_argnums=static,
        static_argnames=names,
        donate_argnums=donate,
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        jit_kwargs=jit_kwargs,
    )


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------
def _constrain(x: jax.Array, sharding: tp.Any) -> jax.Array:
    mesh = getattr(sharding, "mesh", None)
    types = getattr(mesh, "axis_types", ())
    if types and all(t == jax.sharding.AxisType.Explicit for t in types):
        return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


def _name(fn: tp.Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _ints(value: int | tp.Sequence[int], what: str) -> tuple[int, ...]:
    values = (value,) if isinstance(value, int) else tuple(value)
    for v in values:
        if not isinstance(v, int) or v < 0:
            raise TypeError(f"jit: {what} takes non-negative ints (argument positions); found {v!r}.")
    return values


def _hashable(value: tp.Any, what: str, fn: tp.Any) -> tp.Any:
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"jit({_name(fn)}): {what} is a compile-time constant and must be hashable; found "
            f"{type(value).__name__}. Use a hashable value (e.g. a tuple instead of a list)."
        ) from None
    return value


def _flat(args: tuple[tp.Any, ...]) -> bool:
    for a in args:
        if type(a) not in _FLAT_TYPES and not isinstance(a, _NODE_TYPES):
            if type(a).__module__.startswith("jax") and isinstance(a, jax.Array):
                _FLAT_TYPES.add(type(a))
                continue
            return False
    return True


def _entry_owner_changed(entries: dict[tp.Any, _Entry], first: tp.Any) -> bool:
    """Whether `entries` belong to another (freed) object that had the same id as `first`."""
    return any(e.objects[0]() is not first for e in entries.values())


def _forget(table: dict[int, dict[tp.Any, _Entry]], key: int, entries: dict[tp.Any, _Entry]) -> None:
    if table.get(key) is entries:
        del table[key]


def _aliasing(contexts: list[Context]) -> tuple[int, ...]:
    """Which Context arguments are the same object: the index of each one's first occurrence."""
    first: dict[int, int] = {}
    return tuple(first.setdefault(id(c), i) for i, c in enumerate(contexts))


def _distinct(contexts: list[Context]) -> list[Context]:
    if len(contexts) < 2:
        return contexts
    seen: dict[int, Context] = {}
    for c in contexts:
        seen.setdefault(id(c), c)
    return list(seen.values())


def _split(values: list[tp.Any], mask: tuple[bool, ...]) -> tuple[list[tp.Any], list[tp.Any]]:
    return [v for v, m in zip(values, mask, strict=True) if m], [
        v for v, m in zip(values, mask, strict=True) if not m
    ]


def _join(yes: list[tp.Any], no: list[tp.Any], mask: tuple[bool, ...]) -> list[tp.Any]:
    a, b = iter(yes), iter(no)
    return [next(a) if m else next(b) for m in mask]


def _arg_of_leaf(args: tuple[tp.Any, ...], n_leaves: int, needed: tp.Any) -> list[int]:
    """For each leaf of ``(args, kwargs)``: its positional argument's index, or -1 (a keyword)."""
    if not needed:
        return [-1] * n_leaves
    owner: list[int] = []
    for i, arg in enumerate(args):
        owner += [i] * len(jax.tree.leaves(arg, is_leaf=_is_node))
    return owner + [-1] * (n_leaves - len(owner))


def _variables_of(objects: list[tp.Any]) -> set[int]:
    ids: set[int] = set()
    for obj in objects:
        if isinstance(obj, Variable):
            ids.add(id(obj))
        else:
            ids.update(id(v) for v in walk(obj).variables.values())
    return ids


def _insert_static(
    args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any], static: tuple[tp.Any, ...]
) -> tuple[tuple[tp.Any, ...], dict[str, tp.Any]]:
    positional = [(k, v) for k, v in static if isinstance(k, int)]
    full = list(args)
    for i, v in positional:
        full.insert(i, v)
    kwargs = {**kwargs, **{k: v for k, v in static if isinstance(k, str)}}
    return tuple(full), kwargs


def _inner_context(key: tp.Any, position: jax.Array, streams: tuple[str, ...] | None) -> Context:
    """The Context the traced function sees: keys folded with one datum of the call's position.

    The datum mixes the fork path's stable hash with the count spread by an odd constant
    (a bijection modulo 2**32), so the calls of one Context never repeat a datum.
    """
    datum = position[0] ^ (position[1] * np.uint32(0x9E3779B1))

    def derive(k: jax.Array) -> jax.Array:
        return jax.random.fold_in(k, datum)

    if streams is None:
        return Context(derive(key))
    return Context({name: derive(key[name]) for name in streams})
