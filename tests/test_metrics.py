"""Depth accuracy metrics and alignment protocols against hand-computed values on tiny arrays."""

import math

import numpy as np
import pytest

from videomamba_depth.metrics import (
    ALIGNMENTS,
    METRICS,
    aggregate,
    align,
    depth_edge_band,
    evaluate_sequence,
    evaluation_mask,
    frame_metrics,
)


def gt_video(T=3, H=4, W=5, seed=0):
    return np.random.default_rng(seed).uniform(1.0, 5.0, (T, H, W))


def test_constant_ten_percent_scale_error():
    gt = gt_video()
    result = evaluate_sequence(1.1 * gt, gt, None, max_depth=10.0)
    m = result.mean
    assert m["abs_rel"] == pytest.approx(0.1)
    # sq_rel = mean(0.01 gt^2 / gt) and rmse = 0.1 sqrt(mean gt^2), per frame, then over frames.
    assert m["sq_rel"] == pytest.approx(np.mean([0.01 * f.mean() for f in gt]))
    assert m["rmse"] == pytest.approx(np.mean([0.1 * np.sqrt((f**2).mean()) for f in gt]))
    assert m["rmse_log"] == pytest.approx(math.log(1.1))
    assert m["log10"] == pytest.approx(math.log10(1.1))
    assert m["silog"] == pytest.approx(0.0, abs=1e-6)  # a pure scale error is invisible to SILog
    assert (m["delta1"], m["delta2"], m["delta3"]) == (1.0, 1.0, 1.0)
    assert result.num_frames == 3 and result.params == {} and result.alignment == "none"
    assert set(result.per_frame) == set(METRICS) and result.per_frame["abs_rel"].shape == (3,)


def test_delta_thresholds_count_both_directions():
    gt = np.full((1, 1, 6), 2.0)
    # max(pred/gt, gt/pred) = 1.0, 1.2, 1.3 (pred too small), 1.6, 1.9, 2.0
    pred = gt * np.array([1.0, 1.2, 1 / 1.3, 1.6, 1.9, 2.0])
    m = frame_metrics(pred, gt, np.ones_like(gt, dtype=bool))
    # thresholds 1.25, 1.5625, 1.953125
    assert m["delta1"][0] == pytest.approx(2 / 6)
    assert m["delta2"][0] == pytest.approx(3 / 6)
    assert m["delta3"][0] == pytest.approx(5 / 6)


def test_silog_is_the_std_of_log_error_times_100():
    gt = np.full((1, 1, 4), 3.0)
    e = np.array([0.1, -0.1, 0.3, 0.1])  # mean 0.1, std sqrt(mean((e - 0.1)^2)) = sqrt(0.02)
    m = frame_metrics(gt * np.exp(e), gt, np.ones_like(gt, dtype=bool))
    assert m["silog"][0] == pytest.approx(100 * math.sqrt(0.02))
    assert m["rmse_log"][0] == pytest.approx(math.sqrt(np.mean(e**2)))


def test_frames_are_averaged_not_pixels():
    """Frame 0: one valid pixel with AbsRel 0.5; frame 1: three exact pixels. Mean of frames = 0.25."""
    gt = np.full((3, 1, 3), 2.0)
    pred = gt.copy()
    pred[0, 0, 0] = 3.0
    valid = np.array([[[True, False, False]], [[True, True, True]], [[False, False, False]]])
    pred[0, 0, 1:] = -7.0  # garbage outside the valid mask is never looked at
    result = evaluate_sequence(pred, gt, valid, max_depth=10.0)
    np.testing.assert_allclose(result.per_frame["abs_rel"][:2], [0.5, 0.0])
    assert math.isnan(result.per_frame["abs_rel"][2])  # no evaluated pixel
    assert result.mean["abs_rel"] == pytest.approx(0.25) and result.num_frames == 2


def test_depth_range_cap_and_prediction_clipping():
    gt = np.array([[[2.0, 4.0, 12.0, 0.0005, np.nan]]])
    mask = evaluation_mask(gt, None, max_depth=10.0)
    np.testing.assert_array_equal(mask, [[[True, True, False, False, False]]])
    # The prediction 30 m at the 4 m pixel is clipped to 10 m: AbsRel (0 + 6/4) / 2.
    pred = np.array([[[2.0, 30.0, 1.0, 1.0, 1.0]]])
    result = evaluate_sequence(pred, gt, None, max_depth=10.0)
    assert result.mean["abs_rel"] == pytest.approx(0.75)


