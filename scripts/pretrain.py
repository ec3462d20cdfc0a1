"""Pre-trains a model offline and saves its params as the orbax checkpoint ``init_checkpoint`` reads.

Any dataset and model here (``--dataset``, ``--model``; ``--hidden_sizes`` for the MLP), on all its
training images or on a pre-training slice (``--slice``: all10 / half5, cljax/pretraining.py, the
same function and slice as the in-job pre-train of configs/fashion_pretrained.py). The checkpoint
is written atomically; ``OUT.json`` beside it records the settings, the loss and test accuracy per
epoch.

The paper's iCIFAR-100 CifarNet starts from CIFAR-10 weights (sec. 4.3). Defaults follow
Zenke et al. 2017, App. A (the CifarNet's authors): Adam, learning rate 0.001, mini-batches of
256, 60 epochs. Then run iCIFAR-100 from the checkpoint (its 100-class head is re-initialised:
the CIFAR-10 head has 10 outputs):

    python scripts/pretrain.py --data_dir=DIR --out=runs/cifarnet_cifar10   # after pip install -e .
    python -m cljax.main --config=configs/icifar100.py:ar1 --config.data_dir=DIR \
        --config.init_checkpoint=runs/cifarnet_cifar10 --workdir=runs/icifar100_ar1

The Fashion-MNIST pre-trained protocol from a checkpoint made here (instead of the in-job pre-train):

    python scripts/pretrain.py --dataset=fashion_mnist --model=mlp --hidden_sizes=256 --slice=all10 \
        --epochs=10 --batch_size=64 --out=runs/mlp_fashion_all10
    python -m cljax.main --config=configs/fashion_pretrained.py:all10 \
        --config.init_checkpoint=runs/mlp_fashion_all10 --workdir=runs/fashion_pretrained_all10
"""

from __future__ import annotations

import os

from absl import app, flags

from cljax import engine, pretraining, scenarios
from cljax.config import base_config


def run(
    dataset_name: str,
    data_dir: str,
    out: str,
    model_name: str = "cifarnet",
    log=print,
    slice_name: str = "none",
    hidden_sizes: tuple[int, ...] = (400, 400),
    **train_args,
) -> tuple[engine.Params, dict]:
    """Loads the data (the slice ``slice_name`` of its training images), pre-trains, saves the
    checkpoint at ``out`` and a summary at ``out``.json."""
    if os.path.exists(out):
        raise FileExistsError(f"--out={out} exists; choose a new directory")
    config = base_config()
    config.update(dataset=dataset_name, data_dir=data_dir, model=model_name, hidden_sizes=tuple(hidden_sizes))
    dataset = scenarios.load_dataset(dataset_name, data_dir)
    if slice_name != "none":
        dataset, _ = pretraining.split_dataset(dataset, slice_name, train_args.get("seed", 0))
    params, history = pretraining.train(dataset, config, log=log, **train_args)
    summary = {
        "dataset": dataset_name,
        "model": model_name,
        "num_classes": dataset.num_classes,
        "slice": slice_name,
        "num_images": len(dataset.train_y),
        **({"hidden_sizes": list(hidden_sizes)} if model_name == "mlp" else {}),
        **train_args,
        **history,
    }
    pretraining.save_checkpoint(out, params, summary)
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
        slice_name=f.slice,
        hidden_sizes=tuple(int(h) for h in f.hidden_sizes),
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
    flags.DEFINE_list("hidden_sizes", ["400", "400"], "MLP hidden layers (comma-separated).")
    flags.DEFINE_enum("slice", "none", ["none", *pretraining.PRETRAINED], "Pre-training slice of the training images.")
    flags.DEFINE_integer("epochs", 60, "Training epochs.")
    flags.DEFINE_float("lr", 0.001, "Learning rate.")
    flags.DEFINE_integer("batch_size", 256, "Mini-batch size.")
    flags.DEFINE_enum("optimizer", "adam", list(pretraining.OPTIMIZERS), "Optimizer.")
    flags.DEFINE_float("momentum", 0.0, "SGD momentum.")
    flags.DEFINE_integer("seed", 0, "PRNG seed (and the slice's images).")
    app.run(main)
