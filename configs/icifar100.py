"""iCIFAR-100 (10 batches of 10 classes) with CifarNet and the paper's hyperparameters (sec. 4.3, Table 5).

python scripts/pretrain.py --data_dir=DIR --out=runs/cifarnet_cifar10
python -m cljax.main --config=configs/icifar100.py:ar1 --config.data_dir=DIR --workdir=runs/icifar100_ar1

Argument ``strategy``: naive | cumulative | lwf | ewc | si | cwr | cwr_plus | ar1 | all.
Every strategy section carries its Table 5 cells (cljax/paper_tables.py).
The CifarNet starts from CIFAR-10 weights (sec. 4.3): ``init_checkpoint``
defaults to scripts/pretrain.py's output (its 10-class head is replaced by a
fresh 100-class head); ``--config.init_checkpoint=''`` starts from random
weights. results.json holds both test sets of Fig. 8: ``accuracy`` (fixed,
all 100 classes) and ``seen_accuracy`` (expanding). CWR's head is
re-initialised with std 0.005, the CifarNet's last-layer initialisation the
paper mentions (sec. 4.3). Not in the tables, chosen here: SGD with momentum
0.9 (Caffe's convention), mini-batches of 256 (Zenke et al. 2017), EWC's
Fisher from mini-batches of 256 (App. A).
"""

from cljax.config import base_config
from cljax.paper_tables import TABLE_5, apply_table, parse_strategies


def get_config(arg: str = "ar1"):
    c = base_config()
    c.dataset = "icifar100"  # 10 batches of 10 classes (the protocol fixes them)
    c.num_runs = 10
    c.model = "cifarnet"
    c.init_checkpoint = "runs/cifarnet_cifar10"  # scripts/pretrain.py --out
    c.strategies = parse_strategies(arg)
    c.batch_size = 256
    c.optimizer = "sgd"
    c.momentum = 0.9
    apply_table(c, TABLE_5)
    c.cwr.init_std = 0.005  # sec. 4.3
    c.ewc.fisher = "minibatch"  # App. A
    c.ewc.fisher_batch_size = 256
    return c
