"""Property tests: every inverse pair of the core, on random module graphs and States.

Random module graphs have nesting, lists, tuples, namedtuples and dicts of
submodules and Variables, shared submodules, shared Variables, static fields
(lists of ints among them) and reference cycles. The oracles below walk the
object graphs directly (``vars()``, containers) and never call the library.
"""

import collections
import functools
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_states_equal, assert_variables_equal
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnx_bridge as nnx

# --- the types random graphs are made of ------------------------------------------------


class GraphModule(nnx.Module):
    def __call__(self):
        """Increments every Variable reachable from this module once."""
        for variable in first_paths(self).values():
            variable.value = variable.value + 1
        return "called"


class Node(GraphModule):
    pass


class Leaf(GraphModule):
    pass


class Tagged(nnx.Variable):
    """A Variable subclass with its own constructor and extra metadata."""

    def __init__(self, value, tag, *, sharding=None):
        super().__init__("tagged", value, sharding=sharding)
        self.tag = tag


class PropCache(nnx.Variable, collection="prop_cache"):
    pass


Pair = collections.namedtuple("Pair", ["first", "second"])

MODULE_TYPES = [Node, Leaf]
ATTRIBUTE_NAMES = ["a", "b", "b-c", "b0", "c", "layers", "w", "A", "x_1"]
DICT_KEYS = ["k", "a-b", "0", 1, 2, "B"]  # distinct string forms
SHARDINGS = [None, ("data",), (None, "model"), ("data", "model")]


# --- the oracles: plain graph walks that never call nnx_bridge ----------------------------


def children(obj) -> list[tuple[str, tp.Any]]:
    """The (path part, child) pairs of a module or container, in walk order."""
    if isinstance(obj, nnx.Module):
        return [(name, vars(obj)[name]) for name in sorted(vars(obj))]
    if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):
        return list(zip(obj._fields, obj, strict=True))
    if isinstance(obj, (list, tuple)):
        return [(str(i), x) for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        return [(str(k), obj[k]) for k in sorted(obj, key=str)]
    return []


def first_paths(root) -> dict[str, nnx.Variable]:
    """Each distinct Variable reachable from `root`, at the first path a DFS finds it."""
    found: dict[str, nnx.Variable] = {}
    seen: set[int] = set()

    def visit(obj, parts):
        if isinstance(obj, (nnx.Module, nnx.Variable)):
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if isinstance(obj, nnx.Variable):
                found["/".join(parts)] = obj
                return
        for part, child in children(obj):
            visit(child, (*parts, part))

    visit(root, ())
    return found


def metadata(variable):
    return {k: v for k, v in vars(variable).items() if k != "value"}


def assert_values_equal(a, b, where):
    assert type(a) is type(b) or (hasattr(a, "dtype") and hasattr(b, "dtype")), where
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
    assert np.asarray(a).dtype == np.asarray(b).dtype, where


def assert_isomorphic(original, rebuilt):
    """Same types, statics and values; sharing kept exactly; no object reused.

    Modules and Variables are matched one to one: an object met again in one
    graph must be met again, as the same partner, in the other.
    """
    forward: dict[int, tp.Any] = {}
    backward: dict[int, tp.Any] = {}

    def visit(a, b, where):
        assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
        if isinstance(a, (nnx.Module, nnx.Variable)):
            if id(a) in forward or id(b) in backward:
                assert forward.get(id(a)) is b and backward.get(id(b)) is a, f"{where}: sharing differs"
                return
            assert a is not b, f"{where}: the rebuilt graph reuses an original object"
            forward[id(a)], backward[id(b)] = b, a
            if isinstance(a, nnx.Variable):
                assert_variables_equal(a, b, where)
                return
            assert sorted(vars(a)) == sorted(vars(b)), where
        elif isinstance(a, (list, tuple, dict)):
            assert len(a) == len(b), where
            if isinstance(a, dict):
                assert set(a) == set(b), where
        else:
            assert a == b, f"{where}: static {a!r} != {b!r}"
            return
        for (part, x), (other_part, y) in zip(children(a), children(b), strict=True):
            assert part == other_part, where
            visit(x, y, f"{where}/{part}")

    visit(original, rebuilt, "")


def path_key(path):
    return path.split("/")


# --- random module graphs ---------------------------------------------------------------

statics = st.one_of(
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
    st.text(alphabet="ab/-", max_size=3),
    st.floats(allow_nan=False, width=32),
    st.lists(st.integers(0, 9), max_size=3),
    st.tuples(st.integers(0, 9), st.integers(0, 9)),
)

JAX_VALUES = [jnp.arange(3.0), jnp.ones((2, 2), jnp.int32), jnp.asarray(1.5)]
variable_values = st.one_of(
    st.integers(-100, 100),
    st.sampled_from(JAX_VALUES),
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.int32]),
        shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3),
        elements=st.integers(-100, 100),
    ),
)


