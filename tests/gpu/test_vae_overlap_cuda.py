"""overlap_vae on a CUDA device: the decode on its own stream and thread gives the serial generator's frames."""

from __future__ import annotations

import numpy as np

from tests.unit.liveavatar.test_vae_overlap import generate_frames


def test_overlapped_decode_on_its_own_stream_gives_the_same_frames():
    serial = generate_frames("keep_motion", overlap=False, device="cuda")
    overlapped = generate_frames("keep_motion", overlap=True, device="cuda")
    assert serial.std() > 1.0
    np.testing.assert_array_equal(overlapped, serial)
