"""CIFAR-10/100 split (Fig. 3): batch 1 = all of CIFAR-10, then 10 CIFAR-100 classes per batch, first 6 batches.

python -m cljax.main --config=configs/cifar_split.py:ewc,sit --config.data_dir=DIR --workdir=runs/cifar_split_ewc_sit

Argument ``strategy,setting``: strategy naive | cumulative | lwf | ewc | si | cwr | cwr_plus | ar1 | all
(Fig. 3 shows naive, ewc, lwf, si, cwr; CWR is not meant for MT); setting
``sit`` (one head) or ``mt`` (one head per batch and a task oracle).

The paper gives no hyperparameter table for this benchmark. It uses the same
CifarNet (Zenke et al. 2017, whose benchmark this is), so this config takes
Table 5's values (iCIFAR-100, cljax/paper_tables.py), trained from random
weights (batch 1 is CIFAR-10 itself), with the training choices of
configs/icifar100.py.
"""

from cljax.config import ConfigError, base_config
from cljax.paper_tables import TABLE_5, apply_table, parse_strategies


def get_config(arg: str = "ewc,sit"):
    strategy, _, setting = arg.partition(",")
    if setting not in ("sit", "mt"):
        raise ConfigError(f"setting={setting!r} (argument strategy,setting) is unknown; allowed: sit, mt")
    c = base_config()
    c.dataset = "cifar_split"
    c.setting = setting
    c.num_batches = 6  # Fig. 3: the first 6 of 11 batches (CIFAR-10, then 10 CIFAR-100 classes each)
    c.num_runs = 10
    c.model = "cifarnet"
    c.strategies = parse_strategies(strategy)
    c.batch_size = 256
    c.optimizer = "sgd"
    c.momentum = 0.9
    apply_table(c, TABLE_5)
    c.cwr.init_std = 0.005  # the CifarNet's last-layer initialisation (sec. 4.3)
    c.ewc.fisher = "minibatch"  # App. A
    c.ewc.fisher_batch_size = 256
    return c
