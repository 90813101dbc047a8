"""Shapes defined in world LPS millimetres and the grid helpers that render them on any voxel grid.

Every structure of a phantom is an analytic (approximate) signed distance function of world points:
negative inside, positive outside, in mm near the surface. Rendering evaluates it at voxel centres of
a local index block, so the same anatomy appears on any spacing and any direction (flips,
permutations, oblique) without resampling, and structures cost time only where they are.

World coordinates of a block come back as three arrays that broadcast against each other: for an
axis-aligned direction each depends on one index axis only (1D broadcasting, cheap); for an oblique
direction they are full arrays.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from lnnode.geometry import ImageGeometry, box_world_to_index, index_box_to_slices

__all__ = [
    "Block",
    "block_of_box",
    "split_block",
    "block_world",
    "block_points",
    "edge_width",
    "world_spacing",
    "soft_occupancy",
    "Curve",
    "Shape",
    "Prism",
    "Ellipsoid",
    "Intersection",
    "Perturbation",
    "Texture",
    "ZSlabs",
    "fibonacci_sphere",
    "rotation_z",
    "rotation_about",
]

Block = tuple[slice, slice, slice]
Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


# -- grid helpers -------------------------------------------------------------------------------------
def block_of_box(geometry: ImageGeometry, lo: np.ndarray, hi: np.ndarray, pad: int = 1) -> Block | None:
    """The index block (voxel centres inside, plus ``pad`` voxels) of a world box; None if off-grid."""
    center, size = (np.asarray(lo) + np.asarray(hi)) / 2.0, np.asarray(hi) - np.asarray(lo)
    ilo, ihi = box_world_to_index(center, size, geometry)
    return index_box_to_slices(ilo - pad, ihi + pad, geometry.shape)


def split_block(block: Block, max_voxels: int = 4_000_000) -> Iterator[Block]:
    """Split a block along its longest axis into chunks of at most ``max_voxels`` (bounded memory)."""
    sizes = [s.stop - s.start for s in block]
    axis = int(np.argmax(sizes))
    per = max(1, int(np.prod(sizes)) // sizes[axis])
    step = max(1, max_voxels // per)
    for start in range(block[axis].start, block[axis].stop, step):
        out = list(block)
        out[axis] = slice(start, min(start + step, block[axis].stop))
        yield tuple(out)  # type: ignore[misc]


def block_world(geometry: ImageGeometry, block: Block, offset: np.ndarray | None = None, dtype=np.float64) -> Coords:
    """World x, y, z (LPS mm) of the voxel centres of a block (+ ``offset`` in index units), broadcastable."""
    m = geometry.direction_matrix * np.asarray(geometry.spacing)
    off = np.zeros(3) if offset is None else np.asarray(offset, dtype=float)
    out = []
    for r in range(3):
        acc: np.ndarray = np.asarray(geometry.origin[r], dtype=dtype)
        for a in range(3):
            if abs(m[r, a]) < 1e-9 * geometry.spacing[a]:  # exact zeros of axis-aligned directions
                continue
            idx = np.arange(block[a].start, block[a].stop, dtype=np.float64) + off[a]
            shape = [1, 1, 1]
            shape[a] = idx.size
            acc = acc + (m[r, a] * idx).astype(dtype).reshape(shape)
        out.append(np.asarray(acc, dtype=dtype).reshape([1, 1, 1]) if np.ndim(acc) == 0 else acc)
    return out[0], out[1], out[2]


def block_points(geometry: ImageGeometry, block: Block, offset: np.ndarray | None = None) -> np.ndarray:
    """World points (..., 3) of the voxel centres of a block (+ offset), full array, float64."""
    shape = tuple(s.stop - s.start for s in block)
    x, y, z = block_world(geometry, block, offset)
    return np.stack([np.broadcast_to(c, shape) for c in (x, y, z)], axis=-1)


def world_spacing(geometry: ImageGeometry) -> np.ndarray:
    """Voxel extent (mm) along world x, y, z: the spacing of the index axis nearest to each."""
    d = np.abs(geometry.direction_matrix)
    sp = np.asarray(geometry.spacing)
    return np.array([sp[int(np.argmax(d[r]))] for r in range(3)])


def edge_width(geometry: ImageGeometry, normals: np.ndarray | None = None) -> float | np.ndarray:
    """Width (mm) of the partial-volume ramp of a soft edge: the voxel's extent along the surface normal.

    Without normals: the mean in-plane voxel size, right for the surfaces that face sideways (body wall,
    vessels, vertebral cortex). With normals (..., 3): ``sum |n_w| s_w``, the support width of a voxel
    along the normal, so the tops of organs get the partial volume of thick slices.
    """
    s = world_spacing(geometry)
    if normals is None:
        return float((s[0] + s[1]) / 2.0)
    return (np.abs(normals) @ s).astype(np.float32)


def soft_occupancy(sd: np.ndarray, width: float) -> np.ndarray:
    """Fraction of a voxel inside a surface at signed distance ``sd`` (linear ramp over ``width``)."""
    return np.clip(0.5 - sd / width, 0.0, 1.0).astype(np.float32, copy=False)


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (n, 3) (deterministic)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about a unit axis (Rodrigues)."""
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


