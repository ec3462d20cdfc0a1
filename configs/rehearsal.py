"""Rehearsal baselines (sec. 4.4) beside AR1 and Naive on a split of 5 batches x 2 classes (SIT, 3 runs).

python -m cljax.main --config=configs/rehearsal.py:fashion_mnist --workdir=runs/rehearsal_fashion_mnist
python -m cljax.main --config=configs/rehearsal.py:digits --workdir=runs/rehearsal_digits

Argument: the dataset (digits | fashion_mnist). Every strategy trains with one protocol (no
strategy keeps its own training defaults) and a memory of 500 patterns (GEM: 500 / 5 = 100 per
batch, margin 0.5):

- fashion_mnist: the protocol Avalanche's reference numbers for split Fashion-MNIST were measured
  with (README, "Results: rehearsal"): MLP 400-400, plain SGD with learning rate 0.01,
  mini-batches of 128, 2 epochs per batch (add --config.dense_init=torch for its models'
  PyTorch initialisation too);
- digits: the default job's training (MLP 400-400, plain SGD at 0.05, mini-batches of 32,
  5 epochs): a batch of split digits has about 270 images, so Avalanche's protocol would take
  only 6 SGD steps per batch and no strategy would learn.
"""

from cljax.config import ConfigError, base_config

STRATEGIES = ("naive", "ar1", "rehe", "gem", "icarl")
MEMORY_SIZE = 500
PROTOCOLS = {  # dataset -> (mini-batch, epochs per batch, learning rate)
    "fashion_mnist": (128, 2, 0.01),
    "digits": (32, 5, 0.05),
}


def get_config(dataset: str = "fashion_mnist"):
    if dataset not in PROTOCOLS:
        raise ConfigError(f"dataset={dataset!r} (config argument) is unknown; allowed: {', '.join(PROTOCOLS)}")
    batch_size, epochs, lr = PROTOCOLS[dataset]
    c = base_config()
    c.dataset = dataset
    c.strategies = ",".join(STRATEGIES)
    c.hidden_sizes = (400, 400)
    c.optimizer = "sgd"
    c.momentum = 0.0
    c.batch_size = batch_size
    for field, value in (("epochs_first", epochs), ("epochs", epochs), ("lr_first", lr), ("lr", lr)):
        c[field] = value
        for name in STRATEGIES:  # one protocol for all: no strategy keeps its own training defaults
            c[name][field] = value
    for name in ("rehe", "gem", "icarl"):
        c[name].memory_size = MEMORY_SIZE
    return c
