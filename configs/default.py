"""Default job: every strategy on split digits (5 batches x 2 classes, SIT), 3 runs, MLP.

python -m cljax.main --config=configs/default.py --workdir=runs/default
(the same job as without --config: the packaged cljax/configs/default.py)
"""

from cljax.configs.default import get_config

__all__ = ["get_config"]