@st.composite
def variable_specs(draw):
    kind = draw(st.sampled_from(["param", "batch_stat", "counts", "cache", "tagged"]))
    value = draw(variable_values)
    sharding = draw(st.sampled_from(SHARDINGS))
    tag = draw(st.sampled_from(["x", "y"]))
    return kind, value, sharding, tag


@functools.cache
def value_trees(n_modules, n_variables):
    leaves = [
        st.tuples(st.just("static"), statics),
        st.tuples(st.just("module"), st.integers(0, n_modules - 1)),
    ]
    if n_variables:
        variable = st.tuples(st.just("variable"), st.integers(0, n_variables - 1))
        leaves += [variable, variable]
    return st.recursive(
        st.one_of(leaves),
        lambda inner: st.one_of(
            st.tuples(st.just("list"), st.lists(inner, max_size=3)),
            st.tuples(st.just("tuple"), st.lists(inner, max_size=3)),
            st.tuples(st.just("pair"), st.tuples(inner, inner)),
            st.tuples(st.just("dict"), st.dictionaries(st.sampled_from(DICT_KEYS), inner, max_size=3)),
        ),
        max_leaves=6,
    )


@st.composite
def graph_plans(draw):
    """A recipe for a module graph; `build` makes fresh objects from it each time.

    A random tree of modules rooted at module 0 holds every module and every
    Variable at least once; random attributes on top add containers, statics,
    more references (sharing) and references back up the tree (cycles).
    """
    n_modules = draw(st.integers(1, 5))
    variables = draw(st.lists(variable_specs(), min_size=1, max_size=6))
    trees = value_trees(n_modules, len(variables))
    modules = [
        (
            draw(st.sampled_from(MODULE_TYPES)),
            draw(st.dictionaries(st.sampled_from(ATTRIBUTE_NAMES), trees, max_size=3)),
        )
        for _ in range(n_modules)
    ]
    placements = [("module", i, draw(st.integers(0, i - 1))) for i in range(1, n_modules)]
    placements += [("variable", k, draw(st.integers(0, n_modules - 1))) for k in range(len(variables))]
    for kind, index, owner in placements:
        name = f"{draw(st.sampled_from(ATTRIBUTE_NAMES))}{kind[0]}{index}"
        wrap = draw(st.sampled_from(["none", "list", "dict"]))
        tree = (kind, index)
        if wrap == "list":
            tree = ("list", [tree])
        elif wrap == "dict":
            tree = ("dict", {draw(st.sampled_from(DICT_KEYS)): tree})
        modules[owner][1][name] = tree
    return modules, variables


def make_variable(kind, value, sharding, tag):
    if kind == "param":
        return nnx.Param(value, sharding=sharding)
    if kind == "batch_stat":
        return nnx.BatchStat(value, sharding=sharding)
    if kind == "counts":
        return nnx.Variable("counts", value, sharding=sharding)
    if kind == "cache":
        return PropCache(value, sharding=sharding)
    return Tagged(value, tag, sharding=sharding)


def build(plan):
    module_specs, variable_specs_ = plan
    modules = [module_type() for module_type, _ in module_specs]
    variables = [make_variable(*spec) for spec in variable_specs_]

    def resolve(tree):
        kind, content = tree
        if kind == "static":
            return list(content) if isinstance(content, list) else content
        if kind == "module":
            return modules[content]
        if kind == "variable":
            return variables[content]
        if kind == "list":
            return [resolve(t) for t in content]
        if kind == "tuple":
            return tuple(resolve(t) for t in content)
        if kind == "pair":
            return Pair(*(resolve(t) for t in content))
        return {key: resolve(t) for key, t in content.items()}

    for module, (_, attributes) in zip(modules, module_specs, strict=True):
        for name, tree in attributes.items():
            setattr(module, name, resolve(tree))
    return modules[0]


# --- random filters ---------------------------------------------------------------------

base_filters = st.sampled_from(
    [
        "params",
        "batch_stats",
        "counts",
        "prop_cache",
        "tagged",
        "missing",
        nnx.Param,
        nnx.BatchStat,
        nnx.Variable,
        Tagged,
        PropCache,
        nnx.PathContains("a"),
        nnx.PathContains("0"),
        nnx.PathContains("layers"),
        nnx.Everything(),
        nnx.Nothing(),
    ]
)
filters_strategy = st.recursive(
    base_filters,
    lambda inner: st.one_of(
        inner.map(nnx.Not),
        st.lists(inner, max_size=2).map(lambda fs: nnx.All(*fs)),
        st.lists(inner, max_size=2).map(lambda fs: nnx.Any(*fs)),
    ),
    max_leaves=4,
)


