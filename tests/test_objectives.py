"""Distill Any Depth objectives (hierarchical normalisation, gradient preservation, crop views, local-global,
feature alignment) and the image teachers of pre-training: known answers on tiny synthetic tensors."""

import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from test_teacher import NO_CORRUPTION
from training_fixtures import tiny_model_config

from videomamba_depth.config import ConfigError
from videomamba_depth.errors import InputError, MissingDependencyError
from videomamba_depth.losses import (
    crop_intrinsics,
    crop_resize,
    feature_alignment_loss,
    gradient_preservation_loss,
    hdn_loss,
    hierarchy_groups,
    local_global_loss,
    sample_boxes,
    ssi_loss,
)
from videomamba_depth.models import build_student, save_student
from videomamba_depth.pretraining import PretrainConfig
from videomamba_depth.pretraining.teachers import CROP_VIEW, WHOLE_VIEW, View, build_image_teacher
from videomamba_depth.teacher.base import TeacherConfig
from videomamba_depth.teacher.synthetic import corrupt_image


def from_disparity(disparity) -> torch.Tensor:
    """Depth ``(1, 1, H, W)`` whose disparity is ``disparity`` (nested lists, one frame)."""
    return 1.0 / torch.tensor(disparity, dtype=torch.float32)[None, None]


def smooth_scene(B=2, H=12, W=16, seed=0):
    """Positive depths (1-5 m) and a validity mask with holes."""
    g = torch.Generator().manual_seed(seed)
    depth = 1 + 4 * torch.rand(B, 1, H, W, generator=g)
    valid = torch.rand(B, 1, H, W, generator=g) > 0.1
    return depth, valid


# --- hierarchical depth normalisation ---------------------------------------------------------------------


def test_hdn_hand_value():
    # Target disparity 1, 2, 3, 4: lower median 2, mean deviation 1 -> -1, 0, 1, 2. Prediction 1, 2, 3, 5:
    # median 2, mean deviation 5/4 -> -0.8, 0, 0.8, 2.4. Mean |difference| = (0.2 + 0 + 0.2 + 0.4) / 4.
    target, pred = from_disparity([[1.0, 2.0], [3.0, 4.0]]), from_disparity([[1.0, 2.0], [3.0, 5.0]])
    valid = torch.ones_like(pred, dtype=torch.bool)
    assert hdn_loss(pred, target, valid, levels=1).item() == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize("mode", ["depth_range", "spatial"])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_hdn_is_zero_for_a_positive_affine_disparity_and_invariant_to_one(mode, levels):
    target, valid = smooth_scene()
    affine = 1.0 / (3.0 / target + 0.2)  # disparity 3 d + 0.2
    assert hdn_loss(affine, target, valid, levels=levels, mode=mode).item() == pytest.approx(0, abs=1e-5)
    pred, _ = smooth_scene(seed=1)
    loss = hdn_loss(pred, target, valid, levels=levels, mode=mode)
    assert loss > 0.1
    for moved in (pred * 7.0, 1.0 / (0.5 / pred + 0.3)):  # global scale; affine map of the disparity
        torch.testing.assert_close(hdn_loss(moved, target, valid, levels=levels, mode=mode), loss)


