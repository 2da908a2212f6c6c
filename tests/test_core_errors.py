"""Every core error, matched by its text: it names the path, what was found, and the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_bridge as nnx


class Bag(nnx.Module):
    def __init__(self, **attributes):
        vars(self).update(attributes)


class Linear(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((2, 2)))
        self.b = nnx.Param(jnp.zeros(2))


# --- merge: missing and unknown paths ----------------------------------------------------


def test_merge_missing_path():
    state, moduledef = Bag(lin=Linear(), n=nnx.Variable("counts", 0)).partition()
    del state["lin/w"]
    with pytest.raises(
        ValueError,
        match=r"merge: the State does not fit the Bag ModuleDef: missing path\(s\) 'lin/w'\. "
        r"Pass the States from this module's partition\(\) \(all of them, e.g\. "
        r"moduledef\.merge\(params, counts\)\), with no extra paths\.",
    ):
        moduledef.merge(state)


def test_merge_with_only_some_of_the_states_names_the_rest():
    params, counts, moduledef = Bag(lin=Linear(), n=nnx.Variable("counts", 0)).partition("params", "counts")
    with pytest.raises(ValueError, match=r"missing path\(s\) 'lin/b', 'lin/w'\."):
        moduledef.merge(params.filter(nnx.Nothing()), counts)
    with pytest.raises(ValueError, match=r"missing path\(s\) 'n'\."):
        moduledef.apply(params)()


def test_merge_unknown_path():
    state, moduledef = Linear().partition()
    state["extra/v"] = nnx.Param(1.0)
    with pytest.raises(
        ValueError, match=r"merge: the State does not fit the Linear ModuleDef: unknown path\(s\) 'extra/v'\."
    ):
        moduledef.merge(state)


def test_merge_missing_and_unknown_paths_together():
    state, moduledef = Linear().partition()
    state["W"] = state.pop("w")
    with pytest.raises(ValueError, match=r"missing path\(s\) 'w'; unknown path\(s\) 'W'\."):
        moduledef.merge(state)


def test_merge_lists_at_most_ten_missing_paths():
    _, moduledef = Bag(layers=[Linear() for _ in range(6)]).partition()
    with pytest.raises(ValueError, match=r"missing path\(s\) 'layers/0/b', .*'layers/4/w' and 2 more\."):
        moduledef.merge(nnx.State())


# --- update_state: unknown paths ---------------------------------------------------------


@pytest.mark.parametrize(
    "path,reason",
    [
        ("x", r"Bag at the root has no attribute 'x'"),
        ("lin/x", r"Linear at 'lin' has no attribute 'x'"),
        ("layers/2/w", r"the list at 'layers' has no index '2'"),
        ("layers/first/w", r"the list at 'layers' has no index 'first'"),
        ("table/b", r"the dict at 'table' has no key 'b'"),
        ("size/x", r"'size' is a int, not a Module or container"),
        ("size", r"it holds a int, not a Variable"),
        ("lin", r"it holds a Linear, not a Variable"),
    ],
)
def test_update_state_unknown_path(path, reason):
    model = Bag(lin=Linear(), layers=[Linear(), Linear()], table={"a": Linear()}, size=3)
    with pytest.raises(
        nnx.UnknownPathError,
        match=rf"update_state: unknown path '{path}': {reason}\. "
        r"Use the paths from this module's partition\(\)\.",
    ):
        model.update_state(nnx.State({path: nnx.Param(1.0)}))


def test_unknown_path_error_is_a_key_error():
    with pytest.raises(KeyError):
        Linear().update_state(nnx.State({"x": nnx.Param(1.0)}))


# --- partition: what a Module may hold ---------------------------------------------------


# Attribute names and dict keys containing '/' are escaped path segments now: see
# tests/test_state_keys.py.


@pytest.mark.parametrize(
    "value,path,type_name",
    [({1, 2}, "cfg", "set"), ([{3}], "cfg/0", "set"), ({"k": bytearray(b"x")}, "cfg/k", "bytearray")],
)
def test_unhashable_static_field(value, path, type_name):
    with pytest.raises(
        TypeError,
        match=rf"Bag has an unhashable static attribute at path '{path}' of type {type_name}\. "
        r"Static attributes become part of the hashable ModuleDef: use a hashable value "
        r"\(e\.g\. a tuple\), or wrap the value in a Variable if it is state\.",
    ):
        Bag(inner=Bag(), cfg=value).partition()


@pytest.mark.parametrize("array", [jnp.ones((2, 3)), np.ones((2, 3), np.float32)], ids=["jax", "numpy"])
def test_array_as_plain_attribute(array):
    with pytest.raises(
        TypeError,
        match=r"Bag stores an array as a plain attribute at path 'inner/kernel' "
        r"\(shape \(2, 3\), dtype float32\)\. Arrays must live in Variables: wrap it, "
        r"e\.g\. nnx\.Param\(x\) or nnx\.Variable\('constants', x\)\.",
    ):
        Bag(inner=Bag(kernel=array)).partition()


def test_array_inside_a_container():
    with pytest.raises(TypeError, match=r"stores an array as a plain attribute at path 'ws/1'"):
        Bag(ws=[nnx.Param(1.0), jnp.ones(2)]).partition()


def test_tracer_as_plain_attribute():
    def f(x):
        Bag(x=x).partition()
        return x

    with pytest.raises(TypeError, match=r"stores an array as a plain attribute at path 'x'"):
        jax.jit(f)(jnp.ones(2))


def test_variable_holding_a_module():
    with pytest.raises(
        TypeError,
        match=r"The Param at path 'inner/sub' holds a Module \(Linear\); Variables hold arrays and "
        r"other leaf values\. Assign the Module directly as an attribute instead\.",
    ):
        Bag(inner=Bag(sub=nnx.Param(Linear()))).partition()


def test_context_stored_as_attribute():
    with pytest.raises(
        TypeError,
        match=r"Bag stores a Context at path 'ctx'\. A Context is for building and calling modules only",
    ):
        Bag(ctx=nnx.Context(0)).partition()


def test_empty_dict_key():
    with pytest.raises(
        ValueError,
        match=r"Dict key '' at path 'table' is empty; State paths need non-empty names\. "
        r"Use non-empty keys\.",
    ):
        Bag(table={"": nnx.Param(1.0)}).partition()


def test_dict_keys_with_the_same_string_form():
    with pytest.raises(
        ValueError,
        match=r"Dict at path 'table' has keys with the same string form \(\[1, '1'\]\); State paths "
        r"could not tell them apart\. Use distinct string keys\.",
    ):
        Bag(table={1: nnx.Param(1.0), "1": nnx.Param(2.0)}).partition()


# --- Context -----------------------------------------------------------------------------


def test_missing_rng_stream():
    ctx = nnx.Context({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)})
    with pytest.raises(
        nnx.MissingRngStreamError,
        match=r"The Context has no RNG stream 'noise' \(streams available: 'dropout', 'params'\)\. "
        r"Pass a key for it, e.g\. Context\(\{\.\.\., 'noise': jax\.random\.PRNGKey\(0\)\}\), "
        r"or build the Context from one key to derive every stream\.",
    ):
        ctx.make_rng("noise")


def test_missing_rng_stream_in_an_empty_context():
    with pytest.raises(
        nnx.MissingRngStreamError, match=r"no RNG stream 'params' \(streams available: none\)"
    ):
        nnx.Context({}).make_rng("params")


def test_missing_rng_stream_while_building_a_module():
    class Dropout(nnx.Module):
        def __init__(self, *, ctx):
            self.key = nnx.Variable("rngs", ctx.make_rng("dropout"))

    with pytest.raises(
        nnx.MissingRngStreamError, match=r"no RNG stream 'dropout' \(streams available: 'params'\)"
    ):
        Dropout(ctx=nnx.Context({"params": 0}))


# --- split remainder and invalid filters -------------------------------------------------


def test_split_remainder_lists_the_leftover_paths():
    state = nnx.State({"a/w": nnx.Param(1.0), "a/n": nnx.Variable("counts", 0), "m": nnx.BatchStat(0.0)})
    with pytest.raises(
        ValueError,
        match=r"split: 2 variable\(s\) matched none of the filters \('params',\): 'a/n', 'm'\. "
        r"Add a filter for them, or end the filters with \.\.\. to collect the rest\.",
    ):
        state.split("params")


def test_partition_remainder_lists_the_leftover_paths():
    model = Bag(lin=Linear(), n=nnx.Variable("counts", 0))
    with pytest.raises(
        ValueError,
        match=r"split: 2 variable\(s\) matched none of the filters \('counts',\): 'lin/b', 'lin/w'\.",
    ):
        model.partition("counts")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.filter(3),
        lambda s: s.split("params", 3),
        lambda s: Linear().partition(3, ...),
        lambda s: nnx.Not(3),
    ],
    ids=["filter", "split", "partition", "Not"],
)
def test_invalid_filter(call):
    with pytest.raises(
        TypeError,
        match=r"Invalid filter 3 \(int\)\. A filter is a collection name \(str\), a Variable subclass, "
        r"\.\.\., a predicate \(path, variable\) -> bool, or one of "
        r"nnx\.Not/All/Any/PathContains/Everything/Nothing\.",
    ):
        call(nnx.State({"w": nnx.Param(1.0)}))


def test_non_variable_type_as_filter():
    with pytest.raises(
        TypeError,
        match=r"A type used as a filter must be a Variable subclass such as nnx\.Param; found int\.",
    ):
        nnx.State({"w": nnx.Param(1.0)}).filter(int)


def test_update_state_rejects_a_shape_mismatch():
    class Holder(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros((3, 4)))

    with pytest.raises(
        ValueError,
        match=r"update_state: shape mismatch at path 'w': the module has "
        r"\(3, 4\), the State has \(5, 7\)",
    ):
        Holder().update_state(nnx.State({"w": nnx.Param(jnp.ones((5, 7)))}))


def test_update_state_rejects_another_collection():
    class Holder(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros(2))

    with pytest.raises(
        ValueError,
        match=r"path 'w' holds a Param of collection 'params', but the State "
        r"has collection 'batch_stats' there",
    ):
        Holder().update_state(nnx.State({"w": nnx.BatchStat(jnp.ones(2))}))
