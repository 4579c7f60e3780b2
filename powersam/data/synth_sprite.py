"""Drawing primitives for the synthetic substation sprites: a part-id canvas, its shading, palettes, shared parts.

A drawer lays out primitives in pixels around the object's ground contact point (0, 0), y pointing down.
Each primitive paints a *part*: a colour, a shading mode and an *owner* (which labelled instance of the sprite
the pixels belong to, or ``CLUTTER`` for unlabelled steel supports that still hide what is behind them).
Rasterising gives a uint8 part-id image; later parts overwrite earlier ones, so owners never overlap.
The drawers themselves live in :mod:`powersam.data.synth_insulators` and :mod:`powersam.data.synth_shapes`.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

EMPTY = -2  # owner of pixels the sprite does not cover
CLUTTER = -1  # owner of unlabelled structure (steel supports, plinths)
FLAT, VCYL, HCYL = 0, 1, 2  # shading: fixed normal; cylinder with vertical axis; cylinder with horizontal axis

Color = Sequence[float]


class Sprite:
    """Primitives collected in pixel units around an anchor at (0, 0), rasterised to a part-id image."""

    def __init__(self) -> None:
        self._prims: list[tuple[str, int, np.ndarray, float]] = []
        self._colors: list[Color] = [(0.0, 0.0, 0.0)]
        self._modes: list[int] = [FLAT]
        self._normals: list[tuple[float, float, float]] = [(0.0, 0.0, 1.0)]
        self._gloss: list[float] = [0.0]
        self._owners: list[int] = [EMPTY]
        self._matrix = np.eye(3)
        self.owner_classes: list[str] = []
        self.elevation = 0.0  # pixels between the ground and the anchor (suspended conductors, strings)
        self.max_extent = 1e6  # pixels; drawers keep long things (conductors, gantries) below this

    def owner(self, class_name: str) -> int:
        self.owner_classes.append(class_name)
        return len(self.owner_classes) - 1

    def part(self, rgb: Color, owner: int, mode: int = FLAT, normal: tuple[float, float, float] = (0.0, 0.0, 1.0),
             gloss: float = 0.0) -> int:
        if len(self._colors) >= 255:
            raise RuntimeError("a sprite holds at most 254 parts")
        self._colors.append(tuple(float(c) for c in rgb))
        self._modes.append(mode)
        norm = math.sqrt(sum(v * v for v in normal))
        self._normals.append(tuple(v / norm for v in normal))
        self._gloss.append(gloss)
        self._owners.append(owner)
        return len(self._colors) - 1

    @contextmanager
    def rotated(self, degrees: float, pivot: tuple[float, float]) -> Iterator[None]:
        """Primitives drawn inside are rotated clockwise on screen by ``degrees`` around ``pivot``."""
        a = math.radians(degrees)
        px, py = pivot
        rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        shift = np.array([[1.0, 0.0, px], [0.0, 1.0, py], [0.0, 0.0, 1.0]])
        unshift = np.array([[1.0, 0.0, -px], [0.0, 1.0, -py], [0.0, 0.0, 1.0]])
        saved = self._matrix
        self._matrix = saved @ shift @ rot @ unshift
        try:
            yield
        finally:
            self._matrix = saved

    @contextmanager
    def translated(self, dx: float, dy: float) -> Iterator[None]:
        """Primitives drawn inside are shifted by (dx, dy)."""
        saved = self._matrix
        self._matrix = saved @ np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])
        try:
            yield
        finally:
            self._matrix = saved

    def _add(self, kind: str, pid: int, pts: Sequence[Sequence[float]], width: float = 0.0) -> None:
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        p = p @ self._matrix[:2, :2].T + self._matrix[:2, 2]
        self._prims.append((kind, pid, p, width))

    def _axis_aligned(self) -> bool:
        return abs(self._matrix[0, 1]) < 1e-9 and abs(self._matrix[1, 0]) < 1e-9

    def rect(self, pid: int, x0: float, y0: float, x1: float, y1: float) -> None:
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        if self._axis_aligned():
            self._add("rect", pid, [(x0, y0), (x1, y1)])
        else:
            self._add("poly", pid, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    def ellipse(self, pid: int, cx: float, cy: float, rx: float, ry: float) -> None:
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        if self._axis_aligned():
            self._add("ellipse", pid, [(cx - rx, cy - ry), (cx + rx, cy + ry)])
        else:
            n = int(min(48, max(8, 2.0 * (rx + ry))))
            t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
            self._add("poly", pid, np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1))

    def poly(self, pid: int, pts: Sequence[Sequence[float]]) -> None:
        self._add("poly", pid, pts)

    def line(self, pid: int, pts: Sequence[Sequence[float]], width: float) -> None:
        self._add("line", pid, pts, max(1.0, width))

    def ring(self, pid: int, cx: float, cy: float, rx: float, ry: float, width: float) -> None:
        t = np.linspace(0.0, 2.0 * math.pi, 33)
        self.line(pid, np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1), width)

    def rasterize(self) -> tuple[np.ndarray, tuple[float, float]]:
        """Returns (part ids (h, w) uint8, anchor (x, y) in raster pixels)."""
        if not self._prims:
            raise RuntimeError("empty sprite")
        lo = np.min([p.min(0) - w for _, _, p, w in self._prims], axis=0)
        hi = np.max([p.max(0) + w for _, _, p, w in self._prims], axis=0)
        origin = np.floor(lo) - 1.0
        size = np.ceil(hi - origin).astype(int) + 2
        canvas = Image.new("L", (int(size[0]), int(size[1])), 0)
        draw = ImageDraw.Draw(canvas)
        for kind, pid, p, width in self._prims:
            q = p - origin
            if kind == "rect":
                draw.rectangle([q[0, 0], q[0, 1], q[1, 0], q[1, 1]], fill=pid)
            elif kind == "ellipse":
                draw.ellipse([q[0, 0], q[0, 1], max(q[1, 0], q[0, 0]), max(q[1, 1], q[0, 1])], fill=pid)
            elif kind == "poly":
                draw.polygon([tuple(v) for v in q], fill=pid)
            else:
                draw.line([tuple(v) for v in q], fill=pid, width=int(round(width)), joint="curve")
        return np.asarray(canvas), (float(-origin[0]), float(-origin[1]))

    def tables(self) -> dict[str, np.ndarray]:
        return {
            "color": np.asarray(self._colors, dtype=np.float32),
            "mode": np.asarray(self._modes, dtype=np.int8),
            "normal": np.asarray(self._normals, dtype=np.float32),
            "gloss": np.asarray(self._gloss, dtype=np.float32),
            "owner": np.asarray(self._owners, dtype=np.int8),
        }


def _run_coordinate(mask: np.ndarray) -> np.ndarray:
    """For each True pixel, its position in its horizontal run of True pixels, mapped to (-1, 1)."""
    h, w = mask.shape
    col = np.broadcast_to(np.arange(w), (h, w))
    before = np.zeros_like(mask)
    before[:, 1:] = mask[:, :-1]
    after = np.zeros_like(mask)
    after[:, :-1] = mask[:, 1:]
    left = np.maximum.accumulate(np.where(mask & ~before, col, 0), axis=1)
    right = np.minimum.accumulate(np.where(mask & ~after, col, w)[:, ::-1], axis=1)[:, ::-1]
    return ((col - left + 0.5) / (right - left + 1.0) * 2.0 - 1.0).astype(np.float32)


def shade(ids: np.ndarray, tables: dict[str, np.ndarray], light: np.ndarray, ambient: float,
          diffuse: float) -> tuple[np.ndarray, np.ndarray]:
    """Lambert + Blinn-Phong shading of a part-id image.

    ids: (h, w) uint8 part ids. light: (3,) unit vector (x right, y down, z towards the camera).
    Returns (rgb (3, h, w) float32 channel-first, zero where empty; owner (h, w) int8).
    """
    fg = ids > 0
    pid = ids[fg]
    normal = tables["normal"].T[:, pid]  # (3, N): channel-first keeps numpy's inner loops long
    mode = tables["mode"][ids]
    for axis_mode, transpose in ((VCYL, False), (HCYL, True)):
        sel = mode == axis_mode
        if not sel.any():
            continue
        rows, cols = np.flatnonzero(sel.any(1)), np.flatnonzero(sel.any(0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # big sprites are mostly empty
        u = np.zeros(sel.shape, np.float32)
        u[box] = _run_coordinate(sel[box].T).T if transpose else _run_coordinate(sel[box])
        pick = sel[fg]
        u = np.clip(u[fg][pick], -0.97, 0.97)
        normal[:, pick] = 0.0
        normal[1 if transpose else 0, pick] = u
        normal[2, pick] = np.sqrt(1.0 - u * u)
    lambert = np.maximum(light @ normal, 0.0)
    half = light + np.array([0.0, 0.0, 1.0], np.float32)
    half = (half / np.linalg.norm(half)).astype(np.float32)
    spec = np.clip(half @ normal, 0.0, 1.0)
    spec *= spec
    spec *= spec
    spec *= spec
    spec *= spec  # ~ cos^16 highlight, without a costly pow
    spec *= tables["gloss"][pid]
    rgb = np.zeros((3,) + ids.shape, np.float32)
    rgb[:, fg] = tables["color"].T[:, pid] * (ambient + diffuse * lambert) + 200.0 * spec
    return rgb, tables["owner"][ids]


# ----------------------------------------------------------------------------------------------- palettes
def _jitter(rng: np.random.Generator, rgb: Color, amount: float = 0.1) -> tuple[float, float, float]:
    c = np.asarray(rgb, np.float64) * rng.uniform(1 - amount, 1 + amount) * rng.uniform(0.96, 1.04, 3)
    return tuple(np.clip(c, 0, 255))


def _pick(rng: np.random.Generator, options: Sequence[Color]) -> tuple[float, float, float]:
    return _jitter(rng, options[int(rng.integers(len(options)))])


PORCELAIN = [(112, 56, 36), (92, 48, 34), (200, 198, 190), (146, 148, 152), (150, 74, 54)]
GLASS = [(66, 132, 118), (84, 150, 140)]
METAL = [(168, 170, 172), (198, 200, 204), (150, 152, 150)]
PAINT = [(104, 118, 104), (140, 146, 152), (88, 98, 112), (176, 176, 166)]
CABINET = [(206, 206, 196), (176, 180, 186), (98, 128, 102), (188, 178, 150)]
STEEL = [(120, 124, 126), (150, 152, 154), (95, 98, 100)]
CONCRETE = [(170, 168, 160), (150, 150, 146)]


def _len(meters: float, m: float, lo: float = 1.0) -> float:
    return max(lo, meters * m)


def _shed_column(sp: Sprite, core: int, shed: int, x: float, y_bottom: float, height: float, core_r: float,
                 shed_r: float, pitch: float, taper: float = 1.0, alternate: bool = False) -> None:
    """Porcelain/polymer column: a core with ellipse sheds; ``taper`` < 1 narrows the sheds towards the top."""
    sp.rect(core, x - core_r, y_bottom - height, x + core_r, y_bottom)
    n = max(1, int(height / max(pitch, 2.5)))
    step = height / n
    for i in range(n):
        r = shed_r * (1.0 - (1.0 - taper) * (i + 0.5) / n)
        if alternate and i % 2:
            r = core_r + (r - core_r) * 0.65
        sp.ellipse(shed, x, y_bottom - (i + 0.5) * step, max(r, core_r + 0.5), max(0.6, step * 0.24))


def _insulator_parts(sp: Sprite, rng: np.random.Generator, owner: int, palette: Sequence[Color] = PORCELAIN
                     ) -> tuple[int, int]:
    color = _pick(rng, palette)
    core = sp.part(np.asarray(color) * 0.72, owner, VCYL, gloss=0.15)
    shed = sp.part(color, owner, VCYL, gloss=0.35)
    return core, shed


def _pedestal(sp: Sprite, rng: np.random.Generator, m: float, x: float, height: float) -> None:
    """Unlabelled support from the ground (y = 0) up to y = -height: steel tube, lattice or concrete post."""
    kind = int(rng.integers(3))
    steel = _pick(rng, STEEL)
    if kind == 0:
        r = _len(0.11, m)
        sp.rect(sp.part(steel, CLUTTER, VCYL, gloss=0.2), x - r, -height, x + r, 0)
    elif kind == 1:
        pid = sp.part(steel, CLUTTER)
        half, w = _len(0.28, m, 2.0), _len(0.04, m)
        sp.line(pid, [(x - half, 0), (x - half * 0.6, -height)], w)
        sp.line(pid, [(x + half, 0), (x + half * 0.6, -height)], w)
        n = max(2, int(height / max(2.0 * half, 4.0)))
        zig = [(x + (half if i % 2 else -half) * (1 - 0.4 * i / n), -height * i / n) for i in range(n + 1)]
        sp.line(pid, zig, max(1.0, w * 0.6))
    else:
        r = _len(0.2, m, 1.5)
        sp.rect(sp.part(_pick(rng, CONCRETE), CLUTTER, VCYL), x - r, -height, x + r, 0)
    plate = _len(0.3, m, 2.0)
    sp.rect(sp.part(steel, CLUTTER), x - plate, -height - _len(0.05, m), x + plate, -height)