# --- partition / merge -------------------------------------------------------------------


@given(graph_plans())
def test_partition_puts_each_variable_once_at_its_first_path(plan):
    root = build(plan)
    state, _ = root.partition()
    expected = first_paths(root)
    assert list(state) == sorted(expected, key=path_key)
    for path, variable in expected.items():
        assert state[path] is not variable  # partition copies
        assert_variables_equal(state[path], variable, path)


@given(graph_plans())
def test_merge_inverts_partition(plan):
    root = build(plan)
    state, moduledef = root.partition()
    assert_isomorphic(root, moduledef.merge(state))


@given(graph_plans())
def test_partition_inverts_merge(plan):
    state, moduledef = build(plan).partition()
    again_state, again_moduledef = moduledef.merge(state).partition()
    assert again_moduledef == moduledef and hash(again_moduledef) == hash(moduledef)
    assert_states_equal(again_state, state)


@given(graph_plans())
def test_equal_graphs_give_equal_moduledefs(plan):
    first, second = build(plan).partition()[1], build(plan).partition()[1]
    assert first is not second
    assert first == second and hash(first) == hash(second)
    assert first.paths == frozenset(build(plan).partition()[0])


@given(graph_plans(), st.data())
def test_merge_of_split_states_inverts_partition(plan, data):
    root = build(plan)
    filters = data.draw(st.lists(filters_strategy, max_size=3))
    *states, moduledef = root.partition(*filters, ...)
    assert_isomorphic(root, moduledef.merge(*states))
    order = data.draw(st.permutations(range(len(states))))
    assert_isomorphic(root, moduledef.merge(*(states[i] for i in order)))


@given(graph_plans())
def test_merge_and_apply_never_mutate_the_given_state(plan):
    state, moduledef = build(plan).partition()
    snapshot = {path: (variable, variable.value) for path, variable in state.items()}

    def unchanged():
        assert list(state) == list(snapshot)
        for path, (variable, value) in snapshot.items():
            assert state[path] is variable and state[path].value is value

    merged = moduledef.merge(state)
    for variable in first_paths(merged).values():  # eager updates of the merged module
        variable.value = variable.value + 1
    unchanged()
    merged.update_state(moduledef.merge(state).partition()[0])
    unchanged()

    out, (new_state, new_moduledef) = moduledef.apply(state)()
    unchanged()
    assert out == "called" and new_moduledef == moduledef
    assert list(new_state) == list(state)
    for path in state:
        assert_values_equal(new_state[path].value, state[path].value + 1, path)


@given(graph_plans())
def test_update_state_then_partition_gives_the_state(plan):
    source = build(plan)
    state, _ = source.partition()
    target = build(plan)
    for variable in first_paths(target).values():
        variable.value = variable.value - 1
    target.update_state(state)
    assert_states_equal(target.partition()[0], state)


# --- filter splits ----------------------------------------------------------------------


@given(graph_plans(), st.lists(filters_strategy, min_size=1, max_size=4))
def test_split_is_exhaustive_disjoint_and_first_match(plan, filters):
    state, _ = build(plan).partition()
    predicates = [nnx.to_predicate(f) for f in filters]
    *parts, rest = state.split(*filters, ...)
    assert len(parts) == len(filters)
    seen = [path for part in (*parts, rest) for path in part]
    assert sorted(seen) == sorted(state)  # exhaustive and disjoint
    for i, part in enumerate(parts):
        assert list(part) == sorted(part, key=path_key)
        for path in part:
            assert part[path] is state[path]
            assert predicates[i](path, state[path])
            assert not any(p(path, state[path]) for p in predicates[:i])
    for path in rest:
        assert not any(p(path, state[path]) for p in predicates)


@given(graph_plans(), st.lists(filters_strategy, min_size=1, max_size=4))
def test_split_without_ellipsis_raises_exactly_when_something_is_left(plan, filters):
    state, _ = build(plan).partition()
    leftover = [p for p, v in state.items() if not any(nnx.to_predicate(f)(p, v) for f in filters)]
    try:
        state.split(*filters)
    except ValueError as error:
        assert leftover
        assert all(repr(p) in str(error) for p in leftover[:10])
    else:
        assert not leftover


