"""benchmarks/eval_leakage.py: which test images also occur in Training, pixel for pixel."""
from __future__ import annotations

import numpy as np


def test_leak_masks_find_training_copies_and_compare_their_labels(load_benchmark):
    mod = load_benchmark("eval_leakage")
    rng = np.random.default_rng(0)
    a, b, c, d = (rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(4))
    #            train  train  test(a, same label)  test(b, other label)  test(c, only in test, twice)  train(d, twice)
    images = np.stack([a, b, a, b, c, c, d, d])
    labels = np.array([3, 4, 3, 0, 5, 5, 6, 2])
    is_train = np.array([1, 1, 0, 0, 0, 0, 1, 1], bool)
    in_train, same = mod.leak_masks(images, labels, is_train)
    assert in_train.tolist() == [False, False, True, True, False, False, True, True]
    assert same.tolist() == [False, False, True, False, False, False, False, False]
