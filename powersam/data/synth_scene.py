"""The renderer of the synthetic substation scenes (see :mod:`powersam.data.synth`, which writes them as a dataset).

A scene is a sky / horizon / ground background with perspective: an object standing on the ground at image row
``y`` is drawn at ``(y - horizon) / camera_height`` pixels per metre, and objects are painted far to near, so
nearer equipment hides farther equipment. Every painted pixel keeps the index of the instance that painted it
last, so each instance mask is exactly its visible pixels and masks never overlap. Instances hidden below a
visibility threshold are removed and the scene is repainted without them (no unlabelled equipment remains).
Unlabelled clutter (steel gantries, supports, plinths) also hides what lies behind it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .synth_shapes import CLUTTER, DRAWERS, Sprite, draw_gantry, shade

__all__ = ["MIN_SIDE", "SYNTH_CLASSES", "check_object_counts", "render_scene"]

SYNTH_CLASSES: list[str] = list(DRAWERS)
# Bushings also come on top of transformers and busbars come in phase groups, so both are drawn less often alone.
_RELATIVE_WEIGHT = {"bushing": 0.45, "busbar": 0.7, "post_insulator": 1.15, "surge_arrester": 1.2}
_CLASS_WEIGHTS = np.array([_RELATIVE_WEIGHT.get(c, 1.0) for c in SYNTH_CLASSES])
_CLASS_WEIGHTS /= _CLASS_WEIGHTS.sum()
MIN_SIDE = 32


@dataclass
class _Layer:
    depth: float  # 0 = horizon, 1 = image bottom
    rgb: np.ndarray  # (3, h, w) float32, shaded
    owner: np.ndarray  # (h, w) int8: EMPTY, CLUTTER or owner index
    classes: list[str]
    alive: list[bool]
    full_area: list[int]  # per owner, before clipping and occlusion
    anchor_dx: int  # top-left corner minus the ground contact point, in pixels
    anchor_dy: int
    x0: int = 0  # top-left corner in the image, set by _place
    y0: int = 0


@dataclass
class _Scene:
    height: int
    width: int
    horizon: float
    ground_span: float  # pixels between horizon and the nearest ground row we place objects on
    camera_height: float  # metres; pixels per metre at depth d = (ground row - horizon) / camera_height
    light: np.ndarray
    ambient: float
    diffuse: float
    haze_color: np.ndarray
    haze: float

    def ground_row(self, depth: float) -> float:
        return self.horizon + (0.05 + depth) * self.ground_span

    def pixels_per_metre(self, depth: float) -> float:
        return (self.ground_row(depth) - self.horizon) / self.camera_height


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bicubically to ``shape`` (h, w)."""
    coarse = rng.random((max(2, cells[0]), max(2, cells[1]))).astype(np.float32)
    img = Image.fromarray(coarse).resize((shape[1], shape[0]), Image.BICUBIC)
    return np.clip(np.asarray(img), 0.0, 1.0)


def _color(rgb: np.ndarray | list[float]) -> np.ndarray:
    """(3,) colour shaped (3, 1, 1) to scale channel-first planes."""
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)


