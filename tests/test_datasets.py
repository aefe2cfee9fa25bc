"""Image depth datasets: each format read from a tiny fixture written in its real layout, each bad input's
error, the prepare geometry (K exact after resize/pad and flip), the mixture sampler and collation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from videomamba_depth.camera import ResizePad, make_K, project
from videomamba_depth.datasets import (
    DatasetError,
    ImageDatasetConfig,
    ImageKey,
    MixedImageDataset,
    MixedImageSampler,
    augment,
    collate_images,
    open_image_dataset,
    write_filelist,
    write_image_sample,
)
from videomamba_depth.errors import InputError, MissingDependencyError
from videomamba_depth.prepare import resample_nearest, resize_pad
from videomamba_depth.training.data import photometric

LONG_EDGE, PAD = 32, 7  # odd padding on purpose: K must follow the pad split exactly


def rng_image(seed: int, height: int = 30, width: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def ramp_depth(height: int = 30, width: int = 40) -> np.ndarray:
    return 1.0 + np.arange(height * width, dtype=np.float32).reshape(height, width) / np.float32(100.0)


def config(root: Path, **kw) -> ImageDatasetConfig:
    return ImageDatasetConfig.from_dict({"root": str(root), **kw})


def open_ds(root: Path, **kw):
    return open_image_dataset(config(root, **kw), long_edge=LONG_EDGE, pad_multiple=PAD)


# --- generic file list ----------------------------------------------------------------------------------


@pytest.fixture
def filelist_root(tmp_path: Path) -> Path:
    """``train.txt`` with an npy depth + K line, a 16-bit PNG (mm) line without K, and an h5 line."""
    K = make_K(50.0, 52.0, 19.0, 14.5)
    depth = ramp_depth()
    depth[0, 0], depth[0, 1], depth[0, 2], depth[0, 3] = np.nan, 0.0, -1.0, 1000.0  # all invalid
    rows = [write_image_sample(tmp_path, "a", rng_image(0), depth, K)]
    image_b = write_image_sample(tmp_path, "b", rng_image(1), ramp_depth())[0]
    cv2.imwrite(str(tmp_path / "b_mm.png"), np.round(ramp_depth() * 1000).astype(np.uint16))
    rows.append((image_b, Path("b_mm.png")))
    write_filelist(tmp_path / "train.txt", rows)
    return tmp_path


def test_filelist_npy_with_K_is_resized_like_prepare(filelist_root: Path) -> None:
    ds = open_ds(filelist_root, format="filelist", split="train.txt")
    assert len(ds) == 2 and ds.skipped == 0
    sample = ds[0]
    geometry = ResizePad.fit(40, 30, LONG_EDGE, PAD)
    Wp, Hp = geometry.padded_size
    rgb = cv2.cvtColor(cv2.imread(str(filelist_root / "rgb/a.png")), cv2.COLOR_BGR2RGB)
    assert torch.equal(sample["rgb"], torch.from_numpy(resize_pad(rgb[None], geometry)[0].transpose(2, 0, 1)))
    raw = np.load(filelist_root / "depth/a.npy")
    valid = np.isfinite(raw) & (raw > 0) & (raw <= 80.0)
    assert not valid[0, :4].any() and valid[1:].all()
    expected = resample_nearest(np.where(valid, raw, 0)[None], geometry)[0]
    np.testing.assert_array_equal(sample["depth"].numpy(), expected)
    np.testing.assert_array_equal(sample["valid"].numpy(), resample_nearest(valid[None], geometry)[0])
    assert sample["depth"].shape == (Hp, Wp) and sample["depth"].dtype == torch.float32
    assert bool(sample["has_K"])
    K = geometry.apply_K(make_K(50.0, 52.0, 19.0, 14.5))
    np.testing.assert_allclose(sample["K"].numpy(), K, rtol=1e-6)
    assert sample["pairs"].shape == (0, 5)


def test_filelist_png_depth_scale_and_missing_K(filelist_root: Path) -> None:
    ds = open_ds(filelist_root, format="filelist", split="train.txt", depth_scale=1000.0)
    sample = ds[1]
    assert not bool(sample["has_K"]) and not sample["K"].any()
    geometry = ResizePad.fit(40, 30, LONG_EDGE, PAD)
    expected = resample_nearest(np.round(ramp_depth() * 1000)[None] / 1000.0, geometry)[0]
    np.testing.assert_allclose(sample["depth"].numpy(), expected, rtol=1e-6)


def test_filelist_h5_depth(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py (optional extra 'h5') is not installed")
    image = write_image_sample(tmp_path, "c", rng_image(2), ramp_depth())[0]
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["dist"] = ramp_depth() * 2
    write_filelist(tmp_path / "val.txt", [(image, "c.h5")])
    sample = open_ds(tmp_path, format="filelist", split="val.txt", h5_key="dist")[0]
    geometry = ResizePad.fit(40, 30, LONG_EDGE, PAD)
    expected = resample_nearest(ramp_depth()[None] * 2, geometry)[0]
    np.testing.assert_array_equal(sample["depth"].numpy(), expected)
    with pytest.raises(DatasetError, match=r"val\.txt:1: .*c\.h5 has no dataset 'depth'"):
        open_ds(tmp_path, format="filelist", split="val.txt")[0]


def test_filelist_h5_without_h5py_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       ) -> None:
    image = write_image_sample(tmp_path, "c", rng_image(2), ramp_depth())[0]
    (tmp_path / "c.h5").write_bytes(b"")
    write_filelist(tmp_path / "val.txt", [(image, "c.h5")])
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'videomamba-depth\[h5\]'"):
        open_ds(tmp_path, format="filelist", split="val.txt")[0]


def test_write_filelist_replaces_whole_and_rejects_spaces(tmp_path: Path) -> None:
    write_filelist(tmp_path / "l.txt", [("x.png", "x.npy"), (tmp_path / "y.png", tmp_path / "y.npy", None)])
    assert (tmp_path / "l.txt").read_text() == "x.png x.npy\ny.png y.npy\n"
    with pytest.raises(ValueError, match="whitespace"):
        write_filelist(tmp_path / "l.txt", [("a b.png", "x.npy")])
    assert (tmp_path / "l.txt").read_text() == "x.png x.npy\ny.png y.npy\n"


def _bad_filelist(root: Path, case: str) -> tuple[str, str]:
    """Write a list whose line 2 is bad in one way; return (list name, expected message pattern)."""
    good = write_image_sample(root, "g", rng_image(3), ramp_depth(), make_K(40, 40, 20, 15))
    rgb, depth, K = (str(p) for p in good)
    np.save(root / "d3.npy", np.zeros((1, 30, 40), np.float32))
    np.save(root / "small.npy", np.ones((10, 10), np.float32))
    np.save(root / "K4.npy", np.eye(4))
    (root / "garbage.png").write_bytes(b"not an image at all")
    cv2.imwrite(str(root / "d8.png"), np.full((30, 40), 7, np.uint8))
    line, pattern = {
        "one field": (rgb, "expected 'image depth \\[intrinsics\\]'.* 1 field"),
        "four fields": (f"{rgb} {depth} {K} extra", "4 field"),
        "missing image": (f"nope.png {depth}", "image .*nope.png not found"),
        "missing depth": (f"{rgb} nope.npy", "depth .*nope.npy not found"),
        "missing K": (f"{rgb} {depth} nope.npy", "intrinsics .*nope.npy not found"),
        "depth suffix": (f"{rgb} depth.jpg", "must be one of .npy"),
        "depth 3d": (f"{rgb} d3.npy", r"shape \(1, 30, 40\), not \(H, W\)"),
        "depth size": (f"{rgb} small.npy", "depth is 10x10 .* image .* is 40x30"),
        "unreadable image": (f"garbage.png {depth}", "garbage.png is not a readable image"),
        "8-bit png depth": (f"{rgb} d8.png", "d8.png is uint8; expected uint16"),
        "K shape": (f"{rgb} {depth} K4.npy", "K4.npy.*3x3"),
    }[case]
    (root / "bad.txt").write_text(f"# comment\n{rgb} {depth} {K}\n\n{line}\n")
    return "bad.txt", r"bad\.txt:4: .*" + pattern


BAD_CASES = ["one field", "four fields", "missing image", "missing depth", "missing K", "depth suffix",
             "depth 3d", "depth size", "unreadable image", "8-bit png depth", "K shape"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_filelist_bad_line_is_a_clear_error_or_a_counted_skip(tmp_path: Path, case: str) -> None:
    split, pattern = _bad_filelist(tmp_path, case)
    with pytest.raises(DatasetError, match=pattern) as info:
        ds = open_ds(tmp_path, format="filelist", split=split)
        for i in range(len(ds)):
            ds[i]
    assert isinstance(info.value, InputError) and "\n" not in str(info.value)
    ds = open_ds(tmp_path, format="filelist", split=split, skip_bad=True)
    samples = [ds[i] for i in range(len(ds))]
    assert ds.skipped >= 1 and all(bool(s["has_K"]) for s in samples)  # the bad line replaced by the good one


def test_filelist_missing_list_and_empty_list(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train\.txt: filelist index not found"):
        open_ds(tmp_path, format="filelist", split="train.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DatasetError, match="no usable samples"):
        open_ds(tmp_path, format="filelist", split="empty.txt")


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown key"):
        config(tmp_path, format="filelist", depth_scal=2)
    with pytest.raises(InputError, match="depth_scale must be a positive"):
        config(tmp_path, format="filelist", depth_scale=0)
    with pytest.raises(InputError, match="not one of"):
        config(tmp_path, format="kitti")


# --- augmentation, geometry after flip, collation -------------------------------------------------------


def test_flip_keeps_K_exact_and_mirrors_pairs(filelist_root: Path) -> None:
    sample = open_ds(filelist_root, format="filelist", split="train.txt")[0]
    sample["pairs"] = torch.tensor([[3.0, 4.0, 10.5, 2.0, 1.0]])
    flipped = augment(sample, np.random.default_rng(0), hflip=1.0, color_jitter=0.0)
    width = sample["rgb"].shape[-1]
    assert torch.equal(flipped["rgb"], sample["rgb"].flip(-1))
    assert torch.equal(flipped["valid"], sample["valid"].flip(-1))
    np.testing.assert_allclose(flipped["pairs"][0, [0, 2]].numpy(), [width - 1 - 3.0, width - 1 - 10.5])
    # A camera point seen at pixel u is seen at W - 1 - u in the mirror image, whose camera has x' = -x.
    points = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 3.5]])
    uv, _ = project(points, sample["K"].double().numpy())
    uv_flipped, _ = project(points * [-1, 1, 1], flipped["K"].double().numpy())
    np.testing.assert_allclose(uv_flipped[:, 0], width - 1 - uv[:, 0], atol=1e-4)
    np.testing.assert_allclose(uv_flipped[:, 1], uv[:, 1], atol=1e-4)
    twice = augment(flipped, np.random.default_rng(0), hflip=1.0, color_jitter=0.0)
    for key in ("rgb", "depth", "valid", "K", "pairs"):
        assert torch.allclose(twice[key].float(), sample[key].float())


def test_color_jitter_is_the_training_photometric(filelist_root: Path) -> None:
    sample = open_ds(filelist_root, format="filelist", split="train.txt")[0]
    out = augment(sample, np.random.default_rng(5), hflip=0.0, color_jitter=0.3)
    rng = np.random.default_rng(5)
    rng.random()
    gain, gamma = rng.uniform(-1.0, 1.0, 2) * 0.3 + 1.0
    assert torch.equal(out["rgb"], torch.from_numpy(photometric(sample["rgb"].numpy(), gain, gamma)))
    assert not torch.equal(out["rgb"], sample["rgb"]) and torch.equal(out["depth"], sample["depth"])


def test_collate_pads_sizes_and_pairs() -> None:
    def sample(h: int, w: int, p: int) -> dict[str, torch.Tensor]:
        return {"rgb": torch.ones(3, h, w, dtype=torch.uint8), "depth": torch.ones(h, w),
                "valid": torch.ones(h, w, dtype=torch.bool), "K": torch.eye(3), "has_K": torch.tensor(True),
                "pairs": torch.ones(p, 5)}

    batch = collate_images([sample(14, 21, 0), sample(21, 14, 3)])
    assert batch["rgb"].shape == (2, 3, 21, 21) and batch["depth"].shape == (2, 21, 21)
    assert batch["valid"][0].sum() == 14 * 21 and not batch["valid"][0, 14:].any()
    assert batch["pairs"].shape == (2, 3, 5) and batch["pairs_valid"].tolist() == [[False] * 3, [True] * 3]
    assert batch["K"].shape == (2, 3, 3) and batch["has_K"].tolist() == [True, True]


# --- mixture sampler ------------------------------------------------------------------------------------


def keys_of(sampler: MixedImageSampler) -> list[list[ImageKey]]:
    return list(sampler)


def test_sampler_is_reproducible_resumable_and_weighted() -> None:
    kw = dict(batch_size=4, seed=3, steps=50)
    full = keys_of(MixedImageSampler([5, 7, 9], [1.0, 3.0, 0.0], **kw))
    assert full == keys_of(MixedImageSampler([5, 7, 9], [1.0, 3.0, 0.0], **kw))
    assert full[20:] == keys_of(MixedImageSampler([5, 7, 9], [1.0, 3.0, 0.0], start=20, **kw))
    assert full != keys_of(MixedImageSampler([5, 7, 9], [1.0, 3.0, 0.0], **{**kw, "seed": 4}))
    flat = [k for keys in full for k in keys]
    counts = np.bincount([k.dataset for k in flat], minlength=3)
    assert counts[2] == 0 and 0.6 < counts[1] / len(flat) < 0.9  # expected 0.75
    # Without replacement within a pass: the first 5 draws of dataset 0 are its 5 items.
    first = [k.index for k in flat if k.dataset == 0][:5]
    assert sorted(first) == [0, 1, 2, 3, 4]
    assert [k.draw for k in flat] == list(range(len(flat)))


def test_sampler_ranks_are_disjoint_and_cover_the_global_batch() -> None:
    kw = dict(batch_size=3, seed=1, steps=10)
    single = keys_of(MixedImageSampler([6, 4], [1.0, 1.0], **{**kw, "batch_size": 9}))
    ranks = [keys_of(MixedImageSampler([6, 4], [1.0, 1.0], rank=r, world_size=3, **kw)) for r in range(3)]
    for step in range(10):
        shares = [set(ranks[r][step]) for r in range(3)]
        assert all(len(s) == 3 for s in shares)
        assert not (shares[0] & shares[1] or shares[0] & shares[2] or shares[1] & shares[2])
        assert set.union(*shares) == set(single[step])


def test_mixed_dataset_augments_by_draw(filelist_root: Path) -> None:
    ds = open_ds(filelist_root, format="filelist", split="train.txt")
    mixed = MixedImageDataset([ds, ds], hflip=0.5, color_jitter=0.2, seed=0)
    a, b = mixed[ImageKey(1, 0, 7)], mixed[ImageKey(1, 0, 7)]
    assert torch.equal(a["rgb"], b["rgb"]) and int(a["dataset"]) == 1 and int(a["index"]) == 0
    others = [mixed[ImageKey(1, 0, d)]["rgb"] for d in range(8, 12)]
    assert any(not torch.equal(a["rgb"], o) for o in others)


# --- NYU Depth V2 CSV release ---------------------------------------------------------------------------

NYU_W, NYU_H = 64, 48  # small frames of NYU's 4:3 aspect; K and the crop scale from 640x480


def write_nyu(root: Path, *, train_depth: np.ndarray | None = None, test_depth: np.ndarray | None = None,
              ) -> Path:
    """DenseDepth's nyu_data layout: data/nyu2_{train,test}.csv and the files they name (8-bit train and
    16-bit test depth unless ``train_depth`` / ``test_depth`` give other arrays)."""
    scene = root / "data/nyu2_train/basement_0001a_out"
    scene.mkdir(parents=True)
    (root / "data/nyu2_test").mkdir()
    cv2.imwrite(str(scene / "1.jpg"), rng_image(4, NYU_H, NYU_W))
    stored = (np.arange(NYU_H * NYU_W).reshape(NYU_H, NYU_W) % 256).astype(np.uint8)
    cv2.imwrite(str(scene / "1.png"), stored if train_depth is None else train_depth)
    cv2.imwrite(str(root / "data/nyu2_test/00000_colors.png"), rng_image(5, NYU_H, NYU_W))
    stored16 = (500 + np.arange(NYU_H * NYU_W).reshape(NYU_H, NYU_W)).astype(np.uint16)
    cv2.imwrite(str(root / "data/nyu2_test/00000_depth.png"), stored16 if test_depth is None else test_depth)
    (root / "data/nyu2_train.csv").write_text(
        "data/nyu2_train/basement_0001a_out/1.jpg,data/nyu2_train/basement_0001a_out/1.png\n")
    (root / "data/nyu2_test.csv").write_text(
        "data/nyu2_test/00000_colors.png,data/nyu2_test/00000_depth.png\n")
    return root


def test_nyu_units_per_split_and_intrinsics(tmp_path: Path) -> None:
    from videomamba_depth.datasets.nyu import NYU_K

    root = write_nyu(tmp_path)
    geometry = ResizePad.fit(NYU_W, NYU_H, LONG_EDGE, PAD)
    train = open_ds(root, format="nyu_csv", split="train", max_depth=100.0)[0]
    stored = cv2.imread(str(root / "data/nyu2_train/basement_0001a_out/1.png"), cv2.IMREAD_UNCHANGED)
    metres = stored / 255.0 * 10.0  # DenseDepth: 8-bit train depth, 255 = 10 m
    expected = resample_nearest(np.where(stored > 0, metres, 0)[None], geometry)[0]
    np.testing.assert_allclose(train["depth"].numpy(), expected, rtol=1e-6)
    test = open_ds(root, format="nyu_csv", split="test")[0]
    stored16 = cv2.imread(str(root / "data/nyu2_test/00000_depth.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(test["depth"].numpy(), resample_nearest(stored16[None] / 1000.0, geometry)[0],
                               rtol=1e-6)
    # K: NYU's 640x480 intrinsics at 64x48 (pixel-centre aligned), then prepare's resize/pad.
    s = NYU_W / 640
    K64 = make_K(518.8579 * s, 519.4696 * s, (325.5824 - 1 + 0.5) * s - 0.5, (253.7362 - 1 + 0.5) * s - 0.5)
    np.testing.assert_allclose(NYU_K[0, 2], 324.5824)
    np.testing.assert_allclose(test["K"].numpy(), geometry.apply_K(K64), rtol=1e-6)
    assert bool(test["has_K"])


def test_nyu_eval_crop_masks_the_border(tmp_path: Path) -> None:
    from videomamba_depth.datasets.nyu import eigen_crop_mask

    mask = eigen_crop_mask(480, 640)
    assert mask[45:471, 41:601].all() and mask.sum() == 426 * 560
    root = write_nyu(tmp_path)
    full = open_ds(root, format="nyu_csv", split="test")[0]["valid"]
    cropped = open_ds(root, format="nyu_csv", split="test", eval_crop=True)[0]["valid"]
    assert cropped.sum() < full.sum() and not (cropped & ~full).any()
    geometry = ResizePad.fit(NYU_W, NYU_H, LONG_EDGE, PAD)
    expected = resample_nearest(eigen_crop_mask(NYU_H, NYU_W)[None], geometry)[0]
    assert torch.equal(cropped, torch.from_numpy(expected) & full)


def test_nyu_wrong_dtype_for_split_is_an_error(tmp_path: Path) -> None:
    root = write_nyu(tmp_path, train_depth=np.full((NYU_H, NYU_W), 900, np.uint16),
                     test_depth=np.full((NYU_H, NYU_W), 90, np.uint8))
    with pytest.raises(DatasetError, match=r"nyu2_train\.csv:1: .*1\.png is uint16; expected uint8"):
        open_ds(root, format="nyu_csv", split="train")[0]
    with pytest.raises(DatasetError, match=r"nyu2_test\.csv:1: .*00000_depth\.png is uint8; expected uint16"):
        open_ds(root, format="nyu_csv", split="test")[0]


def test_nyu_grey_rgb_depth_accepted_colour_rejected(tmp_path: Path) -> None:
    grey = np.arange(NYU_H * NYU_W).reshape(NYU_H, NYU_W) % 200 + 1
    root = write_nyu(tmp_path / "a")
    cv2.imwrite(str(root / "data/nyu2_train/basement_0001a_out/1.png"),
                np.repeat(grey[..., None], 3, axis=2).astype(np.uint8))
    sample = open_ds(root, format="nyu_csv", split="train")[0]
    assert sample["valid"].any()
    cv2.imwrite(str(root / "data/nyu2_train/basement_0001a_out/1.png"), rng_image(6, NYU_H, NYU_W))
    with pytest.raises(DatasetError, match="3 unequal channels"):
        open_ds(root, format="nyu_csv", split="train")[0]


@pytest.mark.parametrize(("line", "pattern"), [
    ("data/nyu2_test/00000_colors.png", "expected 'rgb_path,depth_path', got 1 field"),
    ("data/nyu2_test/00000_colors.png,data/nyu2_test/missing.png", "depth .*missing.png not found"),
    ("data/nyu2_test/00000_colors.png,data/nyu2_test/00000_colors.jpg", r"depth .*\.jpg must be a \.png"),
])
def test_nyu_bad_lines(tmp_path: Path, line: str, pattern: str) -> None:
    root = write_nyu(tmp_path)
    good = (root / "data/nyu2_test.csv").read_text()
    (root / "data/nyu2_test.csv").write_text(good + line + "\n")
    with pytest.raises(DatasetError, match=r"nyu2_test\.csv:2: " + pattern):
        open_ds(root, format="nyu_csv", split="test")
    ds = open_ds(root, format="nyu_csv", split="test", skip_bad=True)
    assert len(ds) == 1 and ds.skipped == 1
    with pytest.raises(DatasetError, match="split must be train or test"):
        open_ds(root, format="nyu_csv", split="val")


# --- SUN RGB-D ------------------------------------------------------------------------------------------


def write_sun_frame(root: Path, folder: str, seed: int, depth_m: np.ndarray, K_one_based: np.ndarray) -> Path:
    from videomamba_depth.datasets.sunrgbd import encode_depth

    frame = root / folder
    for sub in ("image", "depth", "depth_bfx"):
        (frame / sub).mkdir(parents=True)
    name = Path(folder).name
    h, w = depth_m.shape
    cv2.imwrite(str(frame / "image" / f"{name}.jpg"), rng_image(seed, h, w))
    cv2.imwrite(str(frame / "depth" / f"{name}.png"), encode_depth(depth_m))
    cv2.imwrite(str(frame / "depth_bfx" / f"{name}.png"), encode_depth(depth_m + 0.5))
    (frame / "intrinsics.txt").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in K_one_based))
    return frame


def test_sunrgbd_depth_bitshift_bfx_and_one_based_K(tmp_path: Path) -> None:
    from videomamba_depth.datasets.sunrgbd import decode_depth

    # Toolbox encoding: 1000 mm stored rotated left by 3 bits is 8000; 8191 mm is 65528; 8192 mm wraps to 1.
    np.testing.assert_allclose(decode_depth(np.array([8000, 65528, 1], np.uint16)), [1.0, 8.191, 8.192],
                               rtol=1e-6)
    depth = 0.5 + ramp_depth(30, 40) / 10
    K = make_K(30.0, 31.0, 21.0, 16.0)
    write_sun_frame(tmp_path, "kv1/NYUdata/NYU0001", 7, depth, K)
    (tmp_path / "train.json").write_text(json.dumps(["/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0001"]))
    geometry = ResizePad.fit(40, 30, LONG_EDGE, PAD)
    raw = open_ds(tmp_path, format="sunrgbd")[0]  # split "train" finds train.json
    np.testing.assert_allclose(raw["depth"].numpy(), resample_nearest(np.round(depth * 1000)[None] / 1000,
                                                                      geometry)[0], rtol=1e-6)
    bfx = open_ds(tmp_path, format="sunrgbd", bfx=True)[0]
    np.testing.assert_allclose((bfx["depth"] - raw["depth"])[raw["valid"]].numpy(), 0.5, atol=1.5e-3)
    np.testing.assert_allclose(raw["K"].numpy(), geometry.apply_K(make_K(30.0, 31.0, 20.0, 15.0)), rtol=1e-6)


@pytest.mark.parametrize("case", ["no folder", "two images", "short intrinsics", "not a list", "bad entry"])
def test_sunrgbd_bad_input(tmp_path: Path, case: str) -> None:
    frame = write_sun_frame(tmp_path, "kv2/align_kv2/f1", 8, ramp_depth(), make_K(30, 30, 20, 15))
    entries, pattern = ["kv2/align_kv2/f1"], ""
    if case == "no folder":
        entries.append("kv2/align_kv2/missing")
        pattern = r"train\.json\[1\]: frame folder .*missing not found"
    elif case == "two images":
        cv2.imwrite(str(frame / "image" / "extra.jpg"), rng_image(9))
        pattern = r"train\.json\[0\]: expected one image file .* found 2"
    elif case == "short intrinsics":
        (frame / "intrinsics.txt").write_text("30 0 20 0 30 15 0 0")
        pattern = r"train\.json\[0\] \(kv2/align_kv2/f1\): intrinsics .* 9 numbers \(3x3\), got 8"
    elif case == "bad entry":
        entries.append(7)
        pattern = r"train\.json\[1\]: expected a frame folder name, got 7"
    (tmp_path / "train.json").write_text(json.dumps({"frames": entries} if case == "not a list" else entries))
    if case == "not a list":
        pattern = r"train\.json: expected a JSON list of frame folders"
    with pytest.raises(DatasetError, match=pattern):
        ds = open_ds(tmp_path, format="sunrgbd", split="train.json")
        ds[0]


# --- iBims-1 --------------------------------------------------------------------------------------------


def write_ibims(root: Path, names: list[str], *, calib: bool = True) -> Path:
    for sub in ("rgb", "depth", "mask_invalid", "mask_transp", "calib"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        cv2.imwrite(str(root / "rgb" / f"{name}.png"), rng_image(10 + i))
        cv2.imwrite(str(root / "depth" / f"{name}.png"), (ramp_depth() * 1000).astype(np.uint16))
        invalid = np.full((30, 40), 255, np.uint8)
        invalid[:5] = 0  # no valid measurement in the top rows
        transp = np.full((30, 40), 1, np.uint8)
        transp[:, :6] = 0  # a window on the left
        cv2.imwrite(str(root / "mask_invalid" / f"{name}.png"), invalid)
        cv2.imwrite(str(root / "mask_transp" / f"{name}.png"), transp)
        if calib:
            (root / "calib" / f"{name}.txt").write_text("50 0 19.5\n0 50 14.5\n0 0 1\n")
    (root / "imagelist.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def test_ibims_units_masks_and_calib(tmp_path: Path) -> None:
    root = write_ibims(tmp_path, ["corridor_01", "office_02"])
    ds = open_ds(root, format="ibims1", split="imagelist")
    assert len(ds) == 2
    sample = ds[0]
    geometry = ResizePad.fit(40, 30, LONG_EDGE, PAD)
    metres = (ramp_depth() * 1000).astype(np.uint16) * 50.0 / 65535
    keep = np.ones((30, 40), bool)
    keep[:5], keep[:, :6] = False, False
    np.testing.assert_allclose(sample["depth"].numpy(),
                               resample_nearest(np.where(keep, metres, 0)[None], geometry)[0], rtol=1e-6)
    assert torch.equal(sample["valid"], torch.from_numpy(resample_nearest(keep[None], geometry)[0]))
    np.testing.assert_allclose(sample["K"].numpy(), geometry.apply_K(make_K(50, 50, 19.5, 14.5)), rtol=1e-6)
    (root / "calib" / "corridor_01.txt").unlink()
    assert not bool(open_ds(root, format="ibims1", split="imagelist.txt")[0]["has_K"])


def test_ibims_bad_input(tmp_path: Path) -> None:
    root = write_ibims(tmp_path, ["a"])
    (root / "mask_transp" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"imagelist\.txt:1: mask_transp .*a\.png not found"):
        open_ds(root, format="ibims1", split="imagelist.txt")
    (root / "imagelist.txt").write_text("../a\n")
    with pytest.raises(DatasetError, match="must be a plain name"):
        open_ds(root, format="ibims1", split="imagelist.txt")
    with pytest.raises(DatasetError, match=r"iBims-1 lists its images in imagelist\.txt"):
        open_ds(root, format="ibims1")


# --- DA-2K ----------------------------------------------------------------------------------------------


def write_da2k(root: Path, annotations: dict) -> Path:
    (root / "images/indoor").mkdir(parents=True)
    cv2.imwrite(str(root / "images/indoor/a.jpg"), rng_image(11))
    cv2.imwrite(str(root / "images/indoor/b.png"), rng_image(12, 40, 30))
    (root / "annotations.json").write_text(json.dumps(annotations))
    return root


DA2K = {
    "images/indoor/a.jpg": [
        {"point1": [10, 20], "point2": [5, 30], "closer_point": "point1"},
        {"point1": [0, 0], "point2": [29, 39], "closer_point": "point2"},
    ],
    "images/indoor/b.png": [{"point1": [39, 29], "point2": [1, 2], "closer_point": "point1"}],
}


def test_da2k_pairs_follow_K(tmp_path: Path) -> None:
    ds = open_ds(write_da2k(tmp_path, DA2K), format="da2k", split="annotations")
    sample = ds[0]
    assert not sample["valid"].any() and not sample["depth"].any() and not bool(sample["has_K"])
    # A pixel (u, v) of the original must land where prepare's K update sends its ray: K' K^-1 (u, v, 1).
    geometry = ResizePad.fit(40, 30, LONG_EDGE, PAD)
    K = make_K(40.0, 40.0, 19.5, 14.5)
    warp = geometry.apply_K(K) @ np.linalg.inv(K)
    original = np.array([[20, 10, 30, 5], [0, 0, 39, 29]], np.float64)
    for row, (u1, v1, u2, v2) in zip(sample["pairs"].numpy(), original, strict=True):
        np.testing.assert_allclose(row[:2], (warp @ [u1, v1, 1])[:2], atol=1e-4)
        np.testing.assert_allclose(row[2:4], (warp @ [u2, v2, 1])[:2], atol=1e-4)
    assert sample["pairs"][:, 4].tolist() == [1.0, -1.0]
    batch = collate_images([sample, ds[1]])
    assert batch["pairs"].shape == (2, 2, 5)
    assert batch["pairs_valid"].tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize(("entry", "pattern"), [
    ({"point1": [10, 20], "point2": [5, 30], "closer_point": "point3"}, "closer_point must be"),
    ({"point1": [10, 20], "closer_point": "point1"}, "missing point2"),
    ({"point1": [10], "point2": [5, 30], "closer_point": "point1"}, r"'point1' must be \[row, column\]"),
    ([1, 2], "expected an object"),
])
def test_da2k_bad_annotations(tmp_path: Path, entry: object, pattern: str) -> None:
    root = write_da2k(tmp_path, {"images/indoor/a.jpg": [entry]})
    with pytest.raises(DatasetError, match=r"annotations\.json: 'images/indoor/a\.jpg'\[0\]: " + pattern):
        open_ds(root, format="da2k", split="annotations.json")


def test_da2k_point_outside_image_and_missing_image(tmp_path: Path) -> None:
    root = write_da2k(tmp_path, {"images/indoor/a.jpg": [
        {"point1": [30, 5], "point2": [5, 30], "closer_point": "point1"}]})
    with pytest.raises(DatasetError, match=r"\[0\]: point \(30, 5\) .* outside the 40x30 image"):
        open_ds(root, format="da2k", split="annotations.json")[0]
    (root / "annotations.json").write_text(json.dumps({"images/nope.jpg": DA2K["images/indoor/a.jpg"]}))
    with pytest.raises(DatasetError, match=r"'images/nope\.jpg': image .*nope\.jpg not found"):
        open_ds(root, format="da2k", split="annotations.json")


# --- every format gives the same sample contract --------------------------------------------------------


def test_every_format_gives_the_sample_contract(tmp_path: Path) -> None:
    from videomamba_depth.datasets import FORMATS

    write_image_sample(tmp_path / "fl", "a", rng_image(0), ramp_depth())
    write_filelist(tmp_path / "fl/train.txt", [("rgb/a.png", "depth/a.npy")])
    write_sun_frame(tmp_path / "sun", "kv1/f", 1, ramp_depth(), make_K(30, 30, 20, 15))
    (tmp_path / "sun/train.json").write_text('["kv1/f"]')
    configs = {
        "filelist": {"root": str(tmp_path / "fl")},
        "nyu_csv": {"root": str(write_nyu(tmp_path / "nyu"))},
        "sunrgbd": {"root": str(tmp_path / "sun")},
        "ibims1": {"root": str(write_ibims(tmp_path / "ib", ["x"])), "split": "imagelist"},
        "da2k": {"root": str(write_da2k(tmp_path / "da", DA2K)), "split": "annotations"},
    }
    assert sorted(configs) == sorted(FORMATS)
    for fmt, kw in configs.items():
        ds = open_image_dataset(ImageDatasetConfig.from_dict({"format": fmt, **kw}), long_edge=LONG_EDGE,
                                pad_multiple=PAD)
        s = ds[0]
        H, W = s["rgb"].shape[1:]
        assert s["rgb"].dtype == torch.uint8 and s["rgb"].shape[0] == 3 and H % PAD == 0 and W % PAD == 0
        assert s["depth"].shape == s["valid"].shape == (H, W) and s["depth"].dtype == torch.float32
        assert s["valid"].dtype == torch.bool and not s["depth"][~s["valid"]].any()
        assert s["K"].shape == (3, 3) and s["K"].dtype == torch.float32 and s["has_K"].shape == ()
        assert s["pairs"].ndim == 2 and s["pairs"].shape[1] == 5 and s["pairs"].dtype == torch.float32
        assert (s["pairs"].shape[0] > 0) == (fmt == "da2k") and ds.name.startswith(fmt)


def test_dataloader_over_a_mixture(tmp_path: Path) -> None:
    """The sampler is a DataLoader batch sampler; keys reach MixedImageDataset; batches collate."""
    from torch.utils.data import DataLoader

    write_image_sample(tmp_path / "fl", "a", rng_image(0), ramp_depth())
    write_filelist(tmp_path / "fl/train.txt", [("rgb/a.png", "depth/a.npy")])
    datasets = [open_ds(tmp_path / "fl", format="filelist"),
                open_ds(write_da2k(tmp_path / "da", DA2K), format="da2k", split="annotations")]
    sampler = MixedImageSampler([len(d) for d in datasets], [1.0, 1.0], batch_size=4, seed=0, steps=3)
    loader = DataLoader(MixedImageDataset(datasets, hflip=0.5, color_jitter=0.1, seed=0),
                        batch_sampler=sampler, collate_fn=collate_images)
    batches = list(loader)
    assert len(batches) == 3
    for batch, keys in zip(batches, sampler, strict=True):
        assert batch["dataset"].tolist() == [k.dataset for k in keys]
        assert batch["rgb"].shape[0] == 4 and batch["pairs_valid"].shape[0] == 4
        has_pairs = batch["pairs_valid"].any(dim=1)
        assert has_pairs.tolist() == [k.dataset == 1 for k in keys]
