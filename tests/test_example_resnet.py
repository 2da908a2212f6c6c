"""The ImageNet example's loop (Flax's last Linen ``examples/imagenet/train.py``) on a bridged ResNet.

The loop keeps the example's functions and calls, written in this project's
words: ``initialized`` runs ``jax.jit(model.init)`` outside ``pmap`` on an input
of ``model.dtype``; ``train_step`` (under ``jax.pmap(..., in_axes=(None, 0),
out_axes=(None, 0), axis_name='batch')``) uses half precision with
``DynamicScale``, ``mutable=['batch_stats']`` and ``lax.pmean`` of the
statistics; ``eval_step`` calls with ``train=False``. The model's BatchNorm
layers average over ``axis_name='batch'``. Trained from its Linen twin's
variables (the same dict loads into both), the bridged model gives the twin's
losses, metrics and final state bit for bit. It runs in a subprocess that sees
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
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), str(HERE.parent)]),
    }
    process = subprocess.run(
        [sys.executable, str(HERE)], env=env, check=False, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, (process.stdout + process.stderr)[-3000:]
    line = next(line for line in process.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["devices"] == DEVICES
    # initialized(): jax.jit(model.init) outside pmap, input of model.dtype, BatchNorm untouched.
    assert result["model_dtype"] == "float16" and result["param_dtype"] == "float32"
    assert result["init_mean_abs"] == 0.0 and result["init_var_minus_one_abs"] == 0.0
    assert result["same_layout_as_twin"]
    # The loop: bit for bit the Linen twin's numbers, from the same variables dict.
    assert result["losses"] == result["linen_losses"] and all(np.isfinite(result["losses"]))
    assert result["eval_loss"] == result["linen_eval_loss"] and result["twin_state_equal"]
    assert result["stats_moved"] and result["replicas_agree"] and result["scale"] > 0
    assert 0.0 <= result["eval_accuracy"] <= 1.0 and result["logits_dtype"] == "float16"


# ---------------------------------------------------------------------------------------------
# Run as a script (in the subprocess): the model and the example's loop.
# ---------------------------------------------------------------------------------------------
NUM_CLASSES = 10


def build_model_classes():
    """The bridged ResNet and its Linen twin; attribute names follow Linen's automatic names."""
    import flax.linen as nn

    import nnx_bridge as nnx

    class ResNetBlock(nnx.Module):
        def __init__(self, in_features, filters, *, ctx, strides=(1, 1), dtype=jnp.float32):
            conv = functools.partial(nnx.Conv, use_bias=False, dtype=dtype, ctx=ctx)
            norm = functools.partial(
                nnx.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=dtype, axis_name="batch", ctx=ctx
            )
            self.Conv_0 = conv(in_features, filters, (3, 3), strides=strides)
            self.BatchNorm_0 = norm(filters)
            self.Conv_1 = conv(filters, filters, (3, 3))
            self.BatchNorm_1 = norm(filters, scale_init=jax.nn.initializers.zeros)
            needs_projection = in_features != filters or tuple(strides) != (1, 1)
            self.conv_proj = conv(in_features, filters, (1, 1), strides=strides) if needs_projection else None
            self.norm_proj = norm(filters) if needs_projection else None

        def __call__(self, x, train):
            y = jax.nn.relu(self.BatchNorm_0(self.Conv_0(x), use_running_average=not train))
            y = self.BatchNorm_1(self.Conv_1(y), use_running_average=not train)
            if self.conv_proj is not None:
                x = self.norm_proj(self.conv_proj(x), use_running_average=not train)
            return jax.nn.relu(x + y)

    class ResNet(nnx.Module):
        def __init__(self, stage_sizes, num_classes, *, ctx, num_filters=8, dtype=jnp.float32):
            self.conv_init = nnx.Conv(
                3,
                num_filters,
                (7, 7),
                strides=(2, 2),
                padding=((3, 3), (3, 3)),
                use_bias=False,
                dtype=dtype,
                ctx=ctx,
            )
            self.bn_init = nnx.BatchNorm(
                num_filters, momentum=0.9, epsilon=1e-5, dtype=dtype, axis_name="batch", ctx=ctx
            )
            names, features = [], num_filters
            for i, size in enumerate(stage_sizes):
                for j in range(size):
                    filters = num_filters * 2**i
                    strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                    names.append(f"ResNetBlock_{len(names)}")
                    setattr(
                        self, names[-1], ResNetBlock(features, filters, strides=strides, dtype=dtype, ctx=ctx)
                    )
                    features = filters
            self.block_names = tuple(names)
            self.Dense_0 = nnx.Linear(features, num_classes, dtype=dtype, ctx=ctx)
            self.dtype = jnp.dtype(dtype).name

        def __call__(self, x, train: bool = True):
            x = jax.nn.relu(self.bn_init(self.conv_init(x), use_running_average=not train))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            for name in self.block_names:
                x = getattr(self, name)(x, train)
            x = self.Dense_0(jnp.mean(x, axis=(1, 2)))
            return jnp.asarray(x, self.dtype)

    class LinenBlock(nn.Module):
        filters: int
        strides: tuple = (1, 1)
        dtype: tp.Any = jnp.float32

        @nn.compact
        def __call__(self, x, train):
            conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
            norm = functools.partial(
                nn.BatchNorm,
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
                axis_name="batch",
            )
            y = nn.relu(norm()(conv(self.filters, (3, 3), self.strides)(x)))
            y = norm(scale_init=nn.initializers.zeros_init())(conv(self.filters, (3, 3))(y))
            if x.shape != y.shape:
                x = norm(name="norm_proj")(conv(self.filters, (1, 1), self.strides, name="conv_proj")(x))
            return nn.relu(x + y)

    class LinenResNet(nn.Module):
        stage_sizes: tuple
        num_classes: int
        num_filters: int = 8
        dtype: tp.Any = jnp.float32

        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Conv(
                self.num_filters,
                (7, 7),
                (2, 2),
                padding=((3, 3), (3, 3)),
                use_bias=False,
                dtype=self.dtype,
                name="conv_init",
            )(x)
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
                axis_name="batch",
                name="bn_init",
            )(x)
            x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding="SAME")
            for i, size in enumerate(self.stage_sizes):
                for j in range(size):
                    strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                    x = LinenBlock(self.num_filters * 2**i, strides, self.dtype, name=None)(x, train)
            x = nn.Dense(self.num_classes, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))
            return jnp.asarray(x, self.dtype)

    LinenBlock.__name__ = "ResNetBlock"  # Linen names submodules by class name: ResNetBlock_0, ...
    return ResNet, LinenResNet


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
    metrics = {
        "loss": cross_entropy_loss(logits, labels),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    }
    return jax.lax.pmean(metrics, axis_name="batch")


