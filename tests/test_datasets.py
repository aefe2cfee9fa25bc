"""Image depth datasets: each format read from a tiny fixture written in its real layout, each bad input's
error, the prepare geometry (K exact after resize/pad and flip), the mixture sampler and collation."""

from __future__ import annotations

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
from videomamba_depth.errors import InputError
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
    with pytest.raises(DatasetError, match=r"train\.txt: file list not found"):
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