def _background(rng: np.random.Generator, scene: _Scene, overcast: bool) -> np.ndarray:
    """Sky with clouds, distant tree line, gravel / grass / concrete ground. Returns (3, H, W) float32."""
    h, w, hz = scene.height, scene.width, int(round(scene.horizon))
    img = np.empty((3, h, w), np.float32)
    if overcast:
        zenith = np.full(3, rng.uniform(140, 180)) * rng.uniform(0.98, 1.02, 3)
    else:
        zenith = np.array([70, 120, 195]) * rng.uniform(0.8, 1.15) * rng.uniform(0.93, 1.07, 3)
    zenith, horizon_col = _color(zenith), _color(scene.haze_color)
    if hz > 0:
        t = (np.arange(hz, dtype=np.float32) / hz)[None, :, None] ** 0.7
        img[:, :hz] = zenith * (1 - t) + horizon_col * t
        cover = rng.uniform(0.0, 1.0) if not overcast else rng.uniform(0.3, 0.8)
        n = 0.65 * _smooth_noise(rng, (hz, w), (3, 5)) + 0.35 * _smooth_noise(rng, (hz, w), (9, 14))
        alpha = np.clip((n - (1.0 - cover * 0.6)) * 4.0, 0.0, 1.0) * np.float32(cover)
        cloud = (200.0 + 50.0 * n) * _color(rng.uniform(0.98, 1.02, 3))
        img[:, :hz] += (cloud - img[:, :hz]) * alpha
    rows = h - hz
    if rows > 0:
        kind = rng.choice(["gravel", "grass", "concrete", "mixed"])
        gravel = _color(np.array([128, 124, 116]) * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3))
        grass = _color(np.array([78, 104, 52]) * rng.uniform(0.8, 1.2) * rng.uniform(0.92, 1.08, 3))
        concrete = _color(np.array([168, 166, 160]) * rng.uniform(0.85, 1.1) * rng.uniform(0.97, 1.03, 3))
        blotch = _smooth_noise(rng, (rows, w), (4, 8))
        fine = rng.standard_normal((rows, w), dtype=np.float32)
        if kind == "gravel":
            ground = gravel * (0.85 + 0.3 * blotch) + 12.0 * fine
        elif kind == "grass":
            streak = _smooth_noise(rng, (rows, w), (max(2, rows // 6), max(2, w // 2)))
            ground = grass * (0.75 + 0.35 * blotch + 0.2 * streak) + 8.0 * fine
        elif kind == "concrete":
            ground = concrete * (0.92 + 0.12 * blotch) + 5.0 * fine
            joints = (scene.horizon + rows * np.linspace(0.05, 1.0, 8) ** 1.8 - hz).astype(int)
            ground[:, np.clip(joints, 0, rows - 1)] *= 0.8  # expansion joints, denser towards the horizon
        else:
            patch = _smooth_noise(rng, (rows, w), (3, 7)) > 0.5
            ground = np.where(patch, gravel * (0.85 + 0.3 * blotch) + 12.0 * fine,
                              grass * (0.75 + 0.4 * blotch) + 8.0 * fine)
        fade = (1.0 - np.arange(rows, dtype=np.float32) / rows)[None, :, None] ** 6 * 0.6
        img[:, hz:] = ground + (horizon_col - ground) * fade
        if hz > 2:  # distant tree line / hills along the horizon
            ridge = hz - (_smooth_noise(rng, (1, w), (1, 12))[0] * rng.uniform(0.01, 0.07) * h).astype(int)
            trees = np.arange(hz)[:, None] >= ridge[None, :]
            tree_col = np.array([60, 80, 60]) * rng.uniform(0.8, 1.2) * 0.55 + scene.haze_color * 0.45
            for c in range(3):
                img[c, :hz][trees] = tree_col[c]
    return img


def _make_layer(rng: np.random.Generator, scene: _Scene, cls: str | None, depth: float, budget: int) -> _Layer:
    sprite = Sprite()
    sprite.max_extent = 1.5 * max(scene.height, scene.width)
    m = scene.pixels_per_metre(depth) * rng.uniform(0.85, 1.15)
    (draw_gantry if cls is None else DRAWERS[cls])(sprite, rng, m, budget)
    ids, anchor = sprite.rasterize()
    rgb, owner = shade(ids, sprite.tables(), scene.light, scene.ambient, scene.diffuse)
    haze = np.float32(scene.haze * (1.0 - depth) ** 2)
    rgb += (_color(scene.haze_color) - rgb) * haze
    counts = np.bincount(owner.ravel().astype(np.int64) + 2, minlength=len(sprite.owner_classes) + 2)[2:]
    return _Layer(depth, rgb, owner, list(sprite.owner_classes), [True] * len(sprite.owner_classes),
                  [int(c) for c in counts], -int(round(anchor[0])), -int(round(anchor[1] + sprite.elevation)))


def _clip(layer: _Layer, x: int, y: int, scene: _Scene) -> tuple[slice, slice, slice, slice] | None:
    """Image and layer slices where the layer placed at (x, y) overlaps the image."""
    h, w = layer.owner.shape
    ix0, iy0, ix1, iy1 = max(x, 0), max(y, 0), min(x + w, scene.width), min(y + h, scene.height)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    return slice(iy0, iy1), slice(ix0, ix1), slice(iy0 - y, iy1 - y), slice(ix0 - x, ix1 - x)


def _place(rng: np.random.Generator, layer: _Layer, scene: _Scene, occupied: np.ndarray, tries: int) -> None:
    """Pick the anchor column among a few candidates that hides the fewest already painted instance pixels."""
    y = int(round(scene.ground_row(layer.depth))) + layer.anchor_dy
    if y + layer.owner.shape[0] < 0.15 * scene.height:  # suspended objects above the frame: lower them into view
        y = int(rng.uniform(0.0, 0.3) * scene.height) - int(0.3 * layer.owner.shape[0])
    best = None
    total = max(1, int((layer.owner >= 0).sum()))
    for _ in range(tries):
        x = int(rng.uniform(-0.1, 1.1) * scene.width) + layer.anchor_dx
        sl = _clip(layer, x, y, scene)
        if sl is None:
            continue
        mask = layer.owner[sl[2], sl[3]] >= 0
        in_frame = int(mask.sum())
        cost = float((mask & occupied[sl[0], sl[1]]).sum()) / max(1, in_frame) - 0.5 * in_frame / total
        if best is None or cost < best[0]:
            best = (cost, x)
    layer.x0, layer.y0 = (best[1] if best else scene.width // 2 + layer.anchor_dx), y
    sl = _clip(layer, layer.x0, layer.y0, scene)
    if sl is not None:
        occupied[sl[0], sl[1]] |= layer.owner[sl[2], sl[3]] >= 0


def _composite(background: np.ndarray, layers: list[_Layer], scene: _Scene
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Paint alive layers far to near. Returns (image, instance index map (0 = none), [(layer, owner)] per index)."""
    image = background.copy()
    label = np.zeros((scene.height, scene.width), np.int32)
    instances: list[tuple[int, int]] = []
    for li, layer in enumerate(layers):
        lut = np.zeros(len(layer.classes) + 2, np.int32)  # indexed by owner + 2
        keep = np.zeros(len(layer.classes) + 2, bool)
        keep[CLUTTER + 2] = True
        for k, alive in enumerate(layer.alive):
            if alive:
                instances.append((li, k))
                lut[k + 2], keep[k + 2] = len(instances), True
        sl = _clip(layer, layer.x0, layer.y0, scene)
        if sl is None:
            continue
        owner = layer.owner[sl[2], sl[3]].astype(np.int64) + 2
        paint = keep[owner]
        image[:, sl[0], sl[1]][:, paint] = layer.rgb[:, sl[2], sl[3]][:, paint]
        label[sl[0], sl[1]][paint] = lut[owner[paint]]
    return image, label, instances


def _postprocess(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Camera effects that leave the geometry alone: white balance, exposure, contrast, vignette, blur, noise.

    image: (3, H, W) float32. Returns (H, W, 3) uint8.
    """
    _, h, w = image.shape
    contrast = rng.uniform(0.85, 1.2)
    gain = _color(rng.uniform(0.96, 1.04, 3) * rng.uniform(0.8, 1.15) * contrast)
    image = image * gain + np.float32(float(image.mean()) * (1.0 - contrast))
    if rng.random() < 0.3:
        yy = (np.arange(h, dtype=np.float32)[:, None] / h - 0.5) ** 2
        xx = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5) ** 2
        image *= 1.0 - np.float32(rng.uniform(0.2, 0.6)) * (yy + xx)
    image += rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(0.5, 3.0)) + np.float32(0.5)
    out = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0))
    if rng.random() < 0.35:  # slight defocus / motion softness
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.BoxBlur(float(rng.uniform(0.4, 1.0)))))
    return out


