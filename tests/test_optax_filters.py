"""labels / mask: the filter language driving optax.multi_transform, masked and partition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from bridge_models import MLP

import nnx_bridge as nnx

KEY = jax.random.PRNGKey(0)
X = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)


@pytest.fixture
def bridged():
    model = nnx.to_linen(MLP, [3, 4, 4, 2])
    return model, model.init(KEY, X)


def loss_fn(model, params, counts):
    return jnp.sum(model.apply({"params": params, "counts": counts}, X) ** 2)


def test_labels_and_mask_on_a_params_dict(bridged):
    _, variables = bridged
    params = variables["params"]
    labels = nnx.labels(params, {"frozen": nnx.PathContains("0")}, default="train")
    assert labels["layers"]["0"] == {"bias": "frozen", "kernel": "frozen"}
    assert labels["layers"]["1"] == {"bias": "train", "kernel": "train"}
    kernels = nnx.mask(params, nnx.PathContains("kernel"))
    assert jax.tree.leaves(kernels) == [False, True] * 3


def test_full_variables_dict_uses_top_level_collections(bridged):
    _, variables = bridged
    labels = nnx.labels(variables, {"p": nnx.Param, "c": "counts"}, variables=True)
    assert labels["counts"] == {"steps": "c"}
    assert set(jax.tree.leaves(labels["params"])) == {"p"}
    # a single-collection dict counts as 'params' unless told otherwise
    assert nnx.mask(variables["counts"], "counts", collection="counts") == {"steps": True}
    assert nnx.mask(variables["counts"], "counts", allow_empty=True) == {"steps": False}


def test_labels_without_default_must_cover_everything(bridged):
    _, variables = bridged
    with pytest.raises(
        ValueError,
        match=r"labels: 6 variable\(s\) matched none of the filters for labels "
        r"\['frozen'\]: 'layers/0/bias', 'layers/0/kernel'",
    ):
        nnx.labels(variables["params"], {"frozen": nnx.PathContains("encoder")})


def test_freezing_a_submodule_with_multi_transform(bridged):
    model, variables = bridged
    params = variables["params"]
    tx = optax.multi_transform(
        {"train": optax.adam(1e-2), "frozen": optax.set_to_zero()},
        nnx.labels(params, {"frozen": nnx.PathContains("0")}, default="train"),
    )
    opt_state = tx.init(params)
    new = params
    for _ in range(3):
        grads = jax.grad(lambda p: loss_fn(model, p, variables["counts"]))(new)
        updates, opt_state = tx.update(grads, opt_state, new)
        new = optax.apply_updates(new, updates)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(new["layers"]["0"][name], params["layers"]["0"][name])  # bitwise
    assert not np.allclose(new["layers"]["1"]["kernel"], params["layers"]["1"]["kernel"])


def test_weight_decay_masked_to_kernels_only(bridged):
    _, variables = bridged
    params = jax.tree.map(lambda x: x + 1.0, variables["params"])
    tx = optax.add_decayed_weights(0.5, mask=nnx.mask(params, nnx.PathContains("kernel")))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    for layer in params["layers"]:
        np.testing.assert_array_equal(updates["layers"][layer]["bias"], 0.0)
        np.testing.assert_allclose(
            updates["layers"][layer]["kernel"], 0.5 * params["layers"][layer]["kernel"]
        )
    masked = optax.masked(optax.sgd(1.0), nnx.mask(params, nnx.PathContains("kernel")))
    updates, _ = masked.update(jax.tree.map(jnp.ones_like, params), masked.init(params), params)
    assert updates["layers"]["0"]["kernel"].min() == -1.0
    np.testing.assert_array_equal(updates["layers"]["0"]["bias"], 1.0)  # passed through unmasked


def test_labels_on_a_state_drive_optax_partition():
    module = MLP([3, 4, 2], ctx=nnx.Context(0))
    params, counts, moduledef = module.partition(nnx.Param, ...)
    labels = nnx.labels(params, {"head": nnx.PathContains("1")}, default="body")
    assert isinstance(labels, nnx.State) and list(labels) == list(params)
    assert [v.value for v in labels.values()] == ["body", "body", "head", "head"]
    tx = optax.transforms.partition({"body": optax.set_to_zero(), "head": optax.sgd(0.1)}, labels)
    state = tx.init(params)

    def loss(p):
        y, _ = moduledef.apply(p, counts)(X)
        return jnp.sum(y**2)

    grads = jax.grad(loss)(params)
    updates, _ = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert isinstance(new, nnx.State) and type(new["layers/0/kernel"]) is nnx.Param
    np.testing.assert_array_equal(new["layers/0/kernel"].value, params["layers/0/kernel"].value)
    assert not np.allclose(new["layers/1/kernel"].value, params["layers/1/kernel"].value)
    mask = nnx.mask(params, nnx.PathContains("kernel"))
    assert [v.value for v in mask.values()] == [False, True, False, True]


def test_labels_see_sharding_of_boxed_leaves():
    from bridge_models import Dense

    variables = nnx.to_linen(Dense, 3, 4, sharding=("data", "model")).init(KEY, X)
    sharded = nnx.mask(variables, lambda path, v: v.sharding is not None, variables=True)
    assert sharded == {"params": {"bias": False, "kernel": True}}
