"""Split Fashion-MNIST (5 batches x 2 classes), 3 runs, a small MLP and few epochs (minutes on 2 CPU cores).

python -m cljax.main --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist
python -m cljax.main --config=configs/fashion_mnist.py --config.setting=mt --workdir=runs/fashion_mnist_mt

LwF, EWC and SI values: the sweep on run 0 in SIT, then frozen
(python scripts/sweep_regularization.py --config=configs/fashion_mnist.py; BUILD_NOTES.md).
"""

from cljax.config import PAPER_STRATEGIES, base_config


def get_config():
    c = base_config()
    # The paper's eight; the rehearsal baselines run from configs/rehearsal.py (Avalanche's protocol).
    c.strategies = ",".join(PAPER_STRATEGIES)
    c.dataset = "fashion_mnist"
    c.hidden_sizes = (256,)
    c.epochs_first = 2
    c.epochs = 2
    c.batch_size = 64
    c.cumulative.epochs_first = 2
    c.cumulative.epochs = 2
    # ~12,000 patterns per batch: one epoch of B_i>1 at a lower learning rate (sweep).
    c.lwf.update(map_from=(0.66, 0.9), map_to=(0.6, 0.9), lr=0.01)
    c.ewc.update(strength=2e6, max_f=1e-4, lr=0.005, epochs=1)  # λ = 1/(η·max_F)
    c.si.update(strength=2e5, max_f=1e-3, w_first=1e-3, w_rest=1e-2, lr=0.005, epochs=1)  # λ = 1/(η·max_F)
    # CWR, CWR+, AR1: B_i>1 epochs tuned on run 0 (BUILD_NOTES.md "Architectural strategies").
    c.cwr.epochs = 1
    c.cwr_plus.epochs = 2
    c.ar1.epochs = 2
    # AR1* (latent replay at fc1, the MLP's one hidden layer: fc1 trains on B_1, then is frozen): as AR1.
    c.ar1_star.epochs = 2
    return c