def check_object_counts(min_objects: int, max_objects: int) -> None:
    """TypeError / ValueError unless ``0 <= min_objects <= max_objects`` are ints."""
    if not isinstance(min_objects, (int, np.integer)) or not isinstance(max_objects, (int, np.integer)):
        raise TypeError(f"min_objects and max_objects must be ints, got {type(min_objects)} and {type(max_objects)}")
    if min_objects < 0 or max_objects < min_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got min_objects={min_objects}, "
                         f"max_objects={max_objects}")


def render_scene(rng: np.random.Generator, height: int, width: int, min_objects: int = 2, max_objects: int = 8
                 ) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Render one scene with ``min_objects..max_objects`` labelled instances.

    Returns (image (height, width, 3) uint8, [(class name, visible mask (height, width) bool)] in paint order);
    masks are pairwise disjoint and non-empty.
    """
    check_object_counts(min_objects, max_objects)
    if int(height) < MIN_SIDE or int(width) < MIN_SIDE:
        raise ValueError(f"image size must be at least {MIN_SIDE}x{MIN_SIDE}, got {height}x{width}")
    for attempt in range(5):  # crowded requests can fail to keep enough instances visible: retry, smaller
        result = _try_scene(rng, int(height), int(width), min_objects, max_objects, 0.7 ** attempt)
        if result is not None:
            return result
    raise RuntimeError(f"could not fit {min_objects} visible objects into a {height}x{width} image")


def _try_scene(rng: np.random.Generator, height: int, width: int, min_objects: int, max_objects: int,
               shrink: float) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]] | None:
    target = int(rng.integers(min_objects, max_objects + 1))
    horizon = height * rng.uniform(0.2, 0.55)
    overcast = bool(rng.random() < 0.35)
    az, elev = rng.uniform(-1.1, 1.1), rng.uniform(0.3, 1.0)
    light = np.array([math.sin(az), -elev, rng.uniform(0.5, 1.0)])
    # many objects get a wider view (smaller objects), so they do not all hide each other
    near_ppm = height * rng.uniform(0.07, 0.25) * shrink * min(1.0, math.sqrt(5.0 / max(target, 1)))
    span = height - horizon
    haze_color = np.array([200, 212, 226]) * rng.uniform(0.85, 1.05) if not overcast else \
        np.full(3, rng.uniform(170, 205))
    scene = _Scene(height, width, horizon, span, 1.05 * span / near_ppm,
                   (light / np.linalg.norm(light)).astype(np.float32),
                   float(rng.uniform(0.5, 0.7) if overcast else rng.uniform(0.3, 0.5)),
                   float(rng.uniform(0.3, 0.45) if overcast else rng.uniform(0.6, 0.8)),
                   haze_color.astype(np.float32), float(rng.uniform(0.0, 0.4)))
    background = _background(rng, scene, overcast)

    def new_layer(cls: str | None, budget: int) -> _Layer:
        return _make_layer(rng, scene, cls, float(rng.random() ** 0.8), budget)

    def pick_class() -> str:
        return SYNTH_CLASSES[int(rng.choice(len(SYNTH_CLASSES), p=_CLASS_WEIGHTS))]

    layers: list[_Layer] = []
    count = 0
    while count < target:
        layers.append(new_layer(pick_class(), target - count))
        count += len(layers[-1].classes)
    layers += [new_layer(None, 0) for _ in range(int(rng.integers(0, 3)))]
    layers.sort(key=lambda layer: layer.depth)
    occupied = np.zeros((height, width), bool)
    for layer in layers:
        _place(rng, layer, scene, occupied, 4)

    min_visible = max(12.0, 2e-4 * height * width)
    for _ in range(80):
        image, label, instances = _composite(background, layers, scene)
        visible = np.bincount(label.ravel(), minlength=len(instances) + 1)[1:]
        worst, worst_ratio = -1, 1.0
        for i, (li, k) in enumerate(instances):
            full = layers[li].full_area[k]
            ok = visible[i] >= min_visible and (visible[i] >= 0.2 * full or visible[i] >= 0.05 * height * width)
            ratio = visible[i] / max(full, 1)
            if not ok and (worst < 0 or ratio < worst_ratio):
                worst, worst_ratio = i, ratio
        if worst >= 0:  # drop the most hidden instance and repaint: others may become visible again
            li, k = instances[worst]
            layers[li].alive[k] = False
            continue
        if len(instances) >= min_objects:
            masks = [(layers[li].classes[k], label == i + 1) for i, (li, k) in enumerate(instances)]
            return _postprocess(rng, image), masks
        extra = new_layer(pick_class(), max_objects - len(instances))
        _place(rng, extra, scene, label > 0, 12)
        layers.append(extra)
        layers.sort(key=lambda layer: layer.depth)
    return None