def test_median_alignment_recovers_a_scale():
    gt = gt_video(seed=1)
    result = evaluate_sequence(gt / 3.0, gt, None, max_depth=10.0, alignment="median")
    assert result.params["scale"] == pytest.approx(3.0)
    assert result.mean["abs_rel"] == pytest.approx(0.0, abs=1e-12)


def test_lstsq_disparity_alignment_recovers_scale_and_shift():
    gt = gt_video(seed=2)
    pred = 1.0 / ((1.0 / gt - 0.1) / 2.0)  # disparity of gt = 2 * disparity of pred + 0.1
    aligned = align(pred, gt, np.ones_like(gt, dtype=bool), "lstsq_disparity", max_depth=10.0)
    assert aligned.params["scale"] == pytest.approx(2.0) and aligned.params["shift"] == pytest.approx(0.1)
    np.testing.assert_allclose(aligned.depth, gt, rtol=1e-10)
    assert evaluate_sequence(pred, gt, None, max_depth=10.0, alignment="lstsq_disparity").mean[
        "abs_rel"
    ] == pytest.approx(0.0, abs=1e-10)


def test_lstsq_disparity_negative_disparity_becomes_max_depth():
    """Fit on two pixels: disparities g = [1, 0.5] from p = [1, 0.75] -> s = 2, t = -1. The third (unfitted)
    pixel has p = 0.25 -> aligned disparity -0.5 -> depth max_depth."""
    pred = np.array([[[1.0, 4 / 3, 4.0]]])
    gt = np.array([[[1.0, 2.0, 3.0]]])
    aligned = align(pred, gt, np.array([[[True, True, False]]]), "lstsq_disparity", max_depth=10.0)
    assert aligned.params["scale"] == pytest.approx(2.0) and aligned.params["shift"] == pytest.approx(-1.0)
    np.testing.assert_allclose(aligned.depth, [[[1.0, 2.0, 10.0]]])


def test_first_frame_alignment_fits_on_frame_zero_only():
    gt = gt_video(T=3, seed=3)
    pred = gt * np.array([0.5, 0.55, 0.45])[:, None, None]  # the model's scale drifts after frame 0
    result = evaluate_sequence(pred, gt, None, max_depth=10.0, alignment="first_frame")
    assert result.params == {"scale": pytest.approx(2.0), "fit_frame": 0}
    np.testing.assert_allclose(result.per_frame["abs_rel"], [0.0, 0.1, 0.1], atol=1e-12)
    # With no evaluated pixel in frame 0 the fit moves to the first frame that has some.
    valid = np.ones_like(gt, dtype=bool)
    valid[0] = False
    result = evaluate_sequence(pred, gt, valid, max_depth=10.0, alignment="first_frame")
    assert result.params == {"scale": pytest.approx(1 / 0.55), "fit_frame": 1}


