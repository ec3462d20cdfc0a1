"""scikit-learn's bundled digits (1,797 8x8 images, 10 classes): real data, always offline."""

from __future__ import annotations

import numpy as np

from cljax.scenarios.base import Dataset

TEST_FRACTION = 0.25
SPLIT_SEED = 0  # fixed: every run and every user sees the same train/test split


def load_digits() -> Dataset:
    """Fixed stratified split (75% train / 25% test); pixels 0..16 stored as uint8, seen by the
    model as x / 16 in [0, 1]; shape [8, 8, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = bunch.images.astype(np.uint8)[..., None]
    y = bunch.target.astype(np.int32)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return Dataset("digits", train_x, train_y, test_x, test_y, num_classes=10, x_divisor=16.0)
