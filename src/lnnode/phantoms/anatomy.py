"""Synthetic trunk anatomy (abdomen/pelvis at the aortic bifurcation) in world LPS mm, and its rendering.

What is modelled, per case from its random stream (sizes in mm):

* body: elliptical trunk section (semi-axes ~135-165 x 95-120) varying slowly along z; air outside;
  subcutaneous fat; an abdominal-wall muscle ring; visceral fat inside, where nodes live;
* spine: vertebral bodies (cancellous bone with a cortical shell) interrupted by discs every ~33 mm,
  spinal canal, posterior arch and spinous process; paraspinal muscles; psoas muscles that grow
  caudally;
* organs: two kidney-like ellipsoids (upper part) and one or two lobulated bowel-like soft-tissue blobs;
* vessels: aorta (18-25 mm) bifurcating into the common iliac arteries, IVC and iliac veins, and
  4-8 smaller vessels (3-10 mm) with slowly curving centrelines that run through many slices. On one
  axial slice a vessel looks like a node: unenhanced and venous-return vessels overlap node
  intensities on CT, and on T2 MR a share of veins shows slow flow (node-like grey) instead of a
  flow void.

Everything is an analytic shape (:mod:`.primitives`), so the anatomy is the same on any grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from lnnode.geometry import ImageGeometry
from lnnode.phantoms.config import Tissue
from lnnode.phantoms.primitives import (
    Curve,
    Ellipsoid,
    Intersection,
    Perturbation,
    Prism,
    Shape,
    Texture,
    ZSlabs,
    block_of_box,
    block_world,
    edge_width,
    fibonacci_sphere,
    rotation_about,
    rotation_z,
    soft_occupancy,
    split_block,
)

__all__ = ["Layer", "Vessel", "Anatomy", "sample_anatomy", "render_anatomy", "paint", "CT_AIR"]

CT_AIR = -1000.0


@dataclass(frozen=True)
class Layer:
    """One structure painted over what lies below it: ``value`` (+ texture) mixed in by occupancy."""

    name: str
    shape: Shape
    tissue: Tissue
    value: float
    clip: Shape | None = None  # painted only inside this shape as well
    texture: Texture | None = None


@dataclass(frozen=True)
class Vessel:
    """A vessel tube with its kind and how often nodes are placed beside it."""

    name: str
    kind: str  # "artery" | "vein"
    shape: Prism
    weight: float


@dataclass
class Anatomy:
    """A sampled anatomy: layers in painting order plus what node placement needs."""

    layers: list[Layer]
    visceral: Shape  # the inside of the abdominal wall (nodes stay inside it)
    obstacles: list[Shape]  # nodes keep clear of these (bone, muscles, organs, vessels)
    vessels: list[Vessel]
    values: dict[str, float]  # intensities by tissue name, e.g. "visceral_fat" for a fatty hilum
    phase: str  # CT contrast phase ("unenhanced", "venous", "arterial") or "t2"
    meta: dict = field(default_factory=dict)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _wobble(rng: np.random.Generator, c0: float, amp: tuple[float, float], period=(150.0, 350.0), **kw) -> Curve:
    """A curve that meanders by a few mm along z."""
    return Curve(c0, amps=(_u(rng, *amp),), periods=(_u(rng, *period),), phases=(_u(rng, 0, 2 * np.pi),), **kw)


def _shrink(c: Curve, t: float) -> Curve:
    return replace(c, c0=c.c0 - t)


def _const(c: float) -> Curve:
    return Curve(float(c))


# -- intensities -----------------------------------------------------------------------------------------
def _tissue_values(rng: np.random.Generator, modality: str) -> tuple[dict[str, float], str]:
    """Per-case intensities by tissue name, and the CT contrast phase (``t2`` for MR)."""
    if modality == "ct":
        phase = str(rng.choice(["unenhanced", "venous", "arterial"], p=[0.3, 0.5, 0.2]))
        v = {
            "air": CT_AIR,
            "subcutaneous_fat": _u(rng, -115, -90),
            "muscle": _u(rng, 40, 60),
            "visceral_fat": _u(rng, -110, -85),
            "cortex": _u(rng, 700, 1000),
            "cancellous": _u(rng, 220, 380),
            "arch": _u(rng, 400, 650),
            "disc": _u(rng, 70, 100),
            "csf": _u(rng, 5, 20),
            "bowel": _u(rng, 15, 45),
            "kidney": {"unenhanced": _u(rng, 30, 40), "venous": _u(rng, 150, 190), "arterial": _u(rng, 170, 230)}[
                phase
            ],
            # node soft tissue (class texture is added by .nodes); mild enhancement after contrast
            "node": _u(rng, 30, 60) + {"unenhanced": 0.0, "venous": _u(rng, 0, 15), "arterial": _u(rng, 0, 10)}[phase],
            "necrosis": _u(rng, 10, 20),
        }
        # (lo, hi) of arteries, large veins, small veins; unenhanced and venous-return values overlap nodes
        v["_vessels"] = {
            "unenhanced": ((35, 50), (35, 50), (35, 50)),
            "venous": ((140, 190), (120, 170), (70, 130)),
            "arterial": ((220, 320), (45, 80), (40, 90)),
        }[phase]
        return v, phase
    v = {
        "air": 0.0,
        "subcutaneous_fat": _u(rng, 1000, 1250),
        "muscle": _u(rng, 230, 330),
        "visceral_fat": _u(rng, 950, 1200),
        "cortex": _u(rng, 60, 120),
        "cancellous": _u(rng, 600, 800),
        "arch": _u(rng, 300, 450),
        "disc": _u(rng, 900, 1150),
        "csf": _u(rng, 1250, 1500),
        "bowel": _u(rng, 450, 800),
        "kidney": _u(rng, 700, 900),
        "node": _u(rng, 480, 650),
        "necrosis": _u(rng, 1150, 1450),
    }
    v["_vessels"] = ((40, 150), (40, 150), (40, 150))  # flow voids; slow-flow veins set below
    return v, "t2"


def _vessel_value(rng: np.random.Generator, values: dict, kind: str, small: bool, modality: str) -> float:
    art, vein, small_vein = values["_vessels"]
    if modality == "mr" and kind == "vein" and rng.random() < 0.3:
        return _u(rng, 450, 750)  # slow flow: grey like a node instead of a flow void
    lo, hi = art if kind == "artery" else (small_vein if small else vein)
    return _u(rng, lo, hi)


# -- sampling -----------------------------------------------------------------------------------------
def _clear_of(points: np.ndarray, shapes: list[Shape], margin: float) -> bool:
    return all(np.all(s.sdf_points(points) > margin) for s in shapes)


def _centreline_points(vessel: Prism, zs: np.ndarray) -> np.ndarray:
    zs = zs[(zs >= vessel.z0) & (zs <= vessel.z1)]
    return np.stack([vessel.cx(zs), vessel.cy(zs), zs], axis=1)


@dataclass(frozen=True)
class _Trunk:
    """The body wall: outline, abdominal-wall muscle and the visceral space inside it."""

    body: Prism
    wall: Prism
    visceral: Prism
    inner_a: float  # semi-axes (mm) of the visceral space at its mean
    inner_b: float


@dataclass(frozen=True)
class _Spine:
    """Where the spine is (vessels and organs are placed relative to it) and what nodes must avoid."""

    y: Curve  # vertebral body centre (posterior), varying with z (lordosis)
    rx: float
    ry: float
    solids: list[Shape]


def _body_wall(rng: np.random.Generator, values: dict) -> tuple[_Trunk, list[Layer]]:
    a0, b0 = _u(rng, 135, 165), _u(rng, 95, 120)
    body_a = _wobble(rng, a0, (0.02 * a0, 0.06 * a0), (250, 450))
    body_b = _wobble(rng, b0, (0.02 * b0, 0.06 * b0), (250, 450))
    t_fat, t_mus = _u(rng, 8, 30), _u(rng, 8, 14)
    zero = _const(0.0)
    body = Prism(zero, zero, body_a, body_b)
    wall = Prism(zero, zero, _shrink(body_a, t_fat), _shrink(body_b, t_fat))
    visceral = Prism(zero, zero, _shrink(body_a, t_fat + t_mus), _shrink(body_b, t_fat + t_mus))
    layers = [
        Layer("body", body, Tissue.SUBCUTANEOUS_FAT, values["subcutaneous_fat"]),
        Layer("abdominal_wall", wall, Tissue.MUSCLE, values["muscle"]),
        Layer("visceral_fat", visceral, Tissue.VISCERAL_FAT, values["visceral_fat"]),
    ]
    return _Trunk(body, wall, visceral, a0 - t_fat - t_mus, b0 - t_fat - t_mus), layers


def _spine_and_back(rng: np.random.Generator, values: dict, trunk: _Trunk, z_bif: float) -> tuple[_Spine, list[Layer]]:
    """Vertebrae with discs, canal, arch and spinous process; paraspinal and psoas muscles."""
    zero = _const(0.0)
    b0 = float(trunk.body.b.c0)
    ys = _wobble(rng, _u(rng, 0.33, 0.42) * b0, (3, 6), (300, 500))  # vertebral body centre, lordosis
    vb_rx, vb_ry, t_cortex = _u(rng, 18, 24), _u(rng, 14, 18), _u(rng, 1.2, 2.0)
    vertebra = Prism(zero, ys, _const(vb_rx), _const(vb_ry))
    cancellous = Prism(zero, ys, _const(vb_rx - t_cortex), _const(vb_ry - t_cortex))
    period = _u(rng, 30, 36)
    discs = Intersection((vertebra, ZSlabs(period, _u(rng, 6, 10), _u(rng, 0, period))))
    canal_y = _shrink(ys, -(vb_ry + _u(rng, 7, 9)))
    canal_r = _u(rng, 6.5, 8.5)
    arch = Prism(zero, canal_y, _const(canal_r + _u(rng, 5, 7)), _const(canal_r + _u(rng, 5, 7)))
    canal = Prism(zero, canal_y, _const(canal_r), _const(canal_r))
    spinous_y = _shrink(canal_y, -(canal_r + _u(rng, 12, 16)))
    spinous = Prism(zero, spinous_y, _const(_u(rng, 3, 5)), _const(_u(rng, 10, 16)))
    para_y = _shrink(canal_y, -_u(rng, 8, 14))
    para_x, para_a, para_b = _u(rng, 28, 36), _u(rng, 20, 26), _u(rng, 18, 24)
    paraspinal = [Prism(_const(s * para_x), para_y, _const(para_a), _const(para_b)) for s in (-1, 1)]
    # psoas: from about L1 (z_psoas) down, growing from 6 mm to r_psoas and moving laterally as it grows
    z_psoas, r_psoas = z_bif + _u(rng, 110, 150), _u(rng, 16, 24)
    psoas = []
    for s in (-1, 1):
        x_top, x_bottom = s * (vb_rx + 4 + 0.8 * 6), s * (vb_rx + 4 + 0.8 * r_psoas)
        cx = Curve(x_top, slope=-s * 0.096, z_ref=z_psoas, lo=min(x_top, x_bottom), hi=max(x_top, x_bottom))
        r = Curve(6.0, slope=-0.12, z_ref=z_psoas, lo=5.0, hi=r_psoas)
        psoas.append(Prism(cx, _shrink(ys, _u(rng, 0, 4)), r, r, z1=z_psoas))
    muscle = values["muscle"]
    layers = [Layer(f"paraspinal_{n}", p, Tissue.MUSCLE, muscle, clip=trunk.wall) for n, p in enumerate(paraspinal)]
    layers += [Layer(f"psoas_{n}", p, Tissue.MUSCLE, muscle) for n, p in enumerate(psoas)]
    layers += [
        Layer("vertebral_cortex", vertebra, Tissue.BONE, values["cortex"]),
        Layer("vertebral_body", cancellous, Tissue.BONE, values["cancellous"]),
        Layer("discs", discs, Tissue.FLUID, values["disc"]),
        Layer("arch", arch, Tissue.BONE, values["arch"]),
        Layer("spinous_process", spinous, Tissue.BONE, values["arch"], clip=trunk.wall),
        Layer("canal", canal, Tissue.FLUID, values["csf"]),
    ]
    return _Spine(ys, vb_rx, vb_ry, [vertebra, arch, spinous, *paraspinal, *psoas]), layers


def _great_vessels(rng: np.random.Generator, spine: _Spine, z_bif: float) -> list[Vessel]:
    """Aorta bifurcating at ``z_bif`` into the common iliac arteries; IVC joining the iliac veins below."""
    ys, vb_ry = spine.y, spine.ry
    r_ao = _u(rng, 9, 12.5)
    ao_x = _wobble(rng, _u(rng, 8, 18), (2, 5))
    ao_y = _shrink(ys, vb_ry + r_ao + _u(rng, 2, 6))
    vessels = [Vessel("aorta", "artery", Prism(ao_x, ao_y, _const(r_ao), _const(r_ao), z0=z_bif, tilt=True), 3.0)]
    r_cava = _u(rng, 9, 12)
    cava_a, cava_b = r_cava * _u(rng, 1.1, 1.3), r_cava * _u(rng, 0.65, 0.85)
    cava_x = _wobble(rng, -_u(rng, 20, 30), (1, 4))
    cava_y = _shrink(ys, vb_ry + cava_b + _u(rng, 0, 6))
    z_cava = z_bif - _u(rng, 10, 20)
    cava = Prism(cava_x, cava_y, _const(cava_a), _const(cava_b), z0=z_cava, tilt=True)
    vessels.append(Vessel("ivc", "vein", cava, 2.0))
    # the iliac vessels diverge laterally going down, then run straight (clamped x)
    x_bif, y_bif = float(ao_x(np.array(z_bif))), float(ao_y(np.array(z_bif)))
    for side, s in (("right", -1), ("left", 1)):
        r = _u(rng, 4.5, 6.5)
        lim = _u(rng, 55, 70)
        cx = Curve(
            x_bif,
            slope=-s * _u(rng, 0.35, 0.55),
            z_ref=z_bif,
            lo=-lim if s < 0 else -np.inf,
            hi=lim if s > 0 else np.inf,
        )
        cy = Curve(y_bif, slope=_u(rng, 0.05, 0.15), z_ref=z_bif)
        tube = Prism(cx, cy, _const(r), _const(r), z1=z_bif, tilt=True)
        vessels.append(Vessel(f"{side}_iliac_artery", "artery", tube, 1.5))
    x_cv, y_cv = float(cava_x(np.array(z_cava))), float(cava_y(np.array(z_cava)))
    for side, slope in (("right", 0.35), ("left", -0.6)):
        r = _u(rng, 5.5, 7.5)
        lim = _u(rng, 50, 65)
        cx = Curve(x_cv, slope=slope * _u(rng, 0.8, 1.2), z_ref=z_cava, lo=-lim, hi=lim)
        cy = Curve(y_cv, slope=_u(rng, 0.03, 0.1), z_ref=z_cava)
        tube = Prism(cx, cy, _const(r), _const(r), z1=z_cava, tilt=True)
        vessels.append(Vessel(f"{side}_iliac_vein", "vein", tube, 1.0))
    return vessels


def _kidneys(rng: np.random.Generator, spine: _Spine, z_bif: float) -> list[Ellipsoid]:
    """Two kidney-like ellipsoids beside the spine, well above the bifurcation."""
    kidneys = []
    z_kidney = z_bif + _u(rng, 70, 110)
    for s in (-1, 1):
        y = float(spine.y(np.array(z_kidney)))
        center = np.array([s * _u(rng, 64, 80), y - _u(rng, -5, 8), z_kidney + _u(rng, -10, 10)])
        spin = rotation_z(s * np.radians(_u(rng, 15, 35)))  # hilum turned anteromedially
        rot = spin @ rotation_about(np.array([1.0, 0, 0]), np.radians(_u(rng, -10, 10)))
        axes = np.array([_u(rng, 24, 30), _u(rng, 20, 26), _u(rng, 45, 58)])
        kidneys.append(Ellipsoid(center, axes, rot, Perturbation.random(rng, 0.02, k=4)))
    return kidneys


def _bowel(rng: np.random.Generator, trunk: _Trunk, avoid: list[Shape]) -> list[Ellipsoid]:
    """One or two lobulated bowel-like blobs in the anterior visceral space, clear of ``avoid``."""
    sphere = fibonacci_sphere(96)
    bowel: list[Ellipsoid] = []
    for _ in range(int(rng.integers(1, 3))):
        for _attempt in range(40):
            axes = np.array([_u(rng, 18, 35), _u(rng, 15, 30), _u(rng, 25, 60)])
            x = _u(rng, -0.45, 0.45) * trunk.inner_a
            center = np.array([x, _u(rng, -0.75 * trunk.inner_b, 0.0), _u(rng, -80, 80)])
            shape = Ellipsoid(center, axes, rotation_z(_u(rng, 0, np.pi)), Perturbation.random(rng, 0.08, k=5))
            surface = center + (sphere * axes * 1.3) @ shape.rotation.T
            if _clear_of(surface, avoid + bowel, 4.0) and np.all(trunk.visceral.sdf_points(surface) < -3):
                bowel.append(shape)
                break
    return bowel


def _small_vessels(rng: np.random.Generator, trunk: _Trunk, spine: _Spine, avoid: list[Shape]) -> list[Vessel]:
    """4-8 tubes of 3-10 mm (mesenteric, gonadal...) with meandering centrelines, most through every slice."""
    zs = np.arange(-200.0, 201.0, 10.0)
    vessels = []
    for n in range(int(rng.integers(4, 9))):
        for _attempt in range(40):
            r = _u(rng, 1.5, 5.0)
            x0 = _u(rng, -0.6, 0.6) * trunk.inner_a
            y0 = _u(rng, -0.7 * trunk.inner_b, float(spine.y.c0) - spine.ry - 10)
            cx = _wobble(rng, x0, (3, 10), (120, 300), slope=_u(rng, -0.15, 0.15))
            cy = _wobble(rng, y0, (3, 10), (120, 300), slope=_u(rng, -0.15, 0.15))
            z0, z1 = -np.inf, np.inf
            if rng.random() < 0.4:
                z0 = _u(rng, -200, 50)
                z1 = z0 + _u(rng, 100, 250)
            tube = Prism(cx, cy, _const(r), _const(r), z0=z0, z1=z1, tilt=True)
            line = _centreline_points(tube, zs)
            if len(line) and _clear_of(line, avoid, r + 3.0) and np.all(trunk.visceral.sdf_points(line) < -(r + 5.0)):
                vessels.append(Vessel(f"vessel_{n}", "artery" if rng.random() < 0.5 else "vein", tube, 0.7))
                break
    return vessels


def sample_anatomy(rng: np.random.Generator, modality: str) -> Anatomy:
    """Draw one case's anatomy and intensities."""
    values, phase = _tissue_values(rng, modality)
    trunk, layers = _body_wall(rng, values)
    z_bif = _u(rng, -40, 20)
    spine, spine_layers = _spine_and_back(rng, values, trunk, z_bif)
    layers += spine_layers
    vessels = _great_vessels(rng, spine, z_bif)
    kidneys = _kidneys(rng, spine, z_bif)
    bowel = _bowel(rng, trunk, [v.shape for v in vessels] + kidneys + spine.solids)
    texture = 4.0 if modality == "ct" else 30.0
    for n, o in enumerate(kidneys):
        tex = Texture.random(rng, texture, (6, 20), n=24)
        layers.append(Layer(f"kidney_{n}", o, Tissue.ORGAN, values["kidney"], texture=tex))
    for n, o in enumerate(bowel):
        tex = Texture.random(rng, 2 * texture, (4, 15), n=24)
        layers.append(Layer(f"bowel_{n}", o, Tissue.ORGAN, values["bowel"], texture=tex))
    n_great = len(vessels)
    vessels += _small_vessels(rng, trunk, spine, [v.shape for v in vessels] + kidneys + bowel + spine.solids)
    for v in vessels:
        value = _vessel_value(rng, values, v.kind, v.name.startswith("vessel_"), modality)
        layers.append(Layer(v.name, v.shape, Tissue.VESSEL, value))
    return Anatomy(
        layers=layers,
        visceral=trunk.visceral,
        obstacles=[*spine.solids, *kidneys, *bowel, *(v.shape for v in vessels)],
        vessels=vessels,
        values={k: v for k, v in values.items() if not k.startswith("_")},
        phase=phase,
        meta={"z_bifurcation_mm": round(z_bif, 1), "n_small_vessels": len(vessels) - n_great, "n_bowel": len(bowel)},
    )


