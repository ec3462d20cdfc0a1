"""Default job: every strategy on split digits (5 batches x 2 classes, SIT), 3 runs, MLP.

python -m cljax.main --workdir=runs/default (this file is the default --config)
"""

from cljax.config import base_config


def get_config():
    return base_config()