def train_step(state, batch, learning_rate_fn):
    def loss_fn(params):
        logits, new_model_state = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], mutable=["batch_stats"]
        )
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
    new_state = state.apply_gradients(
        grads=grads, batch_stats=jax.lax.pmean(new_model_state["batch_stats"], "batch")
    )
    if dynamic_scale:
        keep = functools.partial(jnp.where, is_fin)
        new_state = new_state.replace(
            opt_state=jax.tree_util.tree_map(keep, new_state.opt_state, state.opt_state),
            params=jax.tree_util.tree_map(keep, new_state.params, state.params),
            dynamic_scale=dynamic_scale,
        )
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

    ResNet, LinenResNet = build_model_classes()
    image_size, per_device = 8, 2
    learning_rate_fn = optax.linear_schedule(0.0, 0.1, 2)
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": jnp.asarray(
                rng.normal(size=(DEVICES, per_device, image_size, image_size, 3)), jnp.float16
            ),
            "label": jnp.asarray(rng.integers(0, NUM_CLASSES, (DEVICES, per_device))),
        }
        for _ in range(3)
    ]

    def run(model, variables=None):
        """The example's create_train_state and loop; `variables` replaces the model's own init."""
        params, batch_stats = variables or initialized(jax.random.key(0), image_size, model)
        state = TrainState.create(
            apply_fn=model.apply,
            params=params,
            tx=optax.sgd(learning_rate=learning_rate_fn, momentum=0.9, nesterov=True),
            batch_stats=batch_stats,
            dynamic_scale=dynamic_scale_lib.DynamicScale(),
        )
        p_train_step = jax.pmap(
            functools.partial(train_step, learning_rate_fn=learning_rate_fn),
            in_axes=(None, 0),
            out_axes=(None, 0),
            axis_name="batch",
        )
        p_eval_step = jax.pmap(eval_step, in_axes=(None, 0), axis_name="batch")
        losses = []
        for batch in batches[:2]:
            state, metrics = p_train_step(state, batch)
            losses.append(float(metrics["loss"][0]))
        eval_metrics, logits = p_eval_step(state, batches[2])
        return (params, batch_stats), state, losses, metrics, eval_metrics, logits

    model = nnx.to_linen(
        ResNet, stage_sizes=(1, 1), num_classes=NUM_CLASSES, dtype=jnp.float16
    )  # the one line
    params, batch_stats = initialized(jax.random.key(0), image_size, model)  # jit(init) outside pmap
    twin = LinenResNet(stage_sizes=(1, 1), num_classes=NUM_CLASSES, dtype=jnp.float16)
    linen_init = initialized(jax.random.key(0), image_size, twin)
    _, linen_state, linen_losses, _, linen_eval, _ = run(twin)
    # The bridged model trains from the twin's variables (the same dict loads into both).
    _, state, losses, metrics, eval_metrics, logits = run(model, linen_init)
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)),
        (state.params, state.batch_stats),
        (linen_state.params, linen_state.batch_stats),
    )
    init_stats = jax.tree_util.tree_flatten_with_path(batch_stats)[0]
    stats = jax.tree_util.tree_leaves(state.batch_stats)
    result = {
        "devices": jax.device_count(),
        "model_dtype": jnp.dtype(model.dtype).name,
        "param_dtype": str(params["conv_init"]["kernel"].dtype),
        "init_mean_abs": max(float(np.abs(v).max()) for p, v in init_stats if p[-1].key == "mean"),
        "init_var_minus_one_abs": max(
            float(np.abs(v - 1).max()) for p, v in init_stats if p[-1].key == "var"
        ),
        "stats_moved": bool(
            any(
                not np.allclose(a, b)
                for a, b in zip(stats, jax.tree_util.tree_leaves(linen_init[1]), strict=True)
            )
        ),
        "replicas_agree": bool(
            np.all(np.asarray(eval_metrics["loss"]) == np.asarray(eval_metrics["loss"])[0])
        ),
        "losses": losses,
        "scale": float(metrics["scale"][0]),
        "eval_loss": float(eval_metrics["loss"][0]),
        "eval_accuracy": float(eval_metrics["accuracy"][0]),
        "logits_dtype": str(logits.dtype),
        "same_layout_as_twin": jax.tree.map(jnp.shape, linen_init)
        == jax.tree.map(jnp.shape, (params, batch_stats)),
        "linen_losses": linen_losses,
        "linen_eval_loss": float(linen_eval["loss"][0]),
        "twin_state_equal": all(jax.tree_util.tree_leaves(same)),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
