"""Sprites of substation equipment for the synthetic dataset: the tank, box and busbar drawers and ``DRAWERS``.

Power transformers, circuit breakers, busbars, control cabinets and the unlabelled gantry are drawn here; the
column-type equipment (insulators, bushings, disconnectors, instrument transformers, surge arresters) in
:mod:`powersam.data.synth_insulators`, and the part-id canvas, shading and shared parts in
:mod:`powersam.data.synth_sprite`. :data:`DRAWERS` maps each class name to its drawer; the canvas names are
re-exported here for the generator and the tests.
"""
from __future__ import annotations

import math

import numpy as np

from .synth_insulators import (
    _bushing,
    draw_bushing,
    draw_disconnector,
    draw_instrument_transformer,
    draw_insulator_string,
    draw_post_insulator,
    draw_surge_arrester,
)
from .synth_sprite import (
    CABINET,
    CLUTTER,
    CONCRETE,
    EMPTY,
    FLAT,
    GLASS,
    HCYL,
    METAL,
    PAINT,
    PORCELAIN,
    STEEL,
    VCYL,
    Color,
    Sprite,
    _len,
    _pick,
    _shed_column,
    shade,
)

__all__ = [
    "CABINET", "CLUTTER", "CONCRETE", "DRAWERS", "EMPTY", "FLAT", "GLASS", "HCYL", "METAL", "PAINT", "PORCELAIN",
    "STEEL", "VCYL", "Color", "Sprite", "draw_bushing", "draw_circuit_breaker", "draw_control_cabinet",
    "draw_busbar", "draw_disconnector", "draw_gantry", "draw_instrument_transformer", "draw_insulator_string",
    "draw_post_insulator", "draw_power_transformer", "draw_surge_arrester", "shade",
]


# Each drawer: (sprite, rng, pixels per metre, instance budget >= 1) -> None. Ground contact at (0, 0).
def _box(sp: Sprite, rng: np.random.Generator, owner: int, color: Color, x0: float, y0: float, x1: float,
         y1: float, depth: float, side: int, gloss: float = 0.1) -> None:
    """A box seen three-quarter: front face, side face to ``side`` (+1 right, -1 left) and top face."""
    skew = depth * 0.5
    xs = x1 if side > 0 else x0
    sp.poly(sp.part(color, owner, FLAT, (0.75 * side, 0.0, 0.66), gloss), [(xs, y0), (xs + side * depth, y0 - skew),
                                                                         (xs + side * depth, y1 - skew), (xs, y1)])
    sp.poly(sp.part(color, owner, FLAT, (0.0, -0.8, 0.6), gloss), [(x0, y0), (x1, y0), (x1 + side * depth, y0 - skew),
                                                                 (x0 + side * depth, y0 - skew)])
    sp.rect(sp.part(color, owner, FLAT, (0.0, 0.0, 1.0), gloss), x0, y0, x1, y1)


