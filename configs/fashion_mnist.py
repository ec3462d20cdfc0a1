"""Split Fashion-MNIST (5 batches x 2 classes, SIT), 3 runs, a small MLP and few epochs (minutes on 2 CPU cores).

python -m cljax.main --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist
python -m cljax.main --config=configs/fashion_mnist.py --config.setting=mt --workdir=runs/fashion_mnist_mt
"""

from cljax.config import base_config


def get_config():
    c = base_config()
    c.dataset = "fashion_mnist"
    c.hidden_sizes = (256,)
    c.epochs_first = 2
    c.epochs = 2
    c.batch_size = 64
    c.cumulative.epochs = 2
    # CWR, CWR+, AR1: B_i>1 epochs tuned on run 0 (BUILD_NOTES.md "Architectural strategies").
    c.cwr.epochs = 1
    c.cwr_plus.epochs = 2
    c.ar1.epochs = 2
    return c
