"""Procedural meshes for the offline generator: shapes, a glTF 2.0 GLB writer, thumbnails.

Split from ``kiln.providers.offline`` (which reads the prompt and paces the work) so each
module stays one concept: this one turns a shape and a colour into bytes.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from kiln.providers.offline import RGB, Subject


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# --- models ---------------------------------------------------------------------------

Part = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]


@dataclass(frozen=True)
class Mesh:
    """Triangles: positions and unit normals (float32, n x 3) and indices (uint32, flat)."""

    positions: NDArray[np.float32]
    normals: NDArray[np.float32]
    indices: NDArray[np.uint32]


def build_mesh(shape: str) -> Mesh:
    """The shape's parts joined into one indexed triangle mesh."""
    parts = _PARTS[shape]()
    offsets = np.cumsum([0] + [len(pos) for pos, _, _ in parts])
    return Mesh(
        positions=np.concatenate([p for p, _, _ in parts]).astype(np.float32),
        normals=np.concatenate([n for _, n, _ in parts]).astype(np.float32),
        indices=np.concatenate([_tidy(p) + o for p, o in zip(parts, offsets, strict=False)])
        .astype(np.uint32).ravel(),
    )


def _tidy(part: Part) -> NDArray[np.int64]:
    """Drop zero-area triangles and wind the rest counter-clockwise seen from outside."""
    pos, nrm, tris = part
    corners = pos[tris]
    face = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    keep = np.linalg.norm(face, axis=1) > 1e-9
    tris, face = tris[keep], face[keep]
    flip = np.einsum("ij,ij->i", face, nrm[tris].sum(axis=1)) < 0
    tris[flip] = tris[flip][:, ::-1]
    return tris


def _grid(rows: int, cols: int) -> NDArray[np.int64]:
    """Two triangles per cell of a (rows+1) x (cols+1) vertex grid."""
    a = (np.arange(rows)[:, None] * (cols + 1) + np.arange(cols)).ravel()
    b = a + cols + 1
    return np.concatenate([np.stack([a, b, a + 1], 1), np.stack([a + 1, b, b + 1], 1)])


def _lathe(profile: NDArray[np.float64], normals: NDArray[np.float64],
           segments: int = 64) -> Part:
    """Revolve (radius, height) points and their 2-D normals about the Y axis."""
    theta = np.linspace(0.0, 2 * np.pi, segments + 1)

    def revolve(pairs: NDArray[np.float64]) -> NDArray[np.float64]:
        r, y = pairs[:, :1], np.broadcast_to(pairs[:, 1:], (len(pairs), len(theta)))
        return np.stack([r * np.cos(theta), y, r * np.sin(theta)], axis=-1).reshape(-1, 3)

    return revolve(profile), revolve(normals), _grid(len(profile) - 1, segments)


def _line(r0: float, y0: float, r1: float, y1: float, normal: tuple[float, float],
          steps: int = 16) -> Part:
    t = np.linspace(0.0, 1.0, steps + 1)[:, None]
    profile = np.hstack([r0 + (r1 - r0) * t, y0 + (y1 - y0) * t])
    return _lathe(profile, np.tile(normal, (steps + 1, 1)))


def _sphere() -> list[Part]:
    phi = np.linspace(0.0, np.pi, 33)
    arc = np.stack([np.sin(phi), np.cos(phi)], 1)
    return [_lathe(arc, arc)]


def _torus() -> list[Part]:
    theta = np.linspace(0.0, 2 * np.pi, 33)
    circle = np.stack([np.cos(theta), np.sin(theta)], 1)
    return [_lathe(circle * 0.3 + [0.7, 0.0], circle)]


def _cone() -> list[Part]:
    slope = (2 / math.sqrt(5), 1 / math.sqrt(5))
    return [_line(0.0, 1.0, 1.0, -1.0, slope), _line(1.0, -1.0, 0.0, -1.0, (0.0, -1.0), 8)]


def _cylinder() -> list[Part]:
    return [_line(0.6, -1.0, 0.6, 1.0, (1.0, 0.0)), _line(0.6, 1.0, 0.0, 1.0, (0.0, 1.0), 8),
            _line(0.6, -1.0, 0.0, -1.0, (0.0, -1.0), 8)]


def _cube(n: int = 16) -> list[Part]:
    u, v = (a.ravel() for a in np.meshgrid(*[np.linspace(-1.0, 1.0, n + 1)] * 2))
    parts = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            pos, nrm = np.zeros((len(u), 3)), np.zeros((len(u), 3))
            pos[:, axis], pos[:, (axis + 1) % 3], pos[:, (axis + 2) % 3] = sign, u, v
            nrm[:, axis] = sign
            parts.append((pos, nrm, _grid(n, n)))
    return parts