@given(graph_plans(), st.lists(filters_strategy, min_size=1, max_size=3))
def test_filter_is_the_union_of_matches(plan, filters):
    state, _ = build(plan).partition()
    selected = state.filter(*filters)
    expected = [p for p, v in state.items() if any(nnx.to_predicate(f)(p, v) for f in filters)]
    assert list(selected) == expected


# --- States: order, pytree, Linen layout --------------------------------------------------

names = st.text(alphabet="ab0A-._", min_size=1, max_size=3)
nested_trees = st.recursive(
    st.integers(0, 9),
    lambda inner: st.dictionaries(names, inner, min_size=1, max_size=3),
    max_leaves=8,
)


def flat_paths(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flat_paths(value, (*prefix, key))
        else:
            yield "/".join((*prefix, key))


@given(st.dictionaries(names, nested_trees, min_size=1, max_size=3), st.randoms())
def test_state_order_is_path_parts_level_by_level(tree, random):
    paths = list(flat_paths(tree))
    random.shuffle(paths)
    jax_order = [
        "/".join(k.key for k in keypath) for keypath, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    assert sorted(paths, key=path_key) == jax_order
    half = len(paths) // 2
    built = [
        nnx.State({p: nnx.Param(0) for p in paths}),
        nnx.State(**{p: nnx.Param(0) for p in paths}),
        nnx.State.merge({p: nnx.Param(0) for p in paths[:half]}, {p: nnx.Param(0) for p in paths[half:]}),
    ]
    grown = nnx.State()
    for p in paths:
        grown[p] = nnx.Param(0)
    updated = nnx.State({p: nnx.Param(0) for p in paths[:half]})
    updated.update({p: nnx.Param(0) for p in paths[half:]})
    for state in (*built, grown, updated, updated | {}, jax.tree.map(lambda x: x, grown)):
        assert list(state) == jax_order


@st.composite
def states(draw, canonical=False):
    """A State of random Variable kinds; `canonical`: only the types `from_variables`
    builds (Param, BatchStat, PropCache for its own collection, else Variable), no sharding."""
    tree = draw(st.dictionaries(names, nested_trees, min_size=0, max_size=3))
    paths = list(flat_paths(tree))
    state = {}
    for path in paths:
        kind, value, sharding, tag = draw(variable_specs())
        if canonical:
            kind = {"tagged": "counts"}.get(kind, kind)
            sharding = None
        state[path] = make_variable(kind, value, sharding, tag)
    return nnx.State(state)


@given(states())
def test_state_flatten_unflatten_is_an_exact_inverse(state):
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert len(leaves) == len(state)
    assert all(leaf is v.value for leaf, v in zip(leaves, state.values(), strict=True))
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert_states_equal(rebuilt, state)
    assert all(rebuilt[p] is not state[p] for p in state)
    with_path, treedef_with_path = jax.tree_util.tree_flatten_with_path(state)
    assert treedef_with_path == treedef
    assert [path for path, _ in with_path] == [
        (jax.tree_util.DictKey(p), jax.tree_util.GetAttrKey("value")) for p in state
    ]


@given(states())
def test_tree_map_keeps_types_metadata_and_order(state):
    mapped = jax.tree.map(lambda x: x * 2, state)
    assert type(mapped) is nnx.State and list(mapped) == list(state)
    for path in state:
        assert type(mapped[path]) is type(state[path])
        assert metadata(mapped[path]) == metadata(state[path])
        assert_values_equal(mapped[path].value, state[path].value * 2, path)


@given(states(canonical=True))
def test_from_variables_inverts_to_variables(state):
    assert_states_equal(nnx.from_variables(nnx.to_variables(state)), state)


@st.composite
def linen_variables(draw):
    """Linen variables ``{collection: nested dict}``; each path in one collection."""
    tree = draw(st.dictionaries(names, nested_trees, min_size=0, max_size=3))
    variables: dict = {}
    for path in flat_paths(tree):
        collection = draw(st.sampled_from(["params", "batch_stats", "counts", "test_properties_misc"]))
        node = variables.setdefault(collection, {})
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = draw(variable_values)
    return variables


@given(linen_variables())
def test_to_variables_inverts_from_variables(variables):
    state = nnx.from_variables(variables)
    expected_paths = [p for tree in variables.values() for p in flat_paths(tree)]
    assert list(state) == sorted(expected_paths, key=path_key)
    for collection, tree in variables.items():
        for path in flat_paths(tree):
            assert type(state[path]) is nnx.variable_type(collection)
            assert state[path].collection == collection and state[path].sharding is None
    again = nnx.to_variables(state)
    assert jax.tree.structure(again) == jax.tree.structure(variables)
    assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables), strict=True))
