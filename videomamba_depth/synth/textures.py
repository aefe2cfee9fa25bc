"""Procedural, tileable textures with a fixed metric scale, and their mip-mapped lookup.

Every texture is a 1 m x 1 m tile of ``TEXELS`` x ``TEXELS`` texels that repeats seamlessly, and every
pattern has a fixed physical size (planks 20 cm wide, tiles 25 cm, bricks 25 x 8.3 cm, ...): how large the
texture looks in an image is a depth cue, which is what makes metric depth learnable from appearance.
Textures carry fine detail everywhere (no flat regions) so optical flow has something to track. Lookup
selects a mip level from the ray footprint, so distant walls are filtered instead of aliasing into flicker.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np

TEXELS = 128  # texels per tile side
TILE_M = 1.0  # every texture repeats every metre along both texture axes
TEXEL_M = TILE_M / TEXELS  # 7.8 mm
MIP_LEVELS = 6  # 128, 64, ..., 4 texels per tile


def _texel_centres() -> tuple[np.ndarray, np.ndarray]:
    """``(TEXELS, TEXELS)`` u (along axis 1) and v (along axis 0) of texel centres, metres."""
    c = (np.arange(TEXELS) + 0.5) * TEXEL_M
    return np.meshgrid(c, c, indexing="xy")


def fractal_noise(
    rng: np.random.Generator,
    shortest_m: float,
    longest_m: float,
    beta: float = 1.0,
    stretch: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Periodic band-limited noise ``(TEXELS, TEXELS)``, zero mean, unit standard deviation.

    Amplitude spectrum ``f^-beta`` between wavelengths ``shortest_m`` and ``longest_m``; ``stretch`` (u, v)
    scales the frequency axes, e.g. (0.15, 1) makes features ~7x longer along u (wood grain).
    """
    f = np.fft.fftfreq(TEXELS, d=TEXEL_M)  # cycles per metre; integers, so the noise tiles every metre
    fu, fv = np.meshgrid(f, f, indexing="xy")
    radius = np.hypot(fu * stretch[0], fv * stretch[1])
    band = (radius >= 1.0 / longest_m) & (radius <= 1.0 / shortest_m)
    amplitude = np.where(band, np.maximum(radius, 1e-9) ** -beta, 0.0)
    noise = np.fft.ifft2(np.fft.fft2(rng.standard_normal((TEXELS, TEXELS))) * amplitude).real
    return (noise - noise.mean()) / max(noise.std(), 1e-12)


