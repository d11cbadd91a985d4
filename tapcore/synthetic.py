"""Synthetic fluorescence movies of nuclei that move, grow, divide and die, with exact event masks.

This is the embedded demo and the test fixture. Every process carries an arrow of time, so that
time arrow prediction (TAP) has something real to learn and the event heads have real events:

- **growth**: through its cell cycle a nucleus grows and its brightness rises steadily (histone
  content doubles before mitosis); daughters are born small and dim. The defaults make this cue
  visible in every frame pair (radius 5 -> 11 px over a cycle of about 20 frames, ~0.3 px per
  frame), strong enough that a tiny TAP network learns it in minutes on a CPU;
- **mitosis**: in her last frame(s) before the split (``mitosis_frames``, 1 by default: the marked
  frame, so no unmarked frame looks like a division) the mother rounds up and condenses (smaller,
  rounder, brighter, smoother texture), then it splits into two daughters that move apart and relax;
- **apoptosis**: a dying nucleus shrinks and brightens, fragments into pieces that drift apart,
  fades, and never comes back;
- **acquisition**: photobleaching (signal decays monotonically), an illumination gradient that
  drifts steadily across the field, background, Poisson shot noise and Gaussian read noise.

Masks (``uint8``, like the Cell Tracking Challenge import): ``1`` marks a division, i.e. the
mother's pixels in her last frame(s) before the split and the daughters' pixels in their first
frame(s); ``2`` marks a death, i.e. the dying nucleus' pixels (or fragments) in every death frame.
The event table has one row per event (see :class:`SyntheticMovie`).

Everything is drawn from one ``numpy`` generator seeded by ``SynthConfig.seed``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Columns of :attr:`SyntheticMovie.events`.
EVENT_COLUMNS = ["frame", "last_frame", "y", "x", "kind", "cell_id", "area"]


@dataclass
class SynthConfig:
    """Synthetic movie parameters (sizes in pixels, times in frames, rates per cell per frame)."""

    seed: int = 0  # everything is deterministic from this seed
    frames: int = 48  # number of frames T
    height: int = 256  # frame height Y
    width: int = 256  # frame width X
    cells: int = 25  # nuclei in the first frame
    max_cells: int = 110  # no new division starts once this many nuclei are alive
    division_rate: float = 0.12  # per-frame probability of mitosis once a nucleus is past min_cycle_frames
    # (each nucleus draws its cycle length at birth: min_cycle_frames + a geometric wait with this rate)
    death_rate: float = 0.01  # probability per frame that an interphase nucleus starts dying
    radius_min: float = 5.0  # radius of a newborn nucleus (mean of the two semi-axes)
    radius_max: float = 11.0  # radius of a nucleus about to divide
    dna_growth: float = 1.0  # relative brightness gain over the cell cycle (1.0: doubles before mitosis)
    min_cycle_frames: int = 12  # a nucleus divides at the earliest this many frames after its birth
    mitosis_frames: int = 1  # frames of condensation before the split (the last mark_frames of them are marked)
    death_frames: int = 6  # frames from the start of apoptosis to disappearance (all marked)
    mark_frames: int = 1  # frames marked before and after a split (mother's last, daughters' first)
    speed: float = 0.8  # typical random-walk speed of a nucleus (px/frame)
    persistence: float = 0.8  # velocity memory per frame (0 = Brownian, 1 = ballistic)
    drift: tuple[float, float] = (0.0, 0.0)  # common drift of all nuclei (dy, dx) px/frame
    intensity: float = 1200.0  # mean nucleus brightness above background (counts)
    background: float = 300.0  # camera background (counts)
    texture: float = 0.25  # chromatin texture amplitude (fraction of brightness)
    bleaching: float = 0.35  # fraction of signal lost to photobleaching by the last frame
    illumination_drift: float = 0.3  # amplitude of the illumination gradient that moves across the field
    read_noise: float = 20.0  # Gaussian read noise (counts, standard deviation)
    shot_noise: bool = True  # Poisson photon noise
    dtype: str = "uint16"  # output dtype: "uint16", "uint8" or "float32"

    def validate(self) -> None:
        if self.frames < 2:
            raise ValueError(f"frames must be at least 2 (a movie), got {self.frames}")
        if self.height < 16 or self.width < 16:
            raise ValueError(f"height and width must be at least 16 pixels, got {self.height} x {self.width}")
        if self.cells < 1:
            raise ValueError(f"cells must be at least 1, got {self.cells}")
        if not 0 < self.radius_min <= self.radius_max:
            raise ValueError(f"need 0 < radius_min <= radius_max, got {self.radius_min}, {self.radius_max}")
        if 4 * self.radius_max > min(self.height, self.width):
            raise ValueError(
                f"radius_max={self.radius_max} is too large for {self.height} x {self.width} frames; "
                "use frames at least 4 x radius_max wide"
            )
        for name in ("division_rate", "death_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability per frame in [0, 1], got {value}")
        if self.mitosis_frames < 1 or self.death_frames < 2 or self.mark_frames < 1:
            raise ValueError("mitosis_frames and mark_frames must be >= 1 and death_frames >= 2")
        if self.mark_frames > self.mitosis_frames:
            raise ValueError(f"mark_frames ({self.mark_frames}) cannot exceed mitosis_frames ({self.mitosis_frames})")
        if not 0.0 <= self.persistence < 1.0:
            raise ValueError(f"persistence must be in [0, 1), got {self.persistence}")
        if not 0.0 <= self.bleaching < 1.0:
            raise ValueError(f"bleaching must be in [0, 1), got {self.bleaching}")
        if self.dtype not in ("uint16", "uint8", "float32"):
            raise ValueError(f"dtype must be 'uint16', 'uint8' or 'float32', got {self.dtype!r}")


@dataclass
class SyntheticMovie:
    """A synthetic movie with its ground truth.

    Attributes:
        movie: ``(T, Y, X)`` in ``config.dtype``.
        masks: ``uint8 (T, Y, X)``: 0 none, 1 division, 2 death.
        events: one row per event: ``frame`` (division: the mother's last frame; death: the first
            death frame), ``last_frame`` (division: the daughters' first frame; death: the last
            death frame inside the movie), ``y``, ``x`` (the nucleus centre at ``frame``), ``kind``
            (``"division"`` or ``"death"``), ``cell_id`` (mother / dying nucleus), ``area``
            (mask pixels of the event's nucleus at ``frame``).
        config: the :class:`SynthConfig` used.
    """

    movie: np.ndarray
    masks: np.ndarray
    events: pd.DataFrame
    config: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class _Cell:
    cid: int
    y: float
    x: float
    vy: float
    vx: float
    age: float  # frames since birth (may start > 0 for the first nuclei)
    cycle: float  # frames from birth to mitosis onset
    r0: float  # radius at birth
    aspect: float  # ratio of semi-axes (>= 1)
    theta: float  # orientation of the long axis
    brightness: float
    tex: np.ndarray  # (3, 3) texture waves (wave number, direction, phase)
    state: str = "interphase"  # interphase | mitosis | dying
    phase_frame: int = 0  # frames spent in the current state (mitosis / dying)
    birth_boost: int = 0  # frames of post-split brightness left
    push: tuple[float, float] = (0.0, 0.0)  # post-split separation velocity
    frag: np.ndarray | None = None  # (n, 2) unit directions of apoptotic fragments


@dataclass
class _Obj:
    """One drawn blob: an ellipse with texture, or a fragment disk."""

    cid: int
    y: float
    x: float
    ry: float
    rx: float
    theta: float
    brightness: float
    tex_amp: float
    tex: np.ndarray
    value: int  # mask value (0 none, 1 division, 2 death)


def _progress(c: _Cell) -> float:
    """Cell-cycle progress in [0, 1] (1 = ready for mitosis)."""
    return float(min(c.age / c.cycle, 1.0))


def _radius(cfg: SynthConfig, c: _Cell) -> float:
    return float(min(c.r0 + (cfg.radius_max - cfg.radius_min) * _progress(c), cfg.radius_max))


def _cycle(cfg: SynthConfig, rng: np.random.Generator) -> float:
    wait = rng.geometric(cfg.division_rate) - 1 if cfg.division_rate > 0 else 10 * cfg.frames
    return float(cfg.min_cycle_frames + wait)


def _new_texture(rng: np.random.Generator) -> np.ndarray:
    """Chromatin texture of one nucleus: three plane waves, rows (wave number, direction, phase)."""
    k = rng.uniform(0.7, 1.4, size=3)
    a = rng.uniform(0, np.pi, size=3)
    p = rng.uniform(0, 2 * np.pi, size=3)
    return np.stack([k, a, p], axis=1)  # (3, 3)


def _initial_cells(cfg: SynthConfig, rng: np.random.Generator) -> list[_Cell]:
    cells: list[_Cell] = []
    margin = cfg.radius_max + 2
    min_dist = 2.2 * cfg.radius_max
    for cid in range(1, cfg.cells + 1):
        for _ in range(200):
            y = rng.uniform(margin, cfg.height - margin)
            x = rng.uniform(margin, cfg.width - margin)
            if all((y - c.y) ** 2 + (x - c.x) ** 2 >= min_dist**2 for c in cells):
                break
        else:
            min_dist *= 0.9  # crowded: accept the last position and relax the spacing
        ang = rng.uniform(0, 2 * np.pi)
        speed = rng.rayleigh(cfg.speed / 1.25)
        cycle = _cycle(cfg, rng)
        cells.append(_Cell(
            cid=cid, y=y, x=x, vy=speed * np.sin(ang), vx=speed * np.cos(ang),
            age=float(rng.uniform(0, cycle)), cycle=cycle, r0=float(rng.uniform(cfg.radius_min, cfg.radius_min * 1.1)),
            aspect=float(rng.uniform(1.05, 1.5)), theta=float(rng.uniform(0, np.pi)),
            brightness=float(rng.uniform(0.75, 1.25)), tex=_new_texture(rng),
        ))
    return cells


def _objects(cfg: SynthConfig, c: _Cell, marked: bool) -> list[_Obj]:
    """The blobs a nucleus shows in the current frame."""
    r = _radius(cfg, c)
    aspect, tex_amp = c.aspect, cfg.texture
    bright = c.brightness * (1.0 + cfg.dna_growth * _progress(c))
    if c.state == "mitosis":
        s = c.phase_frame / cfg.mitosis_frames  # (0, 1]: condensation progress
        r *= 1.0 - 0.3 * s
        aspect = 1.0 + (aspect - 1.0) * (1.0 - s)
        bright *= 1.0 + 0.9 * s
        tex_amp *= 1.0 - 0.7 * s
        value = 1 if marked else 0
        return [_Obj(c.cid, c.y, c.x, r * np.sqrt(aspect), r / np.sqrt(aspect), c.theta, bright, tex_amp, c.tex, value)]
    if c.state == "dying":
        s = c.phase_frame / cfg.death_frames  # (0, 1]: apoptosis progress
        r *= 1.0 - 0.45 * s
        bright *= (1.0 + 1.2 * s) * (1.0 - 0.85 * max(0.0, (s - 0.4) / 0.6))
        aspect = 1.0 + (aspect - 1.0) * (1.0 - s)
        if s <= 0.34 or c.frag is None:
            return [_Obj(c.cid, c.y, c.x, r * np.sqrt(aspect), r / np.sqrt(aspect), c.theta, bright, tex_amp * 0.5,
                         c.tex, 2)]
        spread = r * (0.4 + 1.6 * (s - 0.34))
        fr = max(r * 0.45, 1.6)
        return [
            _Obj(c.cid, c.y + spread * d[0], c.x + spread * d[1], fr, fr, 0.0, bright, 0.0, c.tex, 2)
            for d in c.frag
        ]
    bright *= 1.0 + 0.4 * (c.birth_boost / 3.0)
    value = 1 if marked else 0
    return [_Obj(c.cid, c.y, c.x, r * np.sqrt(aspect), r / np.sqrt(aspect), c.theta, bright, tex_amp, c.tex, value)]


def _simulate(cfg: SynthConfig, rng: np.random.Generator) -> tuple[list[list[_Obj]], list[dict]]:
    """Run the cell simulation: the blobs of every frame and the event records."""
    cells = _initial_cells(cfg, rng)
    next_id = len(cells) + 1
    frames: list[list[_Obj]] = []
    events: list[dict] = []
    # marks[t] = set of cell ids whose blobs carry the division mark (value 1) at frame t
    division_marks: dict[int, set[int]] = {}
    drawn_at: dict[tuple[int, int], tuple[float, float]] = {}
    for t in range(cfg.frames):
        if t > 0:
            cells, next_id = _step(cfg, rng, cells, t, next_id, events, division_marks)
        objs: list[_Obj] = []
        marked = division_marks.get(t, set())
        for c in cells:
            objs.extend(_objects(cfg, c, c.cid in marked))
            drawn_at[(t, c.cid)] = (c.y, c.x)
        frames.append(objs)
    for ev in events:  # the event's position is the nucleus centre as drawn in the event's frame
        ev["y"], ev["x"] = drawn_at[(ev["frame"], ev["cell_id"])]
    return frames, events


def _step(cfg, rng, cells, t, next_id, events, division_marks):
    """Advance every nucleus from frame t-1 to frame t."""
    survivors: list[_Cell] = []
    born: list[_Cell] = []
    n_alive = len(cells)
    margin = cfg.radius_max + 1
    for c in cells:
        if c.state == "dying":
            if c.phase_frame >= cfg.death_frames:
                continue  # gone for good
            c.phase_frame += 1
            c.vy *= 0.5
            c.vx *= 0.5
            c.y += c.vy
            c.x += c.vx
            survivors.append(c)
            continue
        if c.state == "mitosis" and c.phase_frame >= cfg.mitosis_frames:
            # split: two daughters along a random axis, moving apart
            ang = rng.uniform(0, np.pi)
            r = _radius(cfg, c) * 0.7
            dy, dx = np.sin(ang), np.cos(ang)
            ids = []
            for sign in (1.0, -1.0):
                d = _Cell(
                    cid=next_id, y=c.y + sign * 0.9 * r * dy, x=c.x + sign * 0.9 * r * dx,
                    vy=c.vy * 0.5, vx=c.vx * 0.5, age=0.0, cycle=_cycle(cfg, rng),
                    r0=float(rng.uniform(cfg.radius_min * 0.95, cfg.radius_min * 1.05)),
                    aspect=float(rng.uniform(1.05, 1.4)), theta=float(ang + rng.normal(0, 0.2)),
                    brightness=float(c.brightness * rng.uniform(0.9, 1.1)), tex=_new_texture(rng),
                    birth_boost=3, push=(sign * 1.2 * dy, sign * 1.2 * dx),
                )
                ids.append(next_id)
                next_id += 1
                born.append(d)
            # the daughters' first mark_frames frames carry value 1 (the mother's were set at mitosis onset)
            for k in range(cfg.mark_frames):
                division_marks.setdefault(t + k, set()).update(ids)
            events.append({"frame": t - 1, "last_frame": t, "kind": "division", "cell_id": c.cid})
            continue
        # moving nuclei: persistent random walk plus common drift and post-split push
        noise = rng.normal(0.0, cfg.speed * np.sqrt(1 - cfg.persistence**2) / np.sqrt(2), size=2)
        c.vy = cfg.persistence * c.vy + noise[0]
        c.vx = cfg.persistence * c.vx + noise[1]
        damp = 0.3 if c.state == "mitosis" else 1.0
        c.y += damp * c.vy + cfg.drift[0] + c.push[0]
        c.x += damp * c.vx + cfg.drift[1] + c.push[1]
        c.push = (c.push[0] * 0.5, c.push[1] * 0.5)
        if c.y < margin or c.y > cfg.height - margin:
            c.vy = -c.vy
        if c.x < margin or c.x > cfg.width - margin:
            c.vx = -c.vx
        c.age += 1
        c.birth_boost = max(c.birth_boost - 1, 0)
        c.theta += rng.normal(0, 0.05)
        if c.state == "mitosis":
            c.phase_frame += 1
        else:
            u = rng.random()
            if u < cfg.death_rate:
                c.state, c.phase_frame = "dying", 1
                n = int(rng.integers(3, 6))
                angs = rng.uniform(0, 2 * np.pi) + np.arange(n) * 2 * np.pi / n + rng.normal(0, 0.3, size=n)
                c.frag = np.stack([np.sin(angs), np.cos(angs)], axis=1) * rng.uniform(0.7, 1.3, size=(n, 1))
                events.append({"frame": t, "last_frame": min(t + cfg.death_frames - 1, cfg.frames - 1),
                               "kind": "death", "cell_id": c.cid})
            elif c.age >= c.cycle and n_alive + len(born) < cfg.max_cells:
                c.state, c.phase_frame = "mitosis", 1
                split = t + cfg.mitosis_frames  # the daughters' first frame
                if split < cfg.frames:  # the mother's last mark_frames frames carry value 1
                    for k in range(cfg.mark_frames):
                        division_marks.setdefault(split - 1 - k, set()).add(c.cid)
        survivors.append(c)
    cells = survivors + born
    for c in cells:  # keep nuclei inside the field
        c.y = float(np.clip(c.y, margin, cfg.height - margin))
        c.x = float(np.clip(c.x, margin, cfg.width - margin))
    _separate(cfg, cells)
    return cells, next_id


def _separate(cfg: SynthConfig, cells: list[_Cell]) -> None:
    """Push overlapping nuclei apart (a few relaxation sweeps)."""
    if len(cells) < 2:
        return
    for _ in range(3):
        pos = np.array([[c.y, c.x] for c in cells])  # (N, 2)
        rad = np.array([_radius(cfg, c) * (1.25 if c.state == "dying" else 1.1) for c in cells])  # (N,)
        diff = pos[:, None, :] - pos[None, :, :]  # (N, N, 2)
        dist = np.sqrt((diff**2).sum(-1)) + np.eye(len(cells)) * 1e9
        need = rad[:, None] + rad[None, :] + 2.0
        overlap = np.clip(need - dist, 0, None)  # (N, N)
        if not overlap.any():
            return
        unit = diff / np.maximum(dist, 1e-6)[..., None]
        shift = 0.5 * (overlap[..., None] * unit).sum(1)  # (N, 2)
        margin = cfg.radius_max + 1
        for c, (sy, sx) in zip(cells, shift):
            c.y = float(np.clip(c.y + sy, margin, cfg.height - margin))
            c.x = float(np.clip(c.x + sx, margin, cfg.width - margin))


def _render(cfg: SynthConfig, frames: list[list[_Obj]]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw every frame's blobs: clean signal (T, Y, X) float32, masks (T, Y, X) uint8, object pixels."""
    T, H, W = cfg.frames, cfg.height, cfg.width
    signal = np.zeros((T, H, W), np.float32)
    masks = np.zeros((T, H, W), np.uint8)
    area: dict[tuple[int, int], int] = {}
    for t, objs in enumerate(frames):
        for o in objs:
            rmax = max(o.ry, o.rx) + 3
            y0, y1 = int(max(np.floor(o.y - rmax), 0)), int(min(np.ceil(o.y + rmax) + 1, H))
            x0, x1 = int(max(np.floor(o.x - rmax), 0)), int(min(np.ceil(o.x + rmax) + 1, W))
            if y1 <= y0 or x1 <= x0:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dy, dx = yy - o.y, xx - o.x
            ct, st = np.cos(o.theta), np.sin(o.theta)
            u = dy * ct + dx * st  # along the long axis
            v = -dy * st + dx * ct
            rho = np.sqrt((u / o.ry) ** 2 + (v / o.rx) ** 2)  # 1 on the ellipse border
            profile = 1.0 / (1.0 + np.exp((rho - 1.0) * 8.0))  # soft edge, 0.5 on the border
            texture = np.ones_like(u)
            if o.tex_amp > 0:
                waves = sum(np.cos(k * (u * np.cos(a) + v * np.sin(a)) + p) for k, a, p in o.tex)
                texture += (o.tex_amp * 0.45) * waves
            signal[t, y0:y1, x0:x1] += (o.brightness * profile * texture).astype(np.float32)
            inside = rho <= 1.0
            if o.value:
                masks[t, y0:y1, x0:x1][inside] = o.value
            key = (t, o.cid)
            area[key] = area.get(key, 0) + int(inside.sum())
    return signal, masks, area


def make_synthetic(cfg: SynthConfig | None = None) -> SyntheticMovie:
    """Generate a synthetic movie, its event masks and event table, deterministically from ``cfg.seed``."""
    cfg = cfg or SynthConfig()
    cfg.validate()
    seq = np.random.SeedSequence(cfg.seed)
    sim_rng, noise_rng = (np.random.default_rng(s) for s in seq.spawn(2))
    frames, event_rows = _simulate(cfg, sim_rng)
    signal, masks, areas = _render(cfg, frames)

    T, H, W = signal.shape
    t = np.arange(T, dtype=np.float32) / max(T - 1, 1)  # (T,) 0..1
    bleach = (1.0 - cfg.bleaching * t)[:, None, None]  # monotone photobleaching
    # an illumination gradient whose bright side travels steadily across the field
    ang = noise_rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    proj = ((yy - H / 2) * np.sin(ang) + (xx - W / 2) * np.cos(ang)) / max(H, W)  # (Y, X) in [-0.7, 0.7]
    illum = 1.0 + cfg.illumination_drift * np.cos(np.pi * (proj[None] - (t[:, None, None] - 0.5)))  # (T, Y, X)
    expected = np.float32(cfg.background) + np.float32(cfg.intensity) * signal * (bleach * illum).astype(np.float32)
    if cfg.shot_noise:
        expected = noise_rng.poisson(expected).astype(np.float32)
    movie = expected + np.float32(cfg.read_noise) * noise_rng.standard_normal(size=expected.shape, dtype=np.float32)
    if cfg.dtype == "uint16":
        movie = np.clip(np.rint(movie), 0, 65535).astype(np.uint16)
    elif cfg.dtype == "uint8":
        hi = float(np.percentile(movie, 99.99)) or 1.0
        movie = np.clip(np.rint(movie * (255.0 / hi)), 0, 255).astype(np.uint8)
    else:
        movie = movie.astype(np.float32)

    rows = []
    for ev in event_rows:
        if not 0 <= ev["frame"] < T:
            continue
        ev = dict(ev)
        ev["area"] = areas.get((ev["frame"], ev["cell_id"]), 0)
        rows.append(ev)
    events = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    events = events.sort_values(["frame", "cell_id"], kind="stable").reset_index(drop=True)
    events = events.astype({"frame": int, "last_frame": int, "y": float, "x": float, "cell_id": int, "area": int})
    logger.debug("synthetic movie %s: %d divisions, %d deaths", movie.shape,
                 int((events["kind"] == "division").sum()), int((events["kind"] == "death").sum()))
    return SyntheticMovie(movie=movie, masks=masks, events=events, config=cfg)