def test_hdn_finer_levels_renormalise_each_depth_range():
    # Disparity 1..8: the two level-2 ranges are 1-4 and 5-8; the prediction is the target within each
    # (x1 and x3), so both level-2 groups score 0 and the loss is the level-1 loss over 3 groups.
    target = from_disparity([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    pred = from_disparity([[1.0, 2.0, 3.0, 4.0], [15.0, 18.0, 21.0, 24.0]])
    valid = torch.ones_like(pred, dtype=torch.bool)
    global_loss = hdn_loss(pred, target, valid, levels=1)
    assert global_loss > 0.1
    torch.testing.assert_close(hdn_loss(pred, target, valid, levels=2), global_loss / 3)


def test_hdn_spatial_grid_renormalises_each_cell():
    # 4x4 frame, level 2 = four 2x2 cells; the prediction is the target times 1, 2, 3, 4 per cell.
    g = torch.Generator().manual_seed(3)
    target = 1 + torch.rand(1, 1, 4, 4, generator=g)
    factor = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    pred = target * factor
    valid = torch.ones_like(pred, dtype=torch.bool)
    global_loss = hdn_loss(pred, target, valid, levels=1, mode="spatial")
    assert global_loss > 0.1
    torch.testing.assert_close(hdn_loss(pred, target, valid, levels=2, mode="spatial"), global_loss / 5)


def test_hierarchy_groups_are_quantile_ranges_or_grid_cells():
    target = torch.tensor([[4.0, 1.0, 3.0, 2.0, 9.0, 9.0]])  # pixel 5 invalid (its value is ignored)
    mask = torch.tensor([[True, True, True, True, True, False]])
    groups = hierarchy_groups(target, mask, (2, 3), levels=2, mode="depth_range")
    assert groups.shape == (1, 3, 6)
    # Ranks 0-4 of the 5 valid values; level 2 splits them at rank * 2 // 5: the 3 smallest, the 2 largest.
    assert groups[0].int().tolist() == [[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0], [1, 0, 0, 0, 1, 0]]
    cells = hierarchy_groups(target, mask, (2, 3), levels=2, mode="spatial")
    assert cells.shape == (1, 5, 6)
    # 2x2 cells of a 2x3 frame: columns x * 2 // 3 = 0, 0, 1; the last cell's only pixel is invalid.
    assert cells[0, 1:].int().tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0],
                                           [0, 0, 0, 0, 0, 0]]


# --- gradient preservation --------------------------------------------------------------------------------


def test_gradient_preservation_hand_value_and_zero_for_identical_normalised_maps():
    # Target disparity 1, 2, 3 -> (x - 2) / (2/3) = -1.5, 0, 1.5; prediction 1, 2, 4 -> -1, 0, 2. Residual
    # 0.5, 0, 0.5: both horizontal steps are 0.5.
    target, pred = from_disparity([[1.0, 2.0, 3.0]]), from_disparity([[1.0, 2.0, 4.0]])
    valid = torch.ones_like(pred, dtype=torch.bool)
    assert gradient_preservation_loss(pred, target, valid, scales=1).item() == pytest.approx(0.5, abs=1e-6)
    scene, mask = smooth_scene()
    same = 1.0 / (0.25 / scene + 0.1)  # normalised disparity identical to the target's
    assert gradient_preservation_loss(same, scene, mask).item() == pytest.approx(0.0, abs=1e-5)


# --- crop views and the local-global term ------------------------------------------------------------------


def test_sample_boxes_are_reproducible_inside_and_keep_the_aspect_ratio():
    boxes = sample_boxes(np.random.default_rng(0), 64, (30, 40), (0.5, 0.8))
    again = sample_boxes(np.random.default_rng(0), 64, (30, 40), (0.5, 0.8))
    assert torch.equal(boxes, again) and boxes.dtype == torch.int64
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 30).all() and (left + w <= 40).all()
    assert (h >= 15).all() and (h <= 24).all() and ((w / h - 4 / 3).abs() < 0.1).all()
    whole = sample_boxes(np.random.default_rng(1), 3, (30, 40), (1.0, 1.0))
    assert whole.tolist() == [[0, 0, 30, 40]] * 3


def test_crop_resize_takes_each_images_box():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    boxes = torch.tensor([[2, 4, 4, 4], [0, 0, 8, 8]])
    out = crop_resize(x, boxes, (8, 8), "nearest")
    torch.testing.assert_close(out[0, 0], x[0, 0, 2:6, 4:8].repeat_interleave(2, 0).repeat_interleave(2, 1))
    torch.testing.assert_close(out[1], x[1])
    torch.testing.assert_close(crop_resize(x, boxes, (8, 8), "bilinear")[1], x[1])


