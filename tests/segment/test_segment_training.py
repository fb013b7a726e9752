"""Training kernels: left-right mirroring of patches."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.segment.checkpoint import VOCABULARY, mirror_permutation
from pipelines.segment.training import _random_patch


def test_mirrored_patches_swap_sides_and_keep_anatomy_consistent():
    # RAS+: array axis 0 runs towards the participant's right.  Left muscles sit at low x,
    # right ones at high x; channel 0 marks the voxels that hold a *left* label.
    left = VOCABULARY.index("sartorius_left")
    right = VOCABULARY.index("sartorius_right")
    y = torch.zeros((40, 8, 12), dtype=torch.long)
    y[4:12] = left
    y[28:36] = right
    x = torch.stack([(y == left).float(), (y > 0).float()])
    perm = torch.as_tensor(mirror_permutation(VOCABULARY))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        xp, yp = _random_patch(x, y, (32, 8, 8), rng, perm)
        assert set(torch.unique(yp).tolist()) <= {0, left, right}
        xs = torch.arange(yp.shape[0])[:, None, None].expand_as(yp).float()
        # whatever the mirroring, the right muscle is at higher x than the left one
        if (yp == left).any() and (yp == right).any():
            assert xs[yp == right].mean() > xs[yp == left].mean()
        # the image follows the labels: the originally-left voxels carry the left label
        # unless the patch was mirrored, and then all of them carry the right label
        marked = xp[0] > 0
        if marked.any():
            got = set(torch.unique(yp[marked]).tolist())
            assert got in ({left}, {right})
            seen |= got
        torch.testing.assert_close((xp[1] > 0), yp > 0)
    assert seen == {left, right}  # both mirrored and plain patches were drawn
    # without a permutation nothing is mirrored
    for _ in range(10):
        xp, yp = _random_patch(x, y, (32, 8, 8), rng)
        marked = xp[0] > 0
        assert set(torch.unique(yp[marked]).tolist()) <= {left}