def _colour(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _paint(base: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """``(T, T, 3)``: base colour ``(3,)`` (or per texel, ``(T, T, 3)``) times a brightness ``(T, T)``."""
    return np.clip(base * shade[..., None], 0.0, 1.0)


def _grain(rng: np.random.Generator, strength: float) -> np.ndarray:
    """Fine multiplicative detail at 1.6-6 cm, present in every texture so no region is flat."""
    return 1.0 + strength * fractal_noise(rng, 2 * TEXEL_M, 0.06, beta=0.5)


def plaster(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """Painted plaster / concrete: soft blotches from 3 cm to 1 m plus fine grain."""
    return _paint(colour, (1.0 + 0.14 * fractal_noise(rng, 0.03, 1.0)) * _grain(rng, 0.07))


def fabric(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """Carpet / upholstery: a 1 cm weave under mottled colour."""
    u, v = _texel_centres()
    weave = 1.0 + 0.05 * np.sin(2 * np.pi * 50 * u) * np.sin(2 * np.pi * 50 * v)
    return _paint(colour, weave * (1.0 + 0.12 * fractal_noise(rng, 0.02, 0.5)) * _grain(rng, 0.06))


def planks(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """Wooden planks 20 cm wide running along u, 50 cm long with staggered ends, dark 6 mm seams, grain."""
    u, v = _texel_centres()
    width, count = 0.2, 5
    row = np.minimum((v / width).astype(int), count - 1)
    ends = rng.uniform(0, 1, count)[row]
    piece = row * 7 + ((u - ends) % 1.0 > 0.5)  # two half-plank pieces per row, each its own tint
    tint = rng.uniform(0.8, 1.15, count * 7 + 2)[piece]
    seam = ((v % width) < 0.006) | (((u - ends) % 0.5) < 0.006)
    grain = 1.0 + 0.12 * fractal_noise(rng, 0.02, 0.5, stretch=(0.12, 1.0))
    return _paint(colour, tint * grain * np.where(seam, 0.55, 1.0) * _grain(rng, 0.04))


def tiles(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """Square 25 cm tiles with 1 cm grout, each tile slightly different."""
    u, v = _texel_centres()
    size = 0.25
    cell = (u // size).astype(int) * 4 + (v // size).astype(int)
    tint = rng.uniform(0.88, 1.1, 16)[cell]
    grout = ((u % size) < 0.01) | ((v % size) < 0.01)
    mottle = 1.0 + 0.07 * fractal_noise(rng, 0.02, 0.25)
    return _paint(colour, tint * mottle * np.where(grout, 0.7, 1.0) * _grain(rng, 0.04))


def bricks(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """Bricks 25 x 8.3 cm (12 courses per metre, alternate courses offset half a brick), 1 cm mortar."""
    u, v = _texel_centres()
    length, height = 0.25, 1.0 / 12
    course = (v // height).astype(int)
    shifted = (u + 0.5 * length * (course % 2)) % 1.0
    brick = course * 4 + (shifted // length).astype(int)
    tint = rng.uniform(0.75, 1.15, 12 * 4)[brick]
    mortar = ((v % height) < 0.01) | ((shifted % length) < 0.01)
    shade = np.where(mortar, 1.35, tint * (1.0 + 0.1 * fractal_noise(rng, 0.015, 0.1)))
    return _paint(colour, shade * _grain(rng, 0.05))


def stripes(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """Wallpaper: stripes along v, 10 cm period, in two tints of the colour, with a faint print."""
    u, _ = _texel_centres()
    phase = (u / 0.1) % 1.0
    shade = np.where(phase < rng.uniform(0.3, 0.7), 1.0, rng.uniform(0.75, 0.88))
    return _paint(colour, shade * (1.0 + 0.06 * fractal_noise(rng, 0.015, 0.2)) * _grain(rng, 0.04))


def blotches(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """Bold multi-colour patches (4-40 cm) around the colour's hue: posters, toys, the moving objects."""
    h, s, v = colorsys.rgb_to_hsv(*colour)
    palette = np.stack([_colour(h + dh, s * rng.uniform(0.6, 1.0), v * rng.uniform(0.55, 1.1))
                        for dh in rng.uniform(-0.35, 0.35, 4)])
    field = fractal_noise(rng, 0.04, 0.4, beta=1.5)
    band = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75]))
    return _paint(palette[band], _grain(rng, 0.06))


def checker(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """12.5 cm checks in the colour and a contrasting tint."""
    u, v = _texel_centres()
    check = ((u // 0.125).astype(int) + (v // 0.125).astype(int)) % 2
    h, s, val = colorsys.rgb_to_hsv(*colour)
    other = _colour(h + rng.uniform(0.3, 0.7), s, min(1.0, val * rng.uniform(0.5, 0.9)))
    base = np.where(check[..., None] == 1, colour, other)
    return _paint(base, (1.0 + 0.05 * fractal_noise(rng, 0.02, 0.2)) * _grain(rng, 0.05))


Generator = Callable[[np.random.Generator, np.ndarray], np.ndarray]
PATTERNS: dict[str, Generator] = {
    "plaster": plaster,
    "fabric": fabric,
    "planks": planks,
    "tiles": tiles,
    "bricks": bricks,
    "stripes": stripes,
    "blotches": blotches,
    "checker": checker,
}


def make_texture(rng: np.random.Generator, pattern: str, hsv: tuple[float, float, float]) -> np.ndarray:
    """One ``(TEXELS, TEXELS, 3)`` float32 tile of ``pattern`` in the colour ``hsv`` (each in [0, 1])."""
    return PATTERNS[pattern](rng, _colour(*hsv)).astype(np.float32)


class TextureAtlas:
    """All textures of a scene with their mip pyramids, sampled bilinearly at a footprint-chosen level."""

    def __init__(self, textures: list[np.ndarray]) -> None:
        levels, offsets, start = [], np.zeros((len(textures), MIP_LEVELS), dtype=np.int64), 0
        for m, tex in enumerate(textures):
            if tex.shape != (TEXELS, TEXELS, 3):
                raise ValueError(f"texture {m}: shape {tex.shape}, expected {(TEXELS, TEXELS, 3)}")
            level = tex.astype(np.float32)
            for lvl in range(MIP_LEVELS):
                offsets[m, lvl] = start
                levels.append(level.reshape(-1, 3))
                start += len(levels[-1])
                # Box-filter 2x2 texel blocks; exact for a tile that repeats.
                n = level.shape[0] // 2
                level = level.reshape(n, 2, n, 2, 3).mean(axis=(1, 3))
        # Component-first (3, N): the renderer works on (3, M) arrays.
        self.texels = np.ascontiguousarray(np.concatenate(levels).T)
        self.offsets = offsets

    def sample(self, material: np.ndarray, u: np.ndarray, v: np.ndarray,
               footprint_m: np.ndarray) -> np.ndarray:
        """Colours ``(3, M)`` float32 of ``material`` ``(M,)`` at texture coordinates ``u, v`` (metres).

        ``footprint_m`` ``(M,)`` is the surface length one sample covers; the mip level whose texel is
        closest to it (in log scale) is used.
        """
        ratio = np.maximum(footprint_m / TEXEL_M, 1.0)
        level = np.minimum(np.rint(np.log2(ratio)).astype(np.int64), MIP_LEVELS - 1)
        size = TEXELS >> level
        # Texel centres sit at (i + 0.5) / size of the tile, hence the half-texel shift.
        x = u * (size / TILE_M) - 0.5
        y = v * (size / TILE_M) - 0.5
        x0, y0 = np.floor(x), np.floor(y)
        ax, ay = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
        x0 = x0.astype(np.int64) % size
        y0 = y0.astype(np.int64) % size
        x1, y1 = (x0 + 1) % size, (y0 + 1) % size
        base = self.offsets[material, level]
        row0, row1 = base + y0 * size, base + y1 * size
        t = self.texels
        top = t[:, row0 + x0] * (1 - ax) + t[:, row0 + x1] * ax
        bottom = t[:, row1 + x0] * (1 - ax) + t[:, row1 + x1] * ax
        return top * (1 - ay) + bottom * ay