def test_crop_intrinsics_follow_the_zoom():
    K = torch.tensor([[[10.0, 0.0, 3.5], [0.0, 12.0, 3.5], [0.0, 0.0, 1.0]]])
    boxes = torch.tensor([[2, 4, 4, 4]])
    K_crop = crop_intrinsics(K, boxes, (8, 8))
    # Zoom 2: focal lengths double; cx = (3.5 - 4 + 0.5) * 2 - 0.5, cy = (3.5 - 2 + 0.5) * 2 - 0.5.
    torch.testing.assert_close(K_crop, torch.tensor([[[20.0, 0.0, -0.5], [0.0, 24.0, 3.5], [0.0, 0.0, 1.0]]]))
    # A 3D point lands where the crop view's pixel grid puts the original pixel.
    point = torch.tensor([0.3, -0.1, 2.0])
    u, v, _ = (K[0] @ point) / point[2]
    u_crop, v_crop, _ = (K_crop[0] @ point) / point[2]
    assert float(u_crop) == pytest.approx((float(u) - 4 + 0.5) * 2 - 0.5)
    assert float(v_crop) == pytest.approx((float(v) - 2 + 0.5) * 2 - 0.5)


def test_local_global_is_zero_for_the_aligned_global_crop_and_trains_only_the_box():
    global_pred, _ = smooth_scene(B=2, H=8, W=8)
    global_pred = global_pred[:, 0].requires_grad_(True)
    boxes = torch.tensor([[2, 4, 4, 4], [0, 1, 6, 6]])
    crop = crop_resize(global_pred.detach()[:, None], boxes, (8, 8), "bilinear")[:, 0]
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    aligned = 1.0 / (2.0 / crop + 0.05)  # the crop's disparity x 2 + 0.05: a positive affine map
    assert local_global_loss(global_pred, boxes, aligned, valid).item() == pytest.approx(0.0, abs=1e-5)
    other, _ = smooth_scene(B=2, H=8, W=8, seed=5)
    loss = local_global_loss(global_pred, boxes, other[:, 0], valid)
    torch.testing.assert_close(loss, ssi_loss(crop[:, None], other, valid[:, None], trim=0.0))
    loss.backward()
    inside = torch.zeros(2, 8, 8, dtype=torch.bool)
    inside[0, 2:6, 4:8] = True
    inside[1, 0:6, 1:7] = True
    assert (global_pred.grad[~inside] == 0).all() and (global_pred.grad[inside] != 0).any()


# --- feature alignment -------------------------------------------------------------------------------------


def test_feature_alignment_known_values():
    def features(*vector):  # (1, C, 2, 2), the same vector at every position
        return torch.tensor(vector, dtype=torch.float32)[None, :, None, None].expand(1, -1, 2, 2)

    teacher = features(1.0, 0.0)
    assert feature_alignment_loss(features(3.0, 0.0), teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_alignment_loss(features(0.0, 2.0), teacher).item() == pytest.approx(1.0)
    assert feature_alignment_loss(features(-1.0, 0.0), teacher).item() == pytest.approx(2.0)
    assert feature_alignment_loss(features(1.0, 1.0), teacher).item() == pytest.approx(1 - 1 / math.sqrt(2))
    # Student features of another size are resampled to the teacher's (constant fields stay constant).
    small = features(0.0, 5.0)[..., :1, :1]
    assert feature_alignment_loss(small, teacher).item() == pytest.approx(1.0)


# --- image teachers and their config ----------------------------------------------------------------------


def image_view(B=2, H=12, W=16, seed=0) -> View:
    g = torch.Generator().manual_seed(seed)
    depth = 1 + 3 * torch.rand(B, H, W, generator=g)
    K = torch.tensor([[14.0, 0.0, (W - 1) / 2], [0.0, 14.0, (H - 1) / 2], [0.0, 0.0, 1.0]]).expand(B, 3, 3)
    valid = torch.rand(B, H, W, generator=g) > 0.1
    image = torch.ones(B, H, W, dtype=torch.bool)
    image[:, -2:] = False  # two rows of padding
    rgb = torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8)
    return View(rgb, K.clone(), torch.where(valid & image, depth, 0.0), valid & image, image,
                tuple((0, b, WHOLE_VIEW) for b in range(B)))


