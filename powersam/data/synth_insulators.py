"""Drawers of the column-type equipment of the synthetic dataset: insulators, bushings, arresters and the like.

Insulator strings, post insulators, bushings, disconnectors, instrument transformers and surge arresters: mostly
porcelain or polymer shed columns, usually on an unlabelled pedestal. :func:`_bushing` is also used by the tank
equipment in :mod:`powersam.data.synth_shapes`.
"""
from __future__ import annotations

import math

import numpy as np

from .synth_sprite import (
    CLUTTER,
    FLAT,
    GLASS,
    HCYL,
    METAL,
    PAINT,
    PORCELAIN,
    STEEL,
    VCYL,
    Sprite,
    _insulator_parts,
    _len,
    _pedestal,
    _pick,
    _shed_column,
)


# ----------------------------------------------------------------------------------------------- drawers
# Each drawer: (sprite, rng, pixels per metre, instance budget >= 1) -> None. Ground contact at (0, 0).
def draw_insulator_string(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    owner = sp.owner("insulator_string")
    tension = rng.random() < 0.35
    angle = float(rng.uniform(70, 110) * rng.choice([-1, 1])) if tension else float(rng.uniform(-10, 10))
    mode = HCYL if tension else VCYL
    palette = GLASS if rng.random() < 0.4 else PORCELAIN
    disc_color = _pick(rng, palette)
    disc = sp.part(disc_color, owner, mode, gloss=0.6 if palette is GLASS else 0.35)
    underside = sp.part(np.asarray(disc_color) * 0.6, owner, mode)
    metal = sp.part(_pick(rng, METAL), owner, mode, gloss=0.5)
    n = int(rng.integers(6, 19))
    d = _len(0.27 * rng.uniform(0.9, 1.25), m, 3.0)
    pitch = max(d * 0.55, 2.5)
    n = max(3, min(n, int(sp.max_extent / pitch)))
    length = n * pitch
    strings = [0.0] if rng.random() < 0.75 else [-0.55 * d, 0.55 * d]
    sp.elevation = _len(rng.uniform(6.0, 11.0), m)
    with sp.rotated(angle, (0.0, 0.0)):
        arm = sp.part(_pick(rng, STEEL), CLUTTER)  # the gantry cross-arm the string hangs from
        if not tension:
            sp.rect(arm, -2.2 * d, -_len(0.25, m, 2.0), 2.2 * d, 0)
        top, bottom = pitch * 0.8, pitch * 0.8 + length
        for sx in strings:
            sp.rect(metal, sx - d * 0.09, top * 0.5, sx + d * 0.09, bottom + pitch)
            for i in range(n):
                yc = top + (i + 0.5) * pitch
                sp.ellipse(underside, sx, yc + d * 0.06, d / 2, d * 0.16)
                sp.ellipse(disc, sx, yc, d / 2, d * 0.15)
        sp.rect(metal, strings[0] - d * 0.25, 0.0, strings[-1] + d * 0.25, top * 0.5)
        sp.rect(metal, strings[0] - d * 0.25, bottom + pitch * 0.8, strings[-1] + d * 0.25, bottom + pitch * 1.2)


def draw_post_insulator(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    owner = sp.owner("post_insulator")
    ped = _len(rng.uniform(1.2, 2.8), m)
    _pedestal(sp, rng, m, 0.0, ped)
    core, shed = _insulator_parts(sp, rng, owner)
    metal = sp.part(_pick(rng, METAL), owner, VCYL, gloss=0.5)
    units, unit_h = int(rng.integers(1, 4)), _len(rng.uniform(0.8, 1.3), m, 4.0)
    core_r, shed_r = _len(0.07, m), _len(rng.uniform(0.15, 0.22), m, 1.5)
    flange_h = _len(0.08, m)
    y = -ped
    for _ in range(units):
        sp.rect(metal, -core_r * 1.7, y - flange_h, core_r * 1.7, y)
        _shed_column(sp, core, shed, 0.0, y - flange_h, unit_h, core_r, shed_r, _len(0.09, m), 1.0, rng.random() < 0.5)
        y -= unit_h + flange_h
    sp.rect(metal, -core_r * 1.7, y - flange_h, core_r * 1.7, y)


def _bushing(sp: Sprite, rng: np.random.Generator, m: float, owner: int, height: float) -> None:
    """Bushing standing on y = 0: metal CT pocket, flange, tapered sheds, top dome and terminal stud."""
    core, shed = _insulator_parts(sp, rng, owner)
    metal = sp.part(_pick(rng, METAL), owner, VCYL, gloss=0.6)
    pocket_r = max(height * 0.07, 1.5)
    pocket_h = height * 0.12
    sp.rect(metal, -pocket_r, -pocket_h, pocket_r, 0)
    sp.rect(metal, -pocket_r * 1.9, -pocket_h - max(1.0, height * 0.03), pocket_r * 1.9, -pocket_h)
    body_h = height * 0.7
    base = -pocket_h - max(1.0, height * 0.03)
    _shed_column(sp, core, shed, 0.0, base, body_h, pocket_r * 0.65, pocket_r * 1.55, max(2.5, height * 0.04), 0.6)
    dome_r = pocket_r * 0.9
    sp.rect(metal, -dome_r, base - body_h - height * 0.08, dome_r, base - body_h)
    sp.ellipse(metal, 0.0, base - body_h - height * 0.08, dome_r, dome_r * 0.6)
    stud = max(1.0, pocket_r * 0.3)
    sp.rect(metal, -stud, base - body_h - height * 0.16, stud, base - body_h - height * 0.08)


def draw_bushing(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    owner = sp.owner("bushing")
    ped = _len(rng.uniform(1.0, 2.5), m)
    frame = sp.part(_pick(rng, PAINT), CLUTTER)  # the wall / tank lid plate the bushing passes through
    half = _len(rng.uniform(0.5, 0.9), m, 3.0)
    sp.rect(frame, -half, -ped, half, -ped + _len(0.3, m, 2.0))
    _pedestal(sp, rng, m, 0.0, ped - _len(0.3, m, 2.0))
    with sp.rotated(float(rng.uniform(-30, 30)), (0.0, -ped)):
        with sp.translated(0.0, -ped):
            _bushing(sp, rng, m, owner, _len(rng.uniform(1.5, 3.5), m, 10.0))


def draw_disconnector(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    owner = sp.owner("disconnector")
    ped = _len(rng.uniform(1.5, 2.5), m, 3.0)
    posts = 3 if rng.random() < 0.35 else 2
    spacing = _len(rng.uniform(1.0, 1.6), m, 5.0)
    span = (posts - 1) * spacing
    for px in (-span / 2, span / 2):
        _pedestal(sp, rng, m, px, ped)
    base = sp.part(_pick(rng, STEEL), owner, FLAT, (0.0, -0.3, 0.95), 0.2)
    beam_h = _len(0.2, m, 1.5)
    sp.rect(base, -span / 2 - _len(0.25, m), -ped - beam_h, span / 2 + _len(0.25, m), -ped)
    core, shed = _insulator_parts(sp, rng, owner)
    metal = sp.part(_pick(rng, METAL), owner, VCYL, gloss=0.6)
    blade = sp.part(_pick(rng, METAL), owner, FLAT, (0.0, -0.4, 0.9), 0.5)
    post_h = _len(rng.uniform(1.3, 2.0), m, 6.0)
    core_r, shed_r = _len(0.07, m), _len(0.17, m, 1.5)
    top = -ped - beam_h - post_h
    for i in range(posts):
        x = -span / 2 + i * spacing
        sp.rect(metal, x - core_r * 2.2, -ped - beam_h - _len(0.12, m), x + core_r * 2.2, -ped - beam_h)
        _shed_column(sp, core, shed, x, -ped - beam_h - _len(0.12, m), post_h - _len(0.12, m), core_r, shed_r,
                     _len(0.09, m))
        sp.rect(metal, x - core_r * 2.5, top - _len(0.18, m, 1.5), x + core_r * 2.5, top)
    tube = _len(0.07, m, 1.5)
    opening = float(rng.uniform(0, 80)) if rng.random() < 0.5 else 0.0
    length = spacing if posts == 2 else spacing * 0.9
    blade_y = top - _len(0.12, m, 1.0)
    ends = [(-span / 2, 1)] + ([(span / 2, -1)] if posts == 2 else [])
    if posts == 3:  # centre-rotating: one blade pivoting on the middle post, reaching both outer posts
        a = math.radians(opening * 0.5)
        dx, dy = math.cos(a) * length, math.sin(a) * length * 0.4
        sp.line(blade, [(-dx, blade_y + dy), (dx, blade_y - dy)], tube)
    else:
        for x, sgn in ends:
            a = math.radians(opening)
            reach = length / 2 + _len(0.05, m)
            sp.line(blade, [(x, blade_y), (x + sgn * math.cos(a) * reach, blade_y - math.sin(a) * reach)], tube)
    for x in (-span / 2, span / 2):
        sp.rect(metal, x - core_r * 1.5, blade_y - _len(0.15, m, 1.5), x + core_r * 1.5, blade_y)


def draw_instrument_transformer(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    owner = sp.owner("instrument_transformer")
    ped = _len(rng.uniform(1.2, 2.4), m, 2.0)
    _pedestal(sp, rng, m, 0.0, ped)
    metal_color = _pick(rng, METAL + PAINT)
    metal = sp.part(metal_color, owner, VCYL, gloss=0.4)
    core, shed = _insulator_parts(sp, rng, owner)
    core_r, shed_r = _len(0.1, m), _len(rng.uniform(0.2, 0.28), m, 1.5)
    base_w, base_h = _len(rng.uniform(0.35, 0.5), m, 2.0), _len(rng.uniform(0.4, 0.8), m, 2.0)
    sp.rect(sp.part(metal_color, owner, FLAT, gloss=0.2), -base_w, -ped - base_h, base_w, -ped)
    col_h = _len(rng.uniform(1.4, 2.4), m, 6.0)
    y = -ped - base_h
    if rng.random() < 0.55:  # current transformer: column under a rounded head tank
        _shed_column(sp, core, shed, 0.0, y, col_h, core_r, shed_r, _len(0.1, m), 1.0, rng.random() < 0.5)
        head_w, head_h = _len(rng.uniform(0.35, 0.5), m, 2.0), _len(rng.uniform(0.45, 0.8), m, 2.0)
        y_head = y - col_h
        sp.rect(metal, -head_w * 0.6, y_head - _len(0.1, m), head_w * 0.6, y_head)
        sp.rect(metal, -head_w, y_head - head_h, head_w, y_head - _len(0.1, m))
        sp.ellipse(metal, 0.0, y_head - head_h, head_w, head_h * 0.45)
        pad = _len(0.25, m, 1.5)
        sp.rect(metal, -head_w - pad, y_head - head_h * 0.7, head_w + pad, y_head - head_h * 0.55)
    else:  # capacitor voltage transformer: two stacked units and a small top cap
        for _ in range(2):
            sp.rect(metal, -core_r * 2, y - _len(0.1, m), core_r * 2, y)
            y -= _len(0.1, m)
            _shed_column(sp, core, shed, 0.0, y, col_h / 2, core_r * 1.2, shed_r, _len(0.1, m))
            y -= col_h / 2
        sp.rect(metal, -core_r * 2.2, y - _len(0.15, m), core_r * 2.2, y)
        sp.ellipse(metal, 0.0, y - _len(0.15, m), core_r * 2.2, _len(0.1, m))
        sp.rect(metal, -_len(0.03, m), y - _len(0.45, m), _len(0.03, m), y - _len(0.15, m))


def draw_surge_arrester(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    owner = sp.owner("surge_arrester")
    ped = _len(rng.uniform(1.3, 2.6), m, 2.0)
    _pedestal(sp, rng, m, 0.0, ped)
    core, shed = _insulator_parts(sp, rng, owner, [(140, 144, 148), (120, 120, 124), (112, 56, 36)])
    metal = sp.part(_pick(rng, METAL), owner, VCYL, gloss=0.6)
    counter = _len(0.18, m, 1.5)  # leakage-current counter on the base
    sp.rect(sp.part(_pick(rng, METAL), owner, FLAT, gloss=0.3), counter * 0.6, -ped - counter * 2.5,
            counter * 2.8, -ped - counter * 0.8)
    core_r, shed_r = _len(0.06, m), _len(rng.uniform(0.11, 0.15), m, 1.2)
    units, unit_h = int(rng.integers(1, 4)), _len(rng.uniform(0.7, 1.1), m, 4.0)
    y = -ped
    for _ in range(units):
        sp.rect(metal, -core_r * 2, y - _len(0.08, m), core_r * 2, y)
        y -= _len(0.08, m)
        _shed_column(sp, core, shed, 0.0, y, unit_h, core_r, shed_r, _len(0.05, m), 1.0, rng.random() < 0.5)
        y -= unit_h
    sp.rect(metal, -core_r * 2, y - _len(0.1, m), core_r * 2, y)
    if units >= 2:  # grading ring hanging from the top flange on three struts
        ring_r, ring_y = _len(rng.uniform(0.35, 0.6), m, 2.0), y + _len(0.35, m)
        for sx in (-ring_r * 0.8, 0.0, ring_r * 0.8):
            sp.line(metal, [(0.0, y), (sx, ring_y)], _len(0.03, m))
        sp.ring(metal, 0.0, ring_y, ring_r, ring_r * 0.25, _len(0.06, m, 1.5))
        sp.rect(metal, -core_r, y, core_r, y + _len(0.35, m))  # the column in front of the ring's back half
    sp.rect(metal, -_len(0.03, m), y - _len(0.3, m), _len(0.03, m), y - _len(0.1, m))
