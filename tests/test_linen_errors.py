"""The bridge is strict like Linen: every misuse raises an error that names the path and the fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bridge_models import MLP, Dense

import nnx_bridge as nnx

KEY = jax.random.PRNGKey(0)
X = jnp.ones((2, 3))


@pytest.fixture
def model_and_variables():
    model = nnx.to_linen(MLP, [3, 4, 2])
    return model, model.init(KEY, X)


def test_write_to_immutable_collection(model_and_variables):
    model, variables = model_and_variables
    with pytest.raises(
        ValueError,
        match=r"updated 'counts/steps', but collection 'counts' is not "
        r"mutable\. Pass mutable=\['counts'\] to apply",
    ):
        model.apply(variables, X, train=True)


def test_missing_rng_stream_is_named(model_and_variables):
    model, variables = model_and_variables
    with pytest.raises(
        nnx.MissingRngStreamError,
        match=r"needs the RNG stream 'noise', but the Linen call got RNGs for: none\. "
        r"Pass it, e.g\. model\.apply\(variables, \.\.\., rngs=\{'noise': key\}\)",
    ):
        model.apply(variables, X, method="noisy")


def test_missing_variable_names_its_path(model_and_variables):
    model, variables = model_and_variables
    with pytest.raises(KeyError, match=r"variable 'counts/steps' is missing \(expected shape \(\)\)"):
        model.apply({"params": variables["params"]}, X)
    params = {"layers": {"0": variables["params"]["layers"]["0"]}}
    with pytest.raises(KeyError, match=r"variable 'params/layers/1/bias' is missing"):
        model.apply({"params": params, "counts": variables["counts"]}, X)


def test_unexpected_variable_names_its_path(model_and_variables):
    model, variables = model_and_variables
    extra = {**variables, "params": {**variables["params"], "head": {"kernel": jnp.ones((2, 2))}}}
    with pytest.raises(
        KeyError,
        match=r"unexpected variable\(s\) 'params/head/kernel': the module has "
        r"no such variable",
    ):
        model.apply(extra, X)


def test_shape_mismatch_names_path_and_both_shapes(model_and_variables):
    model, variables = model_and_variables
    bad = jax.tree.map(lambda x: x, variables)
    bad["params"]["layers"]["1"]["kernel"] = jnp.ones((4, 3))
    with pytest.raises(
        ValueError,
        match=r"variable 'params/layers/1/kernel' has shape \(4, 3\), but the "
        r"module expects \(4, 2\)",
    ):
        model.apply(bad, X)


def test_nested_paths_include_the_linen_scope():
    import flax.linen as nn

    class Parent(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nnx.to_linen(Dense, 3, 4, name="body")(x)

    variables = Parent().init(KEY, X)
    variables["params"]["body"]["kernel"] = jnp.ones((3, 5))
    with pytest.raises(
        ValueError,
        match=r"ToLinen\(Dense\) at 'body': variable 'params/body/kernel' has "
        r"shape \(3, 5\)",
    ):
        Parent().apply(variables, X)


def test_unhashable_configuration_is_rejected_at_construction():
    with pytest.raises(TypeError, match=r"to_linen: args\[0\] is an unhashable ndarray"):
        nnx.to_linen(MLP, np.ones(3))


def test_factory_must_return_a_module():
    with pytest.raises(TypeError, match=r"returned a int, not an nnx_bridge Module"):
        nnx.to_linen(lambda *, ctx: 3).init(KEY, X)


def test_structure_change_during_call():
    class Grows(nnx.Module):
        def __init__(self, *, ctx):
            self.w = nnx.Param(jnp.ones(3))

        def __call__(self, x):
            self.extra = nnx.Param(jnp.zeros(3))
            return x * self.w.value

    with pytest.raises(ValueError, match=r"calling '__call__' changed the module's structure"):
        nnx.to_linen(Grows).init(KEY, X)


def test_unknown_method_name(model_and_variables):
    model, variables = model_and_variables
    with pytest.raises(
        AttributeError,
        match=r"method='decode' is not a method of MLP; its methods are: "
        r"__call__, encode, .*Pass method= one of them\.",
    ):
        model.apply(variables, X, method="decode")
