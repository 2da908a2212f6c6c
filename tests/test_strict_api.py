"""Strict API (issue 12): Context, filters, optax helpers, sharding and the bridge name the fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bridge_models import MLP
from flax import linen
from jax.sharding import PartitionSpec as P

import nnx_bridge as nnx
from nnx_bridge.linen.from_linen import from_linen
from nnx_bridge.sharding import (
    get_named_sharding,
    get_partition_spec,
    logical_to_mesh,
    sharded_init,
)

X = jnp.ones((2, 3))


def same(a, b):
    return bool(np.array_equal(jax.random.key_data(a), jax.random.key_data(b)))


# --- Context ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [0, jax.random.PRNGKey(3), jax.random.key(3)])
def test_streams_of_a_single_key_context_never_share_keys(key):
    params, dropout = nnx.Context(key).make_rng("params"), nnx.Context(key).make_rng("dropout")
    assert not same(params, dropout)
    assert same(nnx.Context(key).make_rng("params"), params)  # deterministic


@pytest.mark.parametrize(
    "key,error,found",
    [
        (np.arange(3), TypeError, r"an array of dtype int64 and shape \(3,\)\. To make a key from it"),
        (
            jnp.array(0),
            TypeError,
            r"an array of dtype int32 and shape \(\)\. For an int seed, pass int\(x\)\.",
        ),
        (np.uint32(5), TypeError, r"an array of dtype uint32 and shape \(\)\. For an int seed"),
        (jnp.ones((3,), jnp.uint32), TypeError, r"an array of dtype uint32 and shape \(3,\)"),
        (2**64, ValueError, r"the seed 18446744073709551616 does not fit in a signed 64-bit int"),
        (2**63, ValueError, r"the seed 9223372036854775808 does not fit in a signed 64-bit int\. Accepted: "),
        (1.5, TypeError, r"found a float\."),
        (None, TypeError, r"found a NoneType\."),
        (True, TypeError, r"found a bool\."),
    ],
)
def test_context_rejects_what_is_not_a_key_or_seed(key, error, found):
    with pytest.raises(error, match=r"Context\(key\)(: .*)? must be an int seed|Context\(key\): the seed"):
        nnx.Context(key)
    with pytest.raises(error, match=found):
        nnx.Context(key)


def test_context_names_the_stream_and_rejects_non_str_names():
    with pytest.raises(
        TypeError,
        match=r"Context stream 'dropout' must be an int seed .*found an array of dtype "
        r"float32",
    ):
        nnx.Context({"params": 0, "dropout": jnp.ones(2)})
    with pytest.raises(TypeError, match=r"stream names are str such as 'params' or 'dropout'; found 0"):
        nnx.Context({0: 1})


def test_context_accepts_batches_of_keys_for_vmap():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    out = jax.vmap(lambda c: c.make_rng("params"))(nnx.Context(keys))
    assert out.shape == (3, 2)


# --- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,expected",
    [
        ("l1/kernel", True),
        ("encoder/l1/kernel", True),
        ("l1/kernel/x", True),
        ("l1/kernel2", False),
        ("xl1/kernel", False),
        ("l1/bias/kernel", False),
        ("kernel/l1", False),
    ],
)
def test_path_contains_matches_consecutive_parts(path, expected):
    assert nnx.PathContains("l1/kernel")(path, nnx.Param(1.0)) is expected


@pytest.mark.parametrize("name", ["", "/kernel", "l1/", "l1//kernel"])
def test_path_contains_rejects_empty_parts(name):
    with pytest.raises(
        ValueError,
        match=r"PathContains: name must be a non-empty path part such as 'kernel', "
        rf"or several consecutive parts .*; found {name!r}\.",
    ):
        nnx.PathContains(name)


@pytest.mark.parametrize(
    "predicate,signature",
    [
        (lambda path: True, r"\(path\)"),
        (lambda path, variable, extra: True, r"\(path, variable, extra\)"),
        (lambda: True, r"\(\)"),
    ],
)
def test_predicate_with_the_wrong_arity(predicate, signature):
    state = nnx.State({"w": nnx.Param(1.0)})
    with pytest.raises(
        TypeError,
        match=rf"The predicate filter .*<lambda>{signature} cannot be called as "
        r"predicate\(path, variable\): filters are called with the Variable's "
        r"path \('a/b/c'\) and the Variable",
    ):
        state.filter(predicate)


def test_predicates_with_defaults_or_varargs_are_fine():
    state = nnx.State({"w": nnx.Param(1.0)})
    assert list(state.filter(lambda path, variable, extra=1: True)) == ["w"]
    assert list(state.filter(lambda *args: True)) == ["w"]


# --- labels / mask ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def params():
    model = nnx.to_linen(MLP, [3, 4, 2])
    return model.init(jax.random.PRNGKey(0), X)["params"]


@pytest.mark.parametrize(
    "call",
    [
        lambda p: nnx.labels(p, {"frozen": nnx.PathContains("encoder")}, default="train"),
        lambda p: nnx.mask(p, nnx.PathContains("kernels")),
        lambda p: nnx.labels(p, {"a": nnx.PathContains("layers"), "b": nnx.PathContains("kernel")}),
    ],
)
def test_a_filter_selecting_nothing_is_an_error_listing_the_paths(params, call):
    with pytest.raises(
        ValueError,
        match=r"(labels|mask): the filter( for label '\w+')? \(.*\) selects no "
        r"variable, so it would freeze or decay nothing\. The paths are: "
        r"'layers/0/bias', 'layers/0/kernel', .*pass allow_empty=True",
    ):
        call(params)


def test_selecting_nothing_on_purpose(params):
    mask = nnx.mask(params, nnx.PathContains("encoder"), allow_empty=True)
    assert not any(jax.tree.leaves(mask))
    labels = nnx.labels(params, {"frozen": nnx.PathContains("encoder")}, default="train", allow_empty=True)
    assert set(jax.tree.leaves(labels)) == {"train"}


def test_labels_need_a_mapping(params):
    with pytest.raises(
        TypeError,
        match=r"labels: label_filters must be a mapping \{label: filter\}, e\.g\. "
        r"\{'frozen': nnx\.PathContains\('encoder'\)\}; found list",
    ):
        nnx.labels(params, [nnx.PathContains("layers")])


def test_a_submodule_named_params_is_not_taken_for_the_variables_dict():
    params = {"params": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    labels = nnx.labels(params, {"frozen": nnx.PathContains("params")}, default="train")
    assert labels == {"params": {"kernel": "frozen"}, "head": {"kernel": "train"}}
    variables = {"params": params, "counts": {"n": jnp.zeros(())}}
    both = nnx.labels(variables, {"p": nnx.Param, "c": "counts"}, variables=True)
    assert both["counts"] == {"n": "c"} and both["params"]["params"] == {"kernel": "p"}
    with pytest.raises(
        ValueError,
        match=r"If the tree is a whole Linen variables dict \{collection: \{\.\.\.\}\}, "
        r"pass variables=True\.",
    ):
        nnx.labels(variables, {"p": nnx.Param, "c": "counts"})


# --- sharding --------------------------------------------------------------------------------

STATE = nnx.State({"w": nnx.Param(jnp.ones((4, 2)), sharding=("embed", "mlp"))})


def test_flat_rules_are_an_error():
    with pytest.raises(
        TypeError,
        match=r"rules must be a sequence of \(logical name, mesh axis\) pairs, e\.g\. "
        r"rules=\(\('batch', 'data'\), \('hidden', 'model'\)\) .*found the entry "
        r"'embed' in \('embed', 'data', 'mlp', 'model'\)\. Pair the names up",
    ):
        get_partition_spec(STATE, rules=("embed", "data", "mlp", "model"))
    with pytest.raises(TypeError, match=r"found the entry 'batch'"):
        logical_to_mesh(("batch",), rules=("batch", "data"))


def test_mesh_none_is_an_error():
    with pytest.raises(
        TypeError,
        match=r"get_named_sharding: mesh must be a jax\.sharding\.Mesh, e\.g\. "
        r"jax\.make_mesh\(\(n,\), \('data',\)\) .*; found NoneType\.",
    ):
        get_named_sharding(STATE, None)
    with pytest.raises(TypeError, match=r"sharded_init: mesh must be a jax\.sharding\.Mesh"):
        sharded_init(nnx.nn.Linear, 2, 2, mesh=None)


def test_logical_names_without_any_rules_are_an_error():
    model = nnx.ToLinen(nnx.nn.Linear, args=(3, 4), kwargs={"sharding": ("embed", "mlp")}, logical_axes=True)
    variables = model.init(jax.random.PRNGKey(0), X)
    with pytest.raises(
        ValueError,
        match=r"get_partition_spec: the variable at \['params'\]\['bias'\] names "
        r"logical axes \('mlp',\) .*no logical axis rules are given, so "
        r"every axis would silently be replicated\. Pass rules=",
    ):
        get_partition_spec(variables)
    specs = get_partition_spec(
        variables, rules=(("mlp", "model"),)
    )  # one unmapped name: replicated, as Linen
    assert specs["params"]["kernel"] == P(None, "model")


# --- the Linen bridge ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridged():
    model = nnx.to_linen(MLP, [3, 4, 2])
    return model, model.init(jax.random.PRNGKey(0), X)


class Secretive(nnx.Module):
    def __init__(self, *, ctx):
        self.w = nnx.Param(jnp.ones(3))

    def __call__(self, x):
        return self._scale(x)

    def _scale(self, x):
        return x * self.w.value


def test_method_naming_a_missing_method(bridged):
    model, variables = bridged
    with pytest.raises(
        AttributeError,
        match=r"ToLinen\(MLP\) at '/': method='decode' is not a method of MLP; "
        r"its methods are: __call__, encode, .*noisy.*\. Pass method= one",
    ):
        model.apply(variables, X, method="decode")


def test_method_naming_a_private_method():
    model = nnx.to_linen(Secretive)
    variables = model.init(jax.random.PRNGKey(0), X)
    with pytest.raises(
        AttributeError,
        match=r"method='_scale' is a private method of Secretive; the bridge runs "
        r"public methods only \(__call__, .*\)\. Call it from a public method",
    ):
        model.apply(variables, X, method="_scale")


def test_to_linen_given_a_built_module():
    with pytest.raises(
        TypeError,
        match=r"to_linen takes a Module class \(or a function building one\) and its "
        r"arguments, not a built MLP module: .*Write nnx\.to_linen\(MLP, \*args",
    ):
        nnx.to_linen(MLP([3, 2], ctx=nnx.Context(0)))


def test_to_linen_given_ctx():
    with pytest.raises(
        TypeError,
        match=r"to_linen\(MLP\): do not pass ctx=: the bridge supplies it, a Context "
        r"drawn from the RNGs given to init/apply",
    ):
        nnx.to_linen(MLP, [3, 2], ctx=nnx.Context(0))


def test_factory_without_ctx():
    def build(sizes):
        return MLP(sizes, ctx=nnx.Context(0))

    with pytest.raises(
        TypeError,
        match=r"to_linen\(.*build\): the factory takes no `ctx` keyword, but the bridge "
        r"calls it as factory\(\*args, ctx=ctx, \*\*kwargs\)\. Give it a keyword-only "
        r"ctx parameter",
    ):
        nnx.to_linen(build, [3, 2])


class NumpyInit(nnx.Module):
    def __init__(self, *, ctx):
        draw = np.asarray(jax.random.normal(ctx.make_rng("params"), (3,)))  # needs a concrete value
        self.w = nnx.Param(jnp.asarray(draw))

    def __call__(self, x):
        return x * self.w.value


def test_apply_before_init_with_an_init_needing_concrete_values():
    model = nnx.to_linen(NumpyInit)
    with pytest.raises(
        TypeError,
        match=r"to_linen\(NumpyInit\): apply was called before init in this process, so "
        r"the bridge built the module abstractly \(under jax\.eval_shape\) .*"
        r"TracerArrayConversionError.*Call model\.init\(\.\.\.\) once in this "
        r"process before apply",
    ):
        model.apply({"params": {"w": jnp.ones(3)}}, X)


def test_from_linen_without_sample_inputs():
    with pytest.raises(
        TypeError,
        match=r"from_linen\(Dense\): init needs sample inputs for Dense\.__call__\(inputs"
        r".*missing a required argument: 'inputs'\. Pass them after the module, "
        r"e\.g\. from_linen\(module, x, ctx=ctx\)",
    ):
        from_linen(linen.Dense(3), ctx=nnx.Context(0))
    with pytest.raises(TypeError, match=r"init got sample inputs that do not fit"):
        from_linen(linen.Dense(3), X, X, ctx=nnx.Context(0))


def test_to_linen_given_a_linen_module():
    with pytest.raises(
        TypeError,
        match=r"to_linen wraps nnx_bridge Modules, but it was given the Linen module "
        r"Dense: use a Linen module directly",
    ):
        nnx.to_linen(linen.Dense(3))