def draw_power_transformer(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    owner = sp.owner("power_transformer")
    paint = _pick(rng, PAINT)
    w, h = _len(rng.uniform(3.0, 6.0), m, 12.0), _len(rng.uniform(2.2, 3.5), m, 9.0)
    depth, side = _len(rng.uniform(1.2, 2.4), m, 3.0), int(rng.choice([-1, 1]))
    plinth = _len(0.3, m)
    sp.rect(sp.part(_pick(rng, CONCRETE), CLUTTER), -w * 0.6, -plinth, w * 0.6 + side * depth * 0.5, 0)
    skid = _len(0.2, m)
    sp.rect(sp.part(np.asarray(paint) * 0.5, owner), -w / 2, -plinth - skid, w / 2, -plinth)
    bottom, top = -plinth - skid, -plinth - skid - h
    cons_r, cons_len = _len(0.35, m, 2.0), w * rng.uniform(0.35, 0.55)
    cons_x = -side * w * 0.15
    cons_y = top - depth * 0.5 - _len(0.8, m, 3.0)
    leg = sp.part(np.asarray(paint) * 0.8, owner)
    for lx in (cons_x - cons_len * 0.3, cons_x + cons_len * 0.3):
        sp.rect(leg, lx - max(1.0, cons_r * 0.2), cons_y, lx + max(1.0, cons_r * 0.2), top)
    cons = sp.part(paint, owner, HCYL, gloss=0.25)
    sp.rect(cons, cons_x - cons_len / 2, cons_y - cons_r, cons_x + cons_len / 2, cons_y + cons_r)
    sp.ellipse(sp.part(np.asarray(paint) * 0.85, owner, HCYL), cons_x + side * cons_len / 2, cons_y, cons_r * 0.35,
               cons_r)
    _box(sp, rng, owner, paint, -w / 2, top, w / 2, bottom, depth, side)
    # radiator bank in front of part of the tank: fins alternate lit / shadowed faces
    fins = int(rng.integers(6, 15))
    bank_w = w * rng.uniform(0.35, 0.6)
    bank_x0 = float(rng.uniform(-w / 2, w / 2 - bank_w))
    lit = sp.part(paint, owner, FLAT, (-0.5 * side, 0.0, 0.85), 0.15)
    dark = sp.part(paint, owner, FLAT, (0.8 * side, 0.0, 0.6), 0.05)
    header = sp.part(np.asarray(paint) * 0.9, owner, HCYL)
    pitch = bank_w / fins
    fin_top, fin_bottom = top + h * 0.12, bottom - h * 0.1
    sp.rect(header, bank_x0, fin_top - _len(0.1, m), bank_x0 + bank_w, fin_top + _len(0.05, m))
    sp.rect(header, bank_x0, fin_bottom - _len(0.05, m), bank_x0 + bank_w, fin_bottom + _len(0.1, m))
    for i in range(fins):
        fx = bank_x0 + i * pitch
        sp.rect(lit, fx, fin_top, fx + pitch * 0.5, fin_bottom)
        sp.rect(dark, fx + pitch * 0.5, fin_top, fx + pitch * 0.85, fin_bottom)
    n_bushings = int(rng.integers(0, min(3, budget - 1) + 1))
    bush_h = _len(rng.uniform(1.2, 2.2), m, 8.0)
    for i in range(n_bushings):
        bx = (i - (n_bushings - 1) / 2) * w / 3.2 + side * depth * 0.3
        lean = float((bx / max(w, 1.0)) * rng.uniform(0, 40))
        with sp.rotated(lean, (bx, top - depth * 0.25)), sp.translated(bx, top - depth * 0.25):
            _bushing(sp, rng, m, sp.owner("bushing"), bush_h)


def draw_circuit_breaker(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    owner = sp.owner("circuit_breaker")
    steel = sp.part(_pick(rng, STEEL), CLUTTER)
    metal = sp.part(_pick(rng, METAL), owner, VCYL, gloss=0.5)
    frame_h = _len(rng.uniform(1.8, 2.6), m, 4.0)
    if rng.random() < 0.3:  # dead-tank: a horizontal tank on legs carrying two bushings in a V
        tank_len, tank_r = _len(rng.uniform(2.2, 3.2), m, 8.0), _len(rng.uniform(0.35, 0.5), m, 2.0)
        for lx in (-tank_len * 0.35, tank_len * 0.35):
            sp.rect(steel, lx - _len(0.06, m), -frame_h, lx + _len(0.06, m), 0)
        tank_y = -frame_h - tank_r
        color = _pick(rng, PAINT)
        sp.rect(sp.part(color, owner, HCYL, gloss=0.3), -tank_len / 2, tank_y - tank_r, tank_len / 2, tank_y + tank_r)
        sp.rect(sp.part(np.asarray(color) * 0.8, owner, FLAT), -tank_len * 0.15, tank_y + tank_r,
                tank_len * 0.15, tank_y + tank_r * 3.0)  # operating mechanism box under the tank
        bh = _len(rng.uniform(1.8, 2.6), m, 8.0)
        for sgn in (-1, 1):
            bx = sgn * tank_len * 0.3
            with sp.rotated(sgn * 18.0, (bx, tank_y - tank_r * 0.8)), sp.translated(bx, tank_y - tank_r * 0.8):
                _bushing(sp, rng, m, owner, bh)
        return
    poles = int(rng.choice([1, 1, 2, 3]))
    spacing = _len(rng.uniform(2.4, 3.2), m, 8.0)
    span = (poles - 1) * spacing
    for lx in (-span / 2 - _len(0.2, m), span / 2 + _len(0.2, m)):
        sp.line(steel, [(lx, 0), (lx, -frame_h)], _len(0.08, m))
    beam = sp.part(_pick(rng, STEEL), owner, FLAT, gloss=0.1)
    sp.rect(beam, -span / 2 - _len(0.4, m), -frame_h - _len(0.2, m), span / 2 + _len(0.4, m), -frame_h)
    box_w, box_h = _len(0.7, m, 3.0), _len(0.9, m, 3.0)
    _box(sp, rng, owner, _pick(rng, CABINET), -box_w / 2, -frame_h * 0.75 - box_h / 2,
         box_w / 2, -frame_h * 0.75 + box_h / 2, box_w * 0.4, int(rng.choice([-1, 1])))
    t_type = rng.random() < 0.5
    col_h, core_r, shed_r = _len(rng.uniform(1.3, 2.0), m, 6.0), _len(0.09, m), _len(0.2, m, 1.5)
    color = _pick(rng, PORCELAIN)
    core = sp.part(np.asarray(color) * 0.72, owner, VCYL, gloss=0.15)
    shed = sp.part(color, owner, VCYL, gloss=0.35)
    hcore = sp.part(np.asarray(color) * 0.72, owner, HCYL, gloss=0.15)  # the T head's horizontal chambers
    hshed = sp.part(color, owner, HCYL, gloss=0.35)
    arm = _len(rng.uniform(0.6, 0.9), m, 4.0)
    for p in range(poles):
        x = -span / 2 + p * spacing
        base = -frame_h - _len(0.2, m)
        _shed_column(sp, core, shed, x, base, col_h, core_r, shed_r, _len(0.1, m))
        joint = base - col_h
        housing = _len(0.25, m, 1.5)
        sp.rect(metal, x - housing, joint - housing * 1.6, x + housing, joint)
        if t_type:
            yc = joint - housing * 0.8
            sp.rect(hcore, x - arm, yc - core_r * 1.3, x + arm, yc + core_r * 1.3)
            n = max(1, int(arm / max(_len(0.1, m), 2.5)))
            for i in range(n):
                for sgn in (-1, 1):
                    sx = x + sgn * (housing + (i + 0.5) * (arm - housing) / n)
                    sp.ellipse(hshed, sx, yc, max(0.6, (arm - housing) / n * 0.24), shed_r * 1.2)
            for sgn in (-1, 1):
                sp.rect(metal, x + sgn * arm, yc - core_r * 1.6, x + sgn * (arm + _len(0.12, m)), yc + core_r * 1.6)
        else:
            top_h = _len(rng.uniform(0.9, 1.4), m, 4.0)
            _shed_column(sp, core, shed, x, joint - housing * 1.6, top_h, core_r * 1.5, shed_r * 1.3, _len(0.12, m))
            cap = joint - housing * 1.6 - top_h
            sp.rect(metal, x - housing, cap - _len(0.15, m), x + housing, cap)
            sp.rect(metal, x, cap - _len(0.2, m), x + _len(0.35, m, 2.0), cap - _len(0.1, m))


def draw_busbar(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    phases = int(min(budget, rng.choice([1, 1, 2, 3])))
    length = min(_len(rng.uniform(6.0, 22.0), m, 20.0), sp.max_extent)
    sp.elevation = _len(rng.uniform(4.0, 8.0), m, 6.0)
    tilt = float(rng.uniform(-6, 6))
    metal = _pick(rng, METAL)
    gap, shift = _len(rng.uniform(0.6, 1.2), m, 4.0), float(rng.uniform(-0.15, 0.15)) * length
    flexible = rng.random() < 0.3
    starts = [(i * shift - length / 2, -i * gap) for i in range(phases)]
    # unlabelled steel supports from the conductor ends down to the ground (y = elevation), drawn first so the
    # conductors pass in front of them
    steel = sp.part(_pick(rng, STEEL), CLUTTER, VCYL)
    cos_t, sin_t = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    for x0, y0 in starts:
        for x in (x0 + length * 0.03, x0 + length * 0.97):
            px, py = x * cos_t - y0 * sin_t, x * sin_t + y0 * cos_t
            sp.line(steel, [(px, py), (px, sp.elevation)], _len(0.12, m, 1.0))
    with sp.rotated(tilt, (0.0, 0.0)):
        if flexible:  # flexible conductor sagging between two clamps
            for x0, y0 in starts:
                owner = sp.owner("busbar")
                pid = sp.part(np.asarray(metal) * 0.8, owner, HCYL, gloss=0.4)
                sag = float(rng.uniform(0.03, 0.08)) * length
                xs = np.linspace(0.0, 1.0, 25)
                sp.line(pid, np.stack([x0 + xs * length, y0 + 4.0 * sag * xs * (1.0 - xs)], 1), _len(0.05, m, 2.0))
                clamp = sp.part(metal, owner, FLAT, gloss=0.4)
                for cx in (x0 + length * 0.03, x0 + length * 0.97):
                    sp.rect(clamp, cx - _len(0.08, m), y0 - _len(0.08, m, 1.5), cx + _len(0.08, m),
                            y0 + _len(0.08, m, 1.5))
            return
        r = _len(rng.uniform(0.06, 0.13), m, 1.0)
        for x0, y0 in starts:
            owner = sp.owner("busbar")
            tube = sp.part(metal, owner, HCYL, gloss=0.7)
            fitting = sp.part(np.asarray(metal) * 0.85, owner, HCYL, gloss=0.4)
            sp.rect(tube, x0, y0 - r, x0 + length, y0 + r)
            for fx in np.linspace(x0 + length * 0.03, x0 + length * 0.97, int(rng.integers(2, 5))):
                fw = max(r * 1.2, 1.0)
                sp.rect(fitting, fx - fw, y0 - r * 1.5, fx + fw, y0 + r * 1.5)


def draw_control_cabinet(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    owner = sp.owner("control_cabinet")
    w, h = _len(rng.uniform(0.7, 1.6), m, 4.0), _len(rng.uniform(1.2, 2.2), m, 6.0)
    depth, side = _len(rng.uniform(0.4, 0.7), m, 2.0), int(rng.choice([-1, 1]))
    plinth = _len(0.2, m)
    sp.rect(sp.part(_pick(rng, CONCRETE), CLUTTER), -w / 2 - 1, -plinth, w / 2 + side * depth + 1, 0)
    color = _pick(rng, CABINET)
    _box(sp, rng, owner, color, -w / 2, -plinth - h, w / 2, -plinth, depth, side, 0.15)
    lip = _len(0.05, m)
    roof = sp.part(np.asarray(color) * 1.05, owner, FLAT, (0.0, -0.5, 0.85), 0.2)
    sp.rect(roof, -w / 2 - lip, -plinth - h - 2 * lip, w / 2 + lip, -plinth - h)
    seam = sp.part(np.asarray(color) * 0.55, owner)
    doors = 2 if w > _len(1.0, m, 6.0) else 1
    inset = max(1.0, w * 0.04)
    for i in range(doors):
        dx0 = -w / 2 + inset + i * (w - 2 * inset) / doors
        dx1 = dx0 + (w - 2 * inset) / doors
        sp.line(seam, [(dx0, -plinth - inset), (dx0, -plinth - h + inset), (dx1, -plinth - h + inset),
                       (dx1, -plinth - inset), (dx0, -plinth - inset)], 1.0)
        hx = dx1 - max(1.5, w * 0.06) if i == 0 else dx0 + max(1.5, w * 0.06)
        sp.rect(sp.part(_pick(rng, METAL), owner, FLAT, gloss=0.8), hx - max(0.5, w * 0.01), -plinth - h * 0.55,
                hx + max(0.5, w * 0.01), -plinth - h * 0.45)
    if h > 24:  # ventilation louvres near the bottom
        for k in range(4):
            yy = -plinth - h * 0.12 - k * max(2.0, h * 0.025)
            sp.line(seam, [(-w * 0.25, yy), (w * 0.25, yy)], 1.0)
    if rng.random() < 0.5 and h > 18:  # yellow high-voltage warning sign
        s = max(3.0, w * 0.12)
        cx, cy = -w / 4 if doors == 2 else 0.0, -plinth - h * 0.75
        sp.poly(sp.part((230, 190, 40), owner, FLAT, gloss=0.2), [(cx - s, cy + s * 0.8), (cx + s, cy + s * 0.8),
                                                                    (cx, cy - s * 0.9)])


DRAWERS = {
    "insulator_string": draw_insulator_string,
    "post_insulator": draw_post_insulator,
    "bushing": draw_bushing,
    "power_transformer": draw_power_transformer,
    "circuit_breaker": draw_circuit_breaker,
    "disconnector": draw_disconnector,
    "instrument_transformer": draw_instrument_transformer,
    "surge_arrester": draw_surge_arrester,
    "busbar": draw_busbar,
    "control_cabinet": draw_control_cabinet,
}


def draw_gantry(sp: Sprite, rng: np.random.Generator, m: float, budget: int) -> None:
    """Unlabelled steel gantry (one column, or two columns joined by a truss) that occludes what lies behind."""
    pid = sp.part(_pick(rng, STEEL), CLUTTER)
    h = min(_len(rng.uniform(8.0, 14.0), m, 10.0), sp.max_extent)
    half, w = _len(rng.uniform(0.3, 0.5), m, 2.0), _len(0.05, m)
    span = min(_len(rng.uniform(6.0, 14.0), m, 12.0), sp.max_extent) if rng.random() < 0.6 else 0.0
    for cx in ((-span / 2, span / 2) if span else (0.0,)):
        sp.line(pid, [(cx - half, 0), (cx - half * 0.7, -h)], w)
        sp.line(pid, [(cx + half, 0), (cx + half * 0.7, -h)], w)
        n = max(3, int(h / max(2 * half, 5.0)))
        sp.line(pid, [(cx + (half if i % 2 else -half) * (1 - 0.3 * i / n), -h * i / n) for i in range(n + 1)],
                w * 0.7)
    if span:
        beam_h = half * 1.6
        sp.line(pid, [(-span / 2, -h), (span / 2, -h)], w)
        sp.line(pid, [(-span / 2, -h + beam_h), (span / 2, -h + beam_h)], w)
        k = max(2, int(span / max(beam_h, 4.0)))
        sp.line(pid, [(-span / 2 + span * i / k, -h + (beam_h if i % 2 else 0)) for i in range(k + 1)], w * 0.7)