def config(**values) -> PretrainConfig:
    return PretrainConfig.from_dict(values, "pretrain")


def test_ground_truth_teacher_is_the_view_itself():
    view = image_view()
    target = build_image_teacher(config(), torch.device("cpu"))(view)
    assert target.depth is view.depth and target.valid is view.valid and target.features is None


def test_synthetic_teacher_corrupts_ground_truth_reproducibly():
    view = image_view()
    exact = NO_CORRUPTION
    cpu = torch.device("cpu")
    clean = build_image_teacher(config(teacher="synthetic", teacher_settings=exact), cpu)(view)
    torch.testing.assert_close(clean.depth, view.depth)  # no corruption: the ground truth
    assert torch.equal(clean.valid, view.valid)
    # A global scale only: depth / ground truth is one factor per image (and it differs between images).
    scale_only = {**exact, "synthetic_scale_jitter": 0.1}
    scaled = build_image_teacher(config(teacher="synthetic", teacher_settings=scale_only), cpu)(view)
    ratio = [scaled.depth[b][view.valid[b]] / view.depth[b][view.valid[b]] for b in range(2)]
    assert all(float(r.max() - r.min()) < 1e-5 for r in ratio)
    assert abs(float(ratio[0][0] - ratio[1][0])) > 1e-4
    teacher = build_image_teacher(config(teacher="synthetic"), cpu)
    target = teacher(view)
    expected = corrupt_image(view.depth[0].numpy(), view.K[0].double().numpy(), TeacherConfig(), (0, 0, 0),
                             view.rgb[0].permute(1, 2, 0).numpy())[0]
    torch.testing.assert_close(target.depth[0][view.valid[0]], torch.from_numpy(expected)[view.valid[0]])
    torch.testing.assert_close(teacher(view).depth, target.depth)  # the same image: the same corruption
    assert not torch.equal(teacher(view.crop(torch.tensor([[0, 0, 12, 16]] * 2))).depth, target.depth)


def test_crop_view_zooms_images_targets_and_intrinsics():
    view = image_view()
    boxes = torch.tensor([[0, 0, 6, 8], [6, 8, 6, 8]])
    crop = view.crop(boxes)
    assert crop.seeds == ((0, 0, CROP_VIEW), (0, 1, CROP_VIEW))
    zoomed = view.depth[0, :6, :8].repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(crop.depth[0], zoomed)
    assert torch.equal(crop.image[1, -4:], torch.zeros(4, 16, dtype=torch.bool))  # the padding, zoomed
    assert crop.rgb.dtype == torch.uint8 and crop.K[1, 0, 0] == 28.0


class FakeImageUniDepth:
    """UniDepthV2's interface as the image teachers use it (``from_pretrained``, ``to``, ``eval``,
    ``infer(rgb 0-255, camera) -> dict``): depth 2.5 m everywhere but NaN at pixel (0, 0) (a failed pixel);
    records the weights it was loaded from and every call's ``(rgb shape, camera)``."""

    weights: ClassVar[str | None] = None
    calls: ClassVar[list[tuple[tuple[int, ...], torch.Tensor | None]]] = []

    @classmethod
    def from_pretrained(cls, weights):
        cls.weights = weights
        return cls()

    def to(self, device):
        return self

    def eval(self):
        return self

    def infer(self, rgb, camera=None):
        self.calls.append((tuple(rgb.shape), camera))
        B, _, H, W = rgb.shape
        depth = torch.full((B, 1, H, W), 2.5)
        depth[:, :, 0, 0] = math.nan
        return {"depth": depth, "confidence": torch.ones(B, 1, H, W),
                "intrinsics": torch.eye(3).expand(B, 3, 3)}


