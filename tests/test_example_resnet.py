"""The ImageNet example's loop (Flax's last Linen ``examples/imagenet/train.py``) on a bridged ResNet.

The loop keeps the example's functions and calls, written in this project's
words: ``initialized`` runs ``jax.jit(model.init)`` outside ``pmap`` on an input
of ``model.dtype``; ``train_step`` (under ``jax.pmap(..., in_axes=(None, 0),
out_axes=(None, 0), axis_name='batch')``) uses half precision with
``DynamicScale``, ``mutable=['batch_stats']`` and ``lax.pmean`` of the
statistics; ``eval_step`` calls with ``train=False``. The model's BatchNorm
layers average over ``axis_name='batch'``. It runs in a subprocess that sees
two simulated CPU devices (``XLA_FLAGS``), so this process keeps one device.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np

DEVICES = 2
HERE = pathlib.Path(__file__).resolve()


def test_resnet_loop_under_pmap_with_half_precision_and_dynamic_scale():
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
           "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), str(HERE.parent)])}
    process = subprocess.run([sys.executable, str(HERE)], env=env, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, (process.stdout + process.stderr)[-3000:]
    line = next(l for l in process.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["devices"] == DEVICES
    assert result["model_dtype"] == "float16" and result["param_dtype"] == "float32"
    assert result["init_mean_abs"] == 0.0 and result["init_var_minus_one_abs"] == 0.0
    assert result["stats_moved"] and result["replicas_agree"]
    assert all(np.isfinite(result["losses"])) and result["scale"] > 0
    assert 0.0 <= result["eval_accuracy"] <= 1.0 and np.isfinite(result["eval_loss"])
    assert result["logits_dtype"] == "float16"


# ---------------------------------------------------------------------------------------------
# Run as a script (in the subprocess): the model and the example's loop.
# ---------------------------------------------------------------------------------------------
NUM_CLASSES = 10


def build_model_classes():
    import flax.linen as nn

    import nnx_bridge as nnx

    class ResNetBlock(nnx.Module):
        def __init__(self, in_features, filters, *, ctx, strides=(1, 1), dtype=jnp.float32):
            conv = functools.partial(nnx.Conv, use_bias=False, dtype=dtype, ctx=ctx)
            norm = functools.partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=dtype,
                                     axis_name="batch", ctx=ctx)
            self.conv1 = conv(in_features, filters, (3, 3), strides=strides)
            self.bn1 = norm(filters)
            self.conv2 = conv(filters, filters, (3, 3))
            self.bn2 = norm(filters, scale_init=jax.nn.initializers.zeros)
            needs_projection = in_features != filters or tuple(strides) != (1, 1)
            self.conv_proj = conv(in_features, filters, (1, 1), strides=strides) if needs_projection else None
            self.norm_proj = norm(filters) if needs_projection else None

        def __call__(self, x, train):
            y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
            y = self.bn2(self.conv2(y), use_running_average=not train)
            if self.conv_proj is not None:
                x = self.norm_proj(self.conv_proj(x), use_running_average=not train)
            return jax.nn.relu(x + y)

    class ResNet(nnx.Module):
        def __init__(self, stage_sizes, num_classes, *, ctx, num_filters=8, dtype=jnp.float32):
            self.conv_init = nnx.Conv(3, num_filters, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                                      use_bias=False, dtype=dtype, ctx=ctx)
            self.bn_init = nnx.BatchNorm(num_filters, momentum=0.9, epsilon=1e-5, dtype=dtype,
                                         axis_name="batch", ctx=ctx)
            blocks, features = [], num_filters
            for i, size in enumerate(stage_sizes):
                for j in range(size):
                    filters = num_filters * 2**i
                    strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                    blocks.append(ResNetBlock(features, filters, strides=strides, dtype=dtype, ctx=ctx))
                    features = filters
            self.blocks = blocks
            self.head = nnx.Linear(features, num_classes, dtype=dtype, ctx=ctx)
            self.dtype = jnp.dtype(dtype).name

        def __call__(self, x, train: bool = True):
            x = jax.nn.relu(self.bn_init(self.conv_init(x), use_running_average=not train))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            for block in self.blocks:
                x = block(x, train)
            x = self.head(jnp.mean(x, axis=(1, 2)))
            return jnp.asarray(x, self.dtype)

    return ResNet


# The example's functions, in this project's words -------------------------------------------
def initialized(key, image_size, model):
    @jax.jit
    def init(*args):
        return model.init(*args)

    variables = init({"params": key}, jnp.ones((1, image_size, image_size, 3), model.dtype))
    return variables["params"], variables["batch_stats"]


def cross_entropy_loss(logits, labels):
    import optax

    return jnp.mean(optax.softmax_cross_entropy(logits=logits, labels=jax.nn.one_hot(labels, NUM_CLASSES)))


def compute_metrics(logits, labels):
    metrics = {"loss": cross_entropy_loss(logits, labels),
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    return jax.lax.pmean(metrics, axis_name="batch")


def train_step(state, batch, learning_rate_fn):
    def loss_fn(params):
        logits, new_model_state = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], mutable=["batch_stats"])
        loss = cross_entropy_loss(logits, batch["label"])
        weight_l2 = sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(params) if x.ndim > 1)
        return loss + 0.0001 * 0.5 * weight_l2, (new_model_state, logits)

    dynamic_scale = state.dynamic_scale
    lr = learning_rate_fn(state.step)
    if dynamic_scale:
        grad_fn = dynamic_scale.value_and_grad(loss_fn, has_aux=True, axis_name="batch")
        dynamic_scale, is_fin, aux, grads = grad_fn(state.params)
    else:
        aux, grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, axis_name="batch")
    new_model_state, logits = aux[1]
    metrics = compute_metrics(logits, batch["label"])
    metrics["learning_rate"] = lr
    new_state = state.apply_gradients(grads=grads,
                                      batch_stats=jax.lax.pmean(new_model_state["batch_stats"], "batch"))
    if dynamic_scale:
        keep = functools.partial(jnp.where, is_fin)
        new_state = new_state.replace(opt_state=jax.tree_util.tree_map(keep, new_state.opt_state, state.opt_state),
                                      params=jax.tree_util.tree_map(keep, new_state.params, state.params),
                                      dynamic_scale=dynamic_scale)
        metrics["scale"] = dynamic_scale.scale
    return new_state, metrics


def eval_step(state, batch):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = state.apply_fn(variables, batch["image"], train=False, mutable=False)
    return compute_metrics(logits, batch["label"]), logits


def main() -> None:
    import optax
    from flax.training import dynamic_scale as dynamic_scale_lib
    from flax.training import train_state

    import nnx_bridge as nnx

    class TrainState(train_state.TrainState):
        batch_stats: tp.Any
        dynamic_scale: dynamic_scale_lib.DynamicScale

    ResNet = build_model_classes()
    model = nnx.to_linen(ResNet, stage_sizes=(1, 1), num_classes=NUM_CLASSES, dtype=jnp.float16)  # the one line
    image_size, per_device = 16, 4
    params, batch_stats = initialized(jax.random.key(0), image_size, model)
    learning_rate_fn = optax.linear_schedule(0.0, 0.1, 2)
    state = TrainState.create(apply_fn=model.apply, params=params,
                              tx=optax.sgd(learning_rate=learning_rate_fn, momentum=0.9, nesterov=True),
                              batch_stats=batch_stats, dynamic_scale=dynamic_scale_lib.DynamicScale())
    p_train_step = jax.pmap(functools.partial(train_step, learning_rate_fn=learning_rate_fn),
                            in_axes=(None, 0), out_axes=(None, 0), axis_name="batch")
    p_eval_step = jax.pmap(eval_step, in_axes=(None, 0), axis_name="batch")
    rng = np.random.default_rng(0)

    def batch():
        images = rng.normal(size=(DEVICES, per_device, image_size, image_size, 3)).astype(np.float16)
        return {"image": jnp.asarray(images), "label": jnp.asarray(rng.integers(0, NUM_CLASSES, (DEVICES, per_device)))}

    losses = []
    for _ in range(3):
        state, metrics = p_train_step(state, batch())
        losses.append(float(metrics["loss"][0]))
    eval_metrics, logits = p_eval_step(state, batch())
    stats = jax.tree_util.tree_leaves(state.batch_stats)
    init_stats = jax.tree_util.tree_flatten_with_path(batch_stats)[0]
    result = {
        "devices": jax.device_count(),
        "model_dtype": jnp.dtype(model.dtype).name,
        "param_dtype": str(params["conv_init"]["kernel"].dtype),
        "init_mean_abs": max(float(np.abs(v).max()) for p, v in init_stats if p[-1].key == "mean"),
        "init_var_minus_one_abs": max(float(np.abs(v - 1).max()) for p, v in init_stats if p[-1].key == "var"),
        "stats_moved": bool(any(not np.allclose(a, b) for a, b in zip(stats, jax.tree_util.tree_leaves(batch_stats)))),
        "replicas_agree": bool(np.all(np.asarray(eval_metrics["loss"]) == np.asarray(eval_metrics["loss"])[0])),
        "losses": losses,
        "scale": float(metrics["scale"][0]),
        "eval_loss": float(eval_metrics["loss"][0]),
        "eval_accuracy": float(eval_metrics["accuracy"][0]),
        "logits_dtype": str(logits.dtype),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