def _star(depth: float = 0.25) -> list[Part]:
    """A five-pointed star facing +Z, extruded."""
    angle = np.pi / 2 + np.arange(10) * np.pi / 5
    reach = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    rim = np.stack([reach * np.cos(angle), reach * np.sin(angle)], 1)
    nxt = np.roll(rim, -1, axis=0)
    out = np.stack([nxt[:, 1] - rim[:, 1], rim[:, 0] - nxt[:, 0]], 1)
    out *= np.sign(np.einsum("ij,ij->i", out, rim))[:, None] / np.linalg.norm(out, axis=1)[:, None]
    fan = np.stack([np.zeros(10), np.arange(1, 11), np.roll(np.arange(1, 11), -1)], 1)
    parts = []
    for z in (-depth, depth):
        pos = np.hstack([np.vstack([[0.0, 0.0], rim]), np.full((11, 1), z)])
        parts.append((pos, np.tile([0.0, 0.0, np.sign(z)], (11, 1)), fan.astype(np.int64)))
    quad = np.stack([rim, nxt, nxt, rim], 1).reshape(-1, 2)
    zs = np.tile([-depth, -depth, depth, depth], 10)[:, None]
    base = np.arange(10)[:, None] * 4
    sides = np.vstack([base + np.array([0, 1, 2]), base + np.array([0, 2, 3])])
    parts.append((np.hstack([quad, zs]), np.hstack([np.repeat(out, 4, 0), np.zeros((40, 1))]),
                  sides.astype(np.int64)))
    return parts


_PARTS: dict[str, Callable[[], list[Part]]] = {
    "sphere": _sphere, "torus": _torus, "cone": _cone, "cylinder": _cylinder,
    "cube": _cube, "star": _star,
}


def pack_glb(mesh: Mesh, subject: Subject) -> bytes:
    """A binary glTF 2.0 file: one mesh, one PBR material in the subject's colour."""
    blobs = [mesh.positions.tobytes(), mesh.normals.tobytes(), mesh.indices.tobytes()]
    offsets = np.cumsum([0] + [len(b) for b in blobs])  # float32/uint32: 4-byte aligned
    views = [{"buffer": 0, "byteOffset": int(offsets[i]), "byteLength": len(blobs[i]),
              "target": 34963 if i == 2 else 34962} for i in range(3)]
    count = len(mesh.positions)
    linear = [round(_linear(c), 4) for c in subject.colour] + [1.0]
    doc = {
        "asset": {"version": "2.0", "generator": "Kiln offline provider (procedural-v1)"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": subject.shape}],
        "meshes": [{"name": subject.shape, "primitives": [{
            "attributes": {"POSITION": 0, "NORMAL": 1}, "indices": 2, "material": 0, "mode": 4}]}],
        "materials": [{"name": subject.colour_name or "procedural", "pbrMetallicRoughness": {
            "baseColorFactor": linear, "roughnessFactor": 0.5,
            "metallicFactor": 1.0 if subject.colour_name in ("gold", "silver") else 0.0}}],
        "buffers": [{"byteLength": int(offsets[-1])}],
        "bufferViews": views,
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": count, "type": "VEC3",
             "min": mesh.positions.min(0).tolist(), "max": mesh.positions.max(0).tolist()},
            {"bufferView": 1, "componentType": 5126, "count": count, "type": "VEC3"},
            {"bufferView": 2, "componentType": 5125, "count": len(mesh.indices),
             "type": "SCALAR"},
        ],
    }
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    binary = b"".join(blobs)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<4sII", b"glTF", 2, total),
                     struct.pack("<II", len(text), 0x4E4F534A), text,
                     struct.pack("<II", len(binary), 0x004E4942), binary])


def _linear(channel: int) -> float:
    """sRGB 0-255 → linear 0-1 (glTF colour factors are linear)."""
    c = channel / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def render_thumbnail(mesh: Mesh, colour: RGB, size: int = 256) -> bytes:
    """A shaded picture of the mesh seen from above-left (painter's algorithm), as PNG."""
    yaw, pitch = -0.6, 0.45  # turned so the front face catches the light
    turn = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0],
                     [-math.sin(yaw), 0, math.cos(yaw)]])
    tilt = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)],
                     [0, math.sin(pitch), math.cos(pitch)]])
    rotate = tilt @ turn
    pos = mesh.positions @ rotate.T
    tris = mesh.indices.reshape(-1, 3)
    normal = (mesh.normals @ rotate.T)[tris].mean(axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1), 1e-9)[:, None]
    light = np.array([-0.4, 0.6, 0.7]) / np.linalg.norm([-0.4, 0.6, 0.7])
    shade = 0.3 + 0.7 * np.clip(normal @ light, 0.0, 1.0)
    px = size * 2  # drawn at twice the size, then downsampled
    xy = pos[:, :2] / np.abs(pos[:, :2]).max() * (0.42 * px) * [1, -1] + px / 2
    image = Image.new("RGB", (px, px), (226, 229, 235))
    draw = ImageDraw.Draw(image)
    for t in np.argsort(pos[tris][:, :, 2].mean(axis=1)):  # far to near (camera on +Z)
        if normal[t, 2] > 0:
            fill = tuple(int(c * shade[t]) for c in colour)
            draw.polygon([(float(x), float(y)) for x, y in xy[tris[t]]], fill=fill, outline=fill)
    return png_bytes(image.resize((size, size), Image.Resampling.LANCZOS))