def use_fake_image_unidepth(monkeypatch) -> type[FakeImageUniDepth]:
    """Make ``_import_unidepth`` return :class:`FakeImageUniDepth`, with its records emptied."""
    FakeImageUniDepth.weights, FakeImageUniDepth.calls = None, []
    monkeypatch.setattr("videomamba_depth.teacher.unidepth._import_unidepth", lambda: FakeImageUniDepth)
    return FakeImageUniDepth


def test_unidepth_teacher_is_a_guarded_import_and_runs_a_fake(monkeypatch):
    with pytest.raises(MissingDependencyError, match="pip install"):
        build_image_teacher(config(teacher="unidepth"), torch.device("cpu"))
    fake = use_fake_image_unidepth(monkeypatch)
    settings = {"weights": "w/x", "device": "cpu"}
    teacher = build_image_teacher(config(teacher="unidepth", teacher_settings=settings), torch.device("cpu"))
    view = image_view()
    target = teacher(view)
    assert fake.weights == "w/x" and len(fake.calls) == 2  # one call per image with its K
    torch.testing.assert_close(fake.calls[1][1][0], view.K[1])
    assert torch.equal(target.valid[:, 1:], view.image[:, 1:])  # the image, not its padding
    assert not target.valid[:, 0, 0].any() and (target.depth[target.valid] == 2.5).all()


def test_student_teacher_predicts_like_the_saved_model_and_exposes_features(tmp_path):
    torch.manual_seed(0)
    big = build_student(tiny_model_config())
    save_student(tmp_path / "big.safetensors", big)
    cfg = config(teacher=f"student:{tmp_path / 'big.safetensors'}", loss={"feature_align": 0.1,
                                                                          "feature_align_scale": "s8"})
    teacher = build_image_teacher(cfg, torch.device("cpu"))
    view = image_view()
    target = teacher(view, features=True)
    with torch.no_grad():
        depth, features = big.eval().forward_frames_with_features(view.rgb, view.K)
    torch.testing.assert_close(target.depth[view.image], depth[view.image])
    assert torch.equal(target.valid, view.image)
    torch.testing.assert_close(target.features, features["s8"])
    assert teacher.channels == 8 and len(teacher.identity()) == 64
    assert teacher(view).features is None
    missing = config(teacher=f"student:{tmp_path / 'missing.safetensors'}")
    with pytest.raises(InputError, match=r"missing\.safetensors: pretrain\.teacher names no such student"):
        build_image_teacher(missing, torch.device("cpu"))


def test_teacher_config_errors():
    with pytest.raises(ConfigError, match=r"teacher must be none, synthetic, unidepth or student:<path"):
        config(teacher="student:model.pt")
    with pytest.raises(ConfigError, match=r"teacher must be"):
        config(teacher="dpt")
    with pytest.raises(ConfigError, match=r"loss.feature_align is 0.5 but teacher 'synthetic' exposes no "
                                          r"features"):
        config(teacher="synthetic", loss={"feature_align": 0.5})
    with pytest.raises(ConfigError, match=r"teacher_settings: no 'backend' key"):
        config(teacher="unidepth", teacher_settings={"backend": "unidepth"})
    with pytest.raises(ConfigError, match=r"pretrain.teacher_settings: unknown key"):
        config(teacher_settings={"synthetic_noise": 0.1})
    with pytest.raises(ConfigError, match=r"crop_fraction must be"):
        config(loss={"crop_fraction": [0.0, 0.5]})
    assert config(teacher="student:a/b.safetensors").student_teacher == "a/b.safetensors"