def test_alignment_errors_are_clear():
    gt = gt_video()
    pred = gt.copy()
    pred[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 non-finite or non-positive depths on evaluated pixels"):
        evaluate_sequence(pred, gt, None, max_depth=10.0)
    with pytest.raises(ValueError, match="median alignment: no evaluated pixels"):
        evaluate_sequence(gt, gt, np.zeros_like(gt, dtype=bool), max_depth=10.0, alignment="median")
    with pytest.raises(ValueError, match="unknown alignment 'mean'"):
        evaluate_sequence(gt, gt, None, max_depth=10.0, alignment="mean")
    assert ALIGNMENTS == ("none", "median", "lstsq_disparity", "first_frame")


def test_aggregate_is_the_mean_of_per_video_means():
    """Video A has 1 frame with AbsRel 0.3, video B 3 frames with 0.1 each: dataset AbsRel 0.2, not 0.15."""
    gt_a, gt_b = gt_video(T=1, seed=4), gt_video(T=3, seed=5)
    a = evaluate_sequence(1.3 * gt_a, gt_a, None, max_depth=10.0)
    b = evaluate_sequence(0.9 * gt_b, gt_b, None, max_depth=10.0)
    summary = aggregate([{**a.mean, "tae": 2.0}, b.mean])
    assert summary["abs_rel"] == pytest.approx(0.2)
    assert summary["tae"] == 2.0  # reported by one video only
    assert list(summary)[: len(METRICS)] == list(METRICS)


def step_edge(T=2, H=6, W=40, near=2.0, far=4.0):
    """Depth ``near`` left of column ``W // 2``, ``far`` from it on: one vertical discontinuity."""
    gt = np.full((T, H, W), near)
    gt[..., W // 2 :] = far
    return gt


def test_edge_band_of_a_step_edge():
    gt, c = step_edge(), 20
    # The two pixels either side of the jump are on it; the band adds band_px columns on each side.
    for band_px, columns in ((0, [c - 1, c]), (2, list(range(c - 3, c + 3)))):
        band = depth_edge_band(gt, None, threshold=0.1, band_px=band_px)
        np.testing.assert_array_equal(np.flatnonzero(band[0, 0]), columns)
        assert (band == band[:1, :1]).all()  # every row and frame alike
    # log(4 / 2) = 0.69: above 0.5, not above 0.7.
    assert not depth_edge_band(gt, None, threshold=0.7, band_px=2).any()
    # A jump next to an unusable pixel (padding, missing depth) is not an edge.
    valid = np.ones(gt.shape, dtype=bool)
    valid[..., c] = False
    assert not depth_edge_band(gt, valid, threshold=0.1, band_px=2).any()
    # A smooth ramp (log step 0.05 per pixel) has no edge; a horizontal step is found like a vertical one.
    ramp = np.exp(0.05 * np.arange(40))[None, None, :].repeat(6, axis=1)
    assert not depth_edge_band(ramp, None, threshold=0.1, band_px=2).any()
    rows = depth_edge_band(np.swapaxes(gt, 1, 2), None, threshold=0.1, band_px=0)
    np.testing.assert_array_equal(np.flatnonzero(rows[0, :, 0]), [c - 1, c])
    with pytest.raises(ValueError, match="threshold > 0"):
        depth_edge_band(gt, None, threshold=0.0, band_px=2)


def test_blurred_prediction_fails_on_the_edge_band():
    """A 3-pixel box blur of a 2 m | 4 m step: the pixel left of the jump reads 8/3 (AbsRel 1/3, ratio 1.33,
    not within 1.25), the one right of it 10/3 (AbsRel 1/6, ratio 1.2); every other pixel is exact. On the
    6-column band: AbsRel (1/3 + 1/6) / 6 = 1/12 and δ1 5/6; on the 40-column image: 1/80 and 39/40."""
    gt = step_edge()
    padded = np.pad(gt, ((0, 0), (0, 0), (1, 1)), mode="edge")
    blurred = (padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]) / 3.0
    band = depth_edge_band(gt, None, threshold=0.1, band_px=2)
    result = evaluate_sequence(blurred, gt, None, max_depth=10.0, regions={"edge": band})
    edge = result.regions["edge"]
    assert result.mean["abs_rel"] == pytest.approx(1 / 80) and result.mean["delta1"] == pytest.approx(39 / 40)
    assert edge.mean["abs_rel"] == pytest.approx(1 / 12) and edge.mean["delta1"] == pytest.approx(5 / 6)
    assert edge.mean["abs_rel"] > 5 * result.mean["abs_rel"]
    # The alignment is fitted on every evaluated pixel, not on the region's: on the left half alone the
    # prediction (2x there, 3x right of the step) would get scale 1/2.
    pred = blurred * np.where(np.arange(40) < 20, 2.0, 3.0)
    left = np.broadcast_to(np.arange(40) < 20, gt.shape)
    median = evaluate_sequence(pred, gt, None, max_depth=10.0, alignment="median", regions={"left": left})
    scale = np.median(gt) / np.median(pred)
    assert median.params["scale"] == pytest.approx(scale) and abs(scale - 0.5) > 0.1
    on_left = evaluate_sequence(scale * pred, gt, left, max_depth=10.0).mean["abs_rel"]
    assert median.regions["left"].mean["abs_rel"] == pytest.approx(on_left)
    # The exact depth scores 0 there too.
    assert evaluate_sequence(gt, gt, None, max_depth=10.0, regions={"edge": band}).regions["edge"].mean[
        "abs_rel"] == 0.0


def test_empty_region_is_nan_and_skipped_by_aggregate():
    gt = gt_video()
    nowhere = np.zeros(gt.shape, bool)
    result = evaluate_sequence(1.1 * gt, gt, None, max_depth=10.0, regions={"moving": nowhere})
    moving = result.regions["moving"]
    assert moving.num_frames == 0 and math.isnan(moving.mean["abs_rel"]) and math.isnan(moving.mean["delta1"])
    with pytest.raises(ValueError, match="region 'moving' has shape"):
        evaluate_sequence(gt, gt, None, max_depth=10.0, regions={"moving": np.zeros((1, 2, 3), bool)})
    # Aggregated over the videos that have the region; NaN when none has.
    summary = aggregate([{"moving_abs_rel": float("nan"), "x": float("nan")}, {"moving_abs_rel": 0.3}])
    assert summary["moving_abs_rel"] == pytest.approx(0.3) and math.isnan(summary["x"])