# -- curves and shapes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """A slowly varying function of z: ``c0 + slope * (z - z_ref) + sum(amp * sin(2 pi z / period + phase))``."""

    c0: float
    slope: float = 0.0
    z_ref: float = 0.0
    amps: tuple[float, ...] = ()
    periods: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()
    lo: float = -np.inf  # clamp of the value (e.g. a radius that grows then stops)
    hi: float = np.inf

    def __call__(self, z: np.ndarray) -> np.ndarray:
        v = self.c0 + self.slope * (z - self.z_ref)
        for a, p, ph in zip(self.amps, self.periods, self.phases, strict=True):
            v = v + a * np.sin(2 * np.pi * z / p + ph)
        return np.clip(v, self.lo, self.hi) if (self.lo > -np.inf or self.hi < np.inf) else v

    def deriv(self, z: np.ndarray) -> np.ndarray:
        d = np.full_like(np.asarray(z, dtype=float), self.slope)
        for a, p, ph in zip(self.amps, self.periods, self.phases, strict=True):
            d = d + a * 2 * np.pi / p * np.cos(2 * np.pi * z / p + ph)
        return d

    def bound(self, z0: float, z1: float) -> tuple[float, float]:
        """Lower and upper bound of the curve on [z0, z1] (finite ends)."""
        v = self(np.linspace(z0, z1, max(3, int((z1 - z0) / 2.0) + 1)))
        pad = 0.01 * (abs(self.slope) + sum(abs(a) for a in self.amps))  # between samples
        return float(v.min() - pad), float(v.max() + pad)