# -- rendering ----------------------------------------------------------------------------------------
def paint(
    image: np.ndarray,
    tissue: np.ndarray | None,
    block: tuple[slice, slice, slice],
    occ: np.ndarray,
    value: float | np.ndarray,
    label: int,
) -> None:
    """Mix ``value`` into ``image[block]`` by occupancy (partial volume) and label voxels at least half in."""
    view = image[block]
    view += occ * (value - view)
    if tissue is not None:
        tissue[block][occ >= 0.5] = label


def world_z_range(geometry: ImageGeometry) -> tuple[float, float]:
    lo, hi = geometry.world_bounds()
    return float(lo[2]), float(hi[2])


def render_anatomy(anatomy: Anatomy, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Paint the anatomy onto a grid: (image float32, tissue uint8), index order (i, j, k)."""
    image = np.full(geometry.shape, anatomy.values["air"], dtype=np.float32)
    tissue = np.zeros(geometry.shape, dtype=np.uint8)
    zlim = world_z_range(geometry)
    width = edge_width(geometry)
    for layer in anatomy.layers:
        lo, hi = layer.shape.bounds(zlim)
        if layer.clip is not None:
            clo, chi = layer.clip.bounds(zlim)
            lo, hi = np.maximum(lo, clo), np.minimum(hi, chi)
        if np.any(lo > hi):
            continue
        block = block_of_box(geometry, lo - width, hi + width)
        if block is None:
            continue
        for chunk in split_block(block):
            x, y, z = block_world(geometry, chunk, dtype=np.float32)
            w = edge_width(geometry, layer.shape.normals(x, y, z)) if isinstance(layer.shape, Ellipsoid) else width
            occ = soft_occupancy(layer.shape.sdf(x, y, z), w)
            if layer.clip is not None:
                occ = np.minimum(occ, soft_occupancy(layer.clip.sdf(x, y, z), width))
            if not occ.any():
                continue
            value: float | np.ndarray = layer.value
            if layer.texture is not None:  # only where the layer shows: textures are the costly part
                where = occ > 0
                pts = np.stack([np.broadcast_to(c, occ.shape)[where] for c in (x, y, z)], axis=-1)
                value = np.full(occ.shape, layer.value, np.float32)
                value[where] += layer.texture(pts).astype(np.float32)
            paint(image, tissue, chunk, occ, value, int(layer.tissue))
    return image, tissue
