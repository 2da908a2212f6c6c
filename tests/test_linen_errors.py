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


def _without_counts(v):
    return {"params": v["params"]}


def _only_first_layer(v):
    return {"params": {"layers": {"0": v["params"]["layers"]["0"]}}, "counts": v["counts"]}


def _with_extra_head(v):
    return {**v, "params": {**v["params"], "head": {"kernel": jnp.ones((2, 2))}}}


def _misshapen_kernel(v):
    bad = jax.tree.map(lambda x: x, v)
    bad["params"]["layers"]["1"]["kernel"] = jnp.ones((4, 3))
    return bad


def _same(v):
    return v


# Each misuse of `apply`: (how the variables are changed, apply's keywords, error, message).
APPLY_ERRORS = {
    "write to an immutable collection": (
        _same,
        {"train": True},
        ValueError,
        r"updated 'counts/steps', but collection 'counts' is not mutable\. "
        r"Pass mutable=\['counts'\] to apply",
    ),
    "missing RNG stream": (
        _same,
        {"method": "noisy"},
        nnx.MissingRngStreamError,
        r"needs the RNG stream 'noise', but the Linen call got RNGs for: none\. "
        r"Pass it, e\.g\. model\.apply\(variables, \.\.\., rngs=\{'noise': key\}\)",
    ),
    "missing collection": (
        _without_counts,
        {},
        KeyError,
        r"variable 'counts/steps' is missing \(expected shape \(\)\)",
    ),
    "missing variable": (_only_first_layer, {}, KeyError, r"variable 'params/layers/1/bias' is missing"),
    "unexpected variable": (
        _with_extra_head,
        {},
        KeyError,
        r"unexpected variable\(s\) 'params/head/kernel': the module has no such variable",
    ),
    "misshapen variable": (
        _misshapen_kernel,
        {},
        ValueError,
        r"variable 'params/layers/1/kernel' has shape \(4, 3\), but the module expects \(4, 2\)",
    ),
}


@pytest.mark.parametrize("case", APPLY_ERRORS, ids=str)
def test_apply_misuse_names_the_path_and_the_fix(model_and_variables, case):
    model, variables = model_and_variables
    change, kwargs, error, message = APPLY_ERRORS[case]
    with pytest.raises(error, match=message):
        model.apply(change(variables), X, **kwargs)


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