class Shape:
    """A solid in world space: ``sdf(x, y, z)`` (broadcastable arrays) and a world bounding box."""

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def bounds(self, zlim: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """World box (lo, hi) enclosing the solid within ``zlim`` (lo[2] > hi[2] when empty there)."""
        raise NotImplementedError

    def sdf_points(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=float)
        return self.sdf(p[..., 0], p[..., 1], p[..., 2])


def _ellipse_sd(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to the ellipse (u/a)^2 + (v/b)^2 = 1; exact for circles.

    First-order estimate (rho - 1) / |grad rho|: accurate near the outline, which is where it is used
    (soft edges, clearances); deep inside only its sign matters.
    """
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2)
    near = (rho - 1.0) * rho / np.maximum(grad, 1e-12)
    return np.where(rho > 0.5, near, (rho - 1.0) * np.minimum(a, b))


@dataclass(frozen=True)
class Prism(Shape):
    """A tube/cylinder along world z with an elliptical axial cross-section varying slowly with z.

    Centre ``(cx(z), cy(z))``, semi-axes ``a(z)`` (along the in-plane angle ``angle``) and ``b(z)``,
    capped to ``z0 <= z <= z1``. ``tilt`` scales the in-plane distance by the cosine of the
    centreline's tilt, so that a curving vessel keeps its clearance in 3D.
    """

    cx: Curve
    cy: Curve
    a: Curve
    b: Curve
    angle: float = 0.0
    z0: float = -np.inf
    z1: float = np.inf
    tilt: bool = False

    def sdf(self, x, y, z):
        dx, dy = x - self.cx(z), y - self.cy(z)
        if self.angle:
            c, s = np.cos(self.angle), np.sin(self.angle)
            dx, dy = c * dx + s * dy, -s * dx + c * dy
        sd = _ellipse_sd(dx, dy, self.a(z), self.b(z))
        if self.tilt:
            sd = sd / np.sqrt(1.0 + self.cx.deriv(z) ** 2 + self.cy.deriv(z) ** 2)
        if np.isfinite(self.z0):
            sd = np.maximum(sd, self.z0 - z)
        if np.isfinite(self.z1):
            sd = np.maximum(sd, z - self.z1)
        return sd

    def bounds(self, zlim):
        z0, z1 = max(zlim[0], self.z0), min(zlim[1], self.z1)
        if z0 > z1:
            return np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0])
        r = max(self.a.bound(z0, z1)[1], self.b.bound(z0, z1)[1])
        xl, xh = self.cx.bound(z0, z1)
        yl, yh = self.cy.bound(z0, z1)
        return np.array([xl - r, yl - r, z0]), np.array([xh + r, yh + r, z1])


@dataclass(frozen=True)
class Perturbation:
    """Low-frequency radial perturbation of a surface: ``g(u) = sum amp_k cos(pi f_k (w_k . u) + phase_k)``."""

    w: np.ndarray  # (K, 3) unit vectors
    freq: np.ndarray  # (K,)
    phase: np.ndarray  # (K,)
    amp: np.ndarray  # (K,)

    @classmethod
    def random(cls, rng: np.random.Generator, amplitude: float, k: int = 6, freq=(1.0, 3.0)) -> Perturbation:
        w = rng.normal(size=(k, 3))
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        # amplitude is the standard deviation of g over the sphere (about sqrt(sum amp^2 / 2))
        amp = rng.uniform(0.5, 1.0, k)
        amp *= amplitude * np.sqrt(2.0 / np.sum(amp**2))
        return cls(w, rng.uniform(*freq, k), rng.uniform(0, 2 * np.pi, k), amp)

    def __call__(self, u: np.ndarray) -> np.ndarray:
        proj = u @ self.w.T  # (..., K)
        return np.sum(self.amp * np.cos(np.pi * self.freq * proj + self.phase), axis=-1)

    @property
    def max(self) -> float:
        return float(np.sum(np.abs(self.amp)))


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """An ellipsoid (centre, semi-axes along the columns of ``rotation``), optionally lobulated.

    With a perturbation ``g`` the surface is ``rho = 1 + g(direction)`` in the ellipsoid's normalised
    frame; ``rho_eff = rho / (1 + g)`` is 1 on the surface, < 1 inside.
    """

    center: np.ndarray
    axes: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    perturb: Perturbation | None = None

    def normalised(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q, rho_eff): local coordinates divided by the semi-axes, and the effective radius."""
        q = ((p - self.center) @ self.rotation) / self.axes
        rho = np.linalg.norm(q, axis=-1)
        if self.perturb is not None:
            u = q / np.maximum(rho, 1e-12)[..., None]
            rho = rho / np.maximum(1.0 + self.perturb(u), 0.2)
        return q, rho

    def sdf_points(self, p):
        p = np.asarray(p, dtype=float)
        q, rho = self.normalised(p)
        grad = np.linalg.norm(q / self.axes, axis=-1) / np.maximum(np.linalg.norm(q, axis=-1), 1e-12)
        near = (rho - 1.0) / np.maximum(grad, 1e-12)
        return np.where(rho > 0.5, near, (rho - 1.0) * float(np.min(self.axes)))

    def sdf(self, x, y, z):
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        p = np.stack([np.broadcast_to(c, shape) for c in (x, y, z)], axis=-1)
        return self.sdf_points(p)

    def normals(self, x, y, z) -> np.ndarray:
        """Outward unit normals (..., 3) of the unperturbed ellipsoid's level surfaces (world)."""
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        p = np.stack([np.broadcast_to(c, shape) for c in (x, y, z)], axis=-1)
        g = (((p - self.center) @ self.rotation) / self.axes**2) @ self.rotation.T
        return g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)

    @property
    def radius(self) -> float:
        """Radius of a sphere about the centre that encloses the solid."""
        return float(np.max(self.axes) * (1.0 + (self.perturb.max if self.perturb else 0.0)))

    def bounds(self, zlim):
        r = self.radius
        lo, hi = self.center - r, self.center + r
        lo[2], hi[2] = max(lo[2], zlim[0]), min(hi[2], zlim[1])
        return lo, hi


@dataclass(frozen=True)
class ZSlabs(Shape):
    """Periodic slabs along z (e.g. intervertebral discs): thickness ``h`` every ``period`` mm."""

    period: float
    h: float
    phase: float

    def sdf(self, x, y, z):
        t = np.mod(z - self.phase, self.period)
        return np.abs(np.minimum(t, self.period - t)) - self.h / 2.0

    def bounds(self, zlim):
        return np.array([-np.inf, -np.inf, zlim[0]]), np.array([np.inf, np.inf, zlim[1]])


@dataclass(frozen=True)
class Intersection(Shape):
    """Points inside all of the shapes (max of signed distances)."""

    shapes: tuple[Shape, ...]

    def sdf(self, x, y, z):
        out = self.shapes[0].sdf(x, y, z)
        for s in self.shapes[1:]:
            out = np.maximum(out, s.sdf(x, y, z))
        return out

    def bounds(self, zlim):
        lo, hi = self.shapes[0].bounds(zlim)
        for s in self.shapes[1:]:
            lo2, hi2 = s.bounds(zlim)
            lo, hi = np.maximum(lo, lo2), np.minimum(hi, hi2)
        return lo, hi


@dataclass(frozen=True)
class Texture:
    """Smooth random texture (sum of plane waves), standard deviation ``amp``; defined in world mm."""

    k: np.ndarray  # (K, 3) wave vectors, rad/mm
    phase: np.ndarray  # (K,)
    amp: float

    @classmethod
    def random(cls, rng: np.random.Generator, amp: float, wavelength=(2.5, 8.0), n: int = 12) -> Texture:
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        k = d * (2 * np.pi / rng.uniform(*wavelength, n))[:, None]
        return cls(k, rng.uniform(0, 2 * np.pi, n), float(amp))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        if self.amp == 0.0:
            return np.zeros(p.shape[:-1])
        waves = np.cos(p @ self.k.T + self.phase)
        return self.amp * np.sqrt(2.0 / len(self.phase)) * waves.sum(axis=-1)
