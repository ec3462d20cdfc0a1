"""End to end on the real Fashion-MNIST IDX files (Debian package dataset-fashion-mnist).

In CI (CI=true) the files must be there: .ci/run installs them, and a missing
file fails this test instead of skipping it.
"""

from __future__ import annotations

import os

import pytest

from cljax.experiment import run_experiment
from cljax.scenarios.fashion_mnist import DEFAULT_DIR, FILES

HAVE_FILES = all(os.path.exists(os.path.join(DEFAULT_DIR, stem + ".gz")) for stem in FILES.values())
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.mark.skipif(not HAVE_FILES and not IN_CI, reason=f"Fashion-MNIST not installed in {DEFAULT_DIR}")
def test_fashion_mnist_two_batches_end_to_end(tiny_config, tmp_path):
    config = tiny_config
    config.dataset = "fashion_mnist"
    config.strategies = "naive"
    config.num_batches = 2
    config.epochs_first = config.epochs = 1
    config.hidden_sizes = (128,)
    results = run_experiment(config, str(tmp_path), log=lambda event: None)
    run = results["strategies"]["naive"]["runs"][0]
    assert run["batch_classes"] == [[0, 1], [2, 3]]
    assert run["train_examples"] == [12000, 12000]  # 6,000 training images per class
    # After B_1 the two T-shirt/trouser classes are learnt: 2 of 10 classes of the fixed test set.
    assert run["accuracy_matrix"][0][0] > 0.9 and 0.15 < run["accuracy"][0] <= 0.2
    assert len(run["accuracy"]) == 2
