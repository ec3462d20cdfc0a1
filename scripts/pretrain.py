"""Pre-trains CifarNet on CIFAR-10 and saves its params as an orbax checkpoint (paper sec. 4.3).

The paper's iCIFAR-100 CifarNet starts from CIFAR-10 weights. Defaults follow
Zenke et al. 2017, App. A (the CifarNet's authors): Adam, learning rate 0.001,
mini-batches of 256, 60 epochs. Then run iCIFAR-100 from the checkpoint (its
100-class head is re-initialised: the CIFAR-10 head has 10 outputs):

    python scripts/pretrain.py --data_dir=DIR --out=runs/cifarnet_cifar10   # after pip install -e .
    python -m cljax.main --config=configs/icifar100.py:ar1 --config.data_dir=DIR \
        --config.init_checkpoint=runs/cifarnet_cifar10 --workdir=runs/icifar100_ar1
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cljax import engine, scenarios
from cljax.config import base_config
from cljax.models import apply_function, build_model
from cljax.models.pretrained import save_params


def pretrain(
    dataset: scenarios.Dataset,
    model_name: str = "cifarnet",
    epochs: int = 60,
    lr: float = 0.001,
    batch_size: int = 256,
    optimizer: str = "adam",
    momentum: float = 0.0,
    seed: int = 0,
    log=print,
) -> tuple[engine.Params, dict[str, list[float]]]:
    """Trains ``model_name`` on the whole dataset; returns its params and, per epoch, the mean training loss
    of the epoch and the test accuracy after it."""
    config = base_config()
    config.model = model_name
    model = build_model(config, dataset.num_classes)
    init_key, key = jax.random.split(jax.random.key(seed))
    params = jax.jit(model.init)({"params": init_key}, jnp.zeros((1,) + dataset.input_shape, jnp.float32))
    tx = engine.make_optimizer(optimizer, momentum)
    state = engine.TrainState(params, tx.init(params), ())
    state = state._replace(opt_state=engine.set_learning_rate(state.opt_state, lr))
    apply_fn = apply_function(model, dataset.x_divisor)  # stored (uint8) images become float inside
    fit = engine.make_fit(apply_fn, tx, engine.cross_entropy, batch_size)
    data = jax.device_put({"x": dataset.train_x, "y": dataset.train_y})
    all_classes = jnp.ones(dataset.num_classes, bool)
    test_x = jax.device_put(dataset.test_x)
    chunk = min(1000, len(dataset.test_y))
    history: dict[str, list[float]] = {"train_loss": [], "test_accuracy": []}
    for epoch in range(epochs):
        # One epoch per call (epochs is traced: one compilation) to report progress.
        state, metrics = fit(state, data, len(dataset.train_y), 1, all_classes, jax.random.fold_in(key, epoch))
        if int(metrics.nonfinite_step) >= 0:
            raise FloatingPointError(f"epoch {epoch + 1}: loss or gradient not finite; lower --lr")
        preds = engine.predict(
            apply_fn, state.params, test_x, all_classes[None], jnp.zeros(len(dataset.test_y), jnp.int32), chunk
        )
        history["train_loss"].append(float(metrics.loss))
        history["test_accuracy"].append(float(np.mean(np.asarray(preds) == dataset.test_y)))
        log(f"epoch {epoch + 1}/{epochs}: loss {metrics.loss:.4f} test accuracy {history['test_accuracy'][-1]:.4f}")
    return state.params, history


def run(
    dataset_name: str, data_dir: str, out: str, model_name: str = "cifarnet", log=print, **train_args
) -> tuple[engine.Params, dict]:
    """Loads the data, pre-trains, saves the checkpoint at ``out`` and a summary at ``out``.json."""
    if os.path.exists(out):
        raise FileExistsError(f"--out={out} exists; choose a new directory")
    dataset = scenarios.load_dataset(dataset_name, data_dir)
    params, history = pretrain(dataset, model_name, log=log, **train_args)
    save_params(out, params)
    summary = {
        "dataset": dataset_name,
        "model": model_name,
        "num_classes": dataset.num_classes,
        **train_args,
        **history,
    }
    with open(out.rstrip("/") + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    log(f"saved {out}; use --config.init_checkpoint={out}")
    return params, summary


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    run(
        f.dataset,
        f.data_dir,
        f.out,
        f.model,
        epochs=f.epochs,
        lr=f.lr,
        batch_size=f.batch_size,
        optimizer=f.optimizer,
        momentum=f.momentum,
        seed=f.seed,
    )


if __name__ == "__main__":
    flags.DEFINE_string("dataset", "cifar10", "Dataset to pre-train on (cljax.scenarios.DATASETS).")
    flags.DEFINE_string("data_dir", "", "Dataset directory; '' = the dataset's default location.")
    flags.DEFINE_string("out", "runs/cifarnet_cifar10", "New checkpoint directory.")
    flags.DEFINE_string("model", "cifarnet", "Model (cljax.models.MODELS).")
    flags.DEFINE_integer("epochs", 60, "Training epochs.")
    flags.DEFINE_float("lr", 0.001, "Learning rate.")
    flags.DEFINE_integer("batch_size", 256, "Mini-batch size.")
    flags.DEFINE_string("optimizer", "adam", "adam | sgd.")
    flags.DEFINE_float("momentum", 0.0, "SGD momentum.")
    flags.DEFINE_integer("seed", 0, "PRNG seed.")
    app.run(main)
