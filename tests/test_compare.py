"""The comparator's figures against values computed by hand."""

import math

import numpy as np

from monkey_trt.engine.compare import mask_iou, psnr, snr_db


def test_snr_db_is_the_reference_power_over_the_error_power():
    ref = np.array([3.0, -4.0], np.float32)  # power 12.5
    got = ref + np.array([0.5, -0.5], np.float32)  # error power 0.25
    assert math.isclose(snr_db(ref, got), 10 * math.log10(50.0), rel_tol=1e-12)
    assert snr_db(ref, ref.copy()) == float("inf")
    assert snr_db(ref.astype(np.float16), got) == snr_db(ref, got), "computed in float64 whatever the inputs' type"


def test_psnr_and_mask_iou_by_hand():
    a = np.zeros((2, 2), np.float32)
    assert math.isclose(psnr(a, a + 0.1), 20.0, rel_tol=1e-6)  # peak 1: 10 log10(1 / 0.01); 0.1 in float32
    assert psnr(a, a) == float("inf")
    m1 = np.array([[1, 1], [0, 0]], np.uint8)
    m2 = np.array([[255, 0], [255, 0]], np.uint8)
    assert mask_iou(m1, m2) == 1 / 3
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
