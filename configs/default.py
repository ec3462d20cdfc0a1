"""Default job: every strategy on split digits (5 batches x 2 classes, SIT), 3 runs, MLP.

python -m cljax.main --config=configs/default.py --workdir=runs/default
"""

from cljax.config import base_config


def get_config():
    return base_config()
