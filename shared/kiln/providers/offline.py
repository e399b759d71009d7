"""The offline provider: procedural PNG images and GLB models, no network, no account.

Kiln's default generator on the local stack and in tests. Its output is real: a PNG that
Pillow decodes and a binary glTF 2.0 file that three.js or trimesh loads. The prompt's
colour words (``red``, ``teal``, ``gold``…) colour the subject and its shape words choose
it (``sphere``/``ball``, ``cube``/``box``, ``pyramid``/``cone``, ``torus``/``ring``,
``cylinder``/``tower``, ``star``; a sphere otherwise). The same prompt and options give
the same bytes; ``options["seed"]`` changes the background and the default colour.

Work is spread over ``image_seconds`` / ``model_seconds`` with realistic stages (images:
``queued`` → ``generating``; models: ``generating`` → ``meshing`` → ``texturing`` →
``packaging``), at most about four progress reports a second, checking ``should_stop``
after every wait.

Test hooks, so tests and demos can show failures through the real pipeline:

- a prompt containing ``[fail:permanent]`` raises ``PermanentError(code="content_refused")``,
  as when a provider refuses a prompt;
- a prompt containing ``[fail:retryable]`` raises
  ``RetryableError(code="provider_unavailable")``, as when a provider is briefly down;
- a prompt containing ``[hang]`` never finishes (until the job is stopped), as a provider
  that stops answering.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
import random
import re
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from kiln.errors import CanceledError, PermanentError, RetryableError
from kiln.providers.base import Artifact, GenerationRequest, ProgressCallback

PROVENANCE = {"provider": "offline", "model": "procedural-v1"}
TICK_SECONDS = 0.25  # at most ~4 progress reports a second
ASPECTS = {"1:1": (512, 512), "4:3": (512, 384), "3:4": (384, 512),
           "16:9": (512, 288), "9:16": (288, 512)}
RGB = tuple[int, int, int]
COLOURS: dict[str, RGB] = {
    "red": (220, 38, 38), "green": (22, 163, 74), "blue": (37, 99, 235),
    "yellow": (250, 204, 21), "orange": (249, 115, 22), "purple": (147, 51, 234),
    "violet": (139, 92, 246), "pink": (236, 72, 153), "magenta": (217, 70, 239),
    "white": (245, 245, 245), "black": (24, 24, 27), "gray": (128, 128, 128),
    "grey": (128, 128, 128), "brown": (133, 77, 14), "cyan": (6, 182, 212),
    "teal": (13, 148, 136), "gold": (212, 175, 55), "silver": (192, 192, 200),
    "navy": (30, 58, 138), "lime": (132, 204, 22),
}
SHAPES: dict[str, str] = {
    **dict.fromkeys(("sphere", "ball", "planet", "orb"), "sphere"),
    **dict.fromkeys(("cube", "box", "crate", "block"), "cube"),
    **dict.fromkeys(("pyramid", "cone", "triangle"), "cone"),
    **dict.fromkeys(("torus", "donut", "doughnut", "ring"), "torus"),
    **dict.fromkeys(("cylinder", "can", "tower", "pillar"), "cylinder"),
    "star": "star",
}
_FAILURES: dict[str, Callable[[], Exception]] = {
    "[fail:permanent]": lambda: PermanentError(
        "The provider refused this prompt.", code="content_refused"),
    "[fail:retryable]": lambda: RetryableError(
        "The provider is unavailable right now.", code="provider_unavailable"),
}


@dataclass(frozen=True)
class Subject:
    """What the prompt asks for, as far as this generator understands it."""

    shape: str
    colour: RGB
    colour_name: str
    seed: int


class OfflineProvider:
    """Procedural PNG and GLB generation with a simulated duration and progress."""

    name = "offline"

    def __init__(
        self,
        image_seconds: float = 3.0,
        model_seconds: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.image_seconds = image_seconds
        self.model_seconds = model_seconds
        self._sleep = sleep
        self._clock = clock

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        should_stop: Callable[[], bool],
    ) -> Artifact:
        """Make the image or model the request describes (see the module docstring)."""
        for token, error in _FAILURES.items():
            if token in request.prompt.lower():
                raise error()
        if "[hang]" in request.prompt.lower():
            _hang(should_stop, self._sleep)
        subject = read_prompt(request.prompt, request.options)
        if request.kind == "image":
            pacer = _Pacer(self.image_seconds, on_progress, should_stop, self._sleep, self._clock)
            return _make_image(subject, request, pacer)
        if request.kind == "model":
            pacer = _Pacer(self.model_seconds, on_progress, should_stop, self._sleep, self._clock)
            return _make_model(subject, pacer)
        raise PermanentError(f"Unknown kind {request.kind!r}.", code="invalid_kind")


def _hang(should_stop: Callable[[], bool], sleep: Callable[[float], None]) -> NoReturn:
    """``[hang]``: a provider that never answers; only a stop (cancel, lost lease) ends it."""
    while not should_stop():
        sleep(TICK_SECONDS)
    raise CanceledError("Generation was stopped.")


def _make_image(subject: Subject, request: GenerationRequest, pacer: _Pacer) -> Artifact:
    size = ASPECTS.get(str(request.options.get("aspectRatio", "1:1")))
    if size is None:
        raise PermanentError("Unsupported aspect ratio.", code="invalid_options")
    pacer.advance("queued", 0)
    pacer.advance("queued", 10)
    data = _draw_image(subject, request.prompt, size)
    pacer.advance("generating", 100)
    return Artifact.from_bytes("image", data, provenance=dict(PROVENANCE))


def _make_model(subject: Subject, pacer: _Pacer) -> Artifact:
    pacer.advance("generating", 0)
    mesh = _build_mesh(subject.shape)
    pacer.advance("generating", 40)
    pacer.advance("meshing", 70)
    thumbnail = _render_thumbnail(mesh, subject.colour)
    pacer.advance("texturing", 90)
    data = _pack_glb(mesh, subject)
    pacer.advance("packaging", 100)
    return Artifact.from_bytes("model", data, thumbnail=thumbnail, provenance=dict(PROVENANCE))


class _Pacer:
    """Spreads progress over a duration; the time real work takes counts towards it."""

    def __init__(self, seconds: float, on_progress: ProgressCallback,
                 should_stop: Callable[[], bool], sleep: Callable[[float], None],
                 clock: Callable[[], float]) -> None:
        self._seconds, self._on_progress, self._should_stop = seconds, on_progress, should_stop
        self._sleep, self._clock = sleep, clock
        self._start = clock()
        self._percent = 0
        self._last: tuple[int, str] | None = None

    def advance(self, stage: str, to: int) -> None:
        """Report ``stage`` from the current percent up to ``to``, on schedule, in ticks."""
        start = self._percent
        ticks = max(1, math.ceil(self._seconds * (to - start) / 100 / TICK_SECONDS))
        for tick in range(1, ticks + 1):
            percent = start + (to - start) * tick // ticks
            wait = self._start + self._seconds * percent / 100 - self._clock()
            if wait > 0:
                self._sleep(wait)
            if self._should_stop():
                raise CanceledError("Generation was stopped.")
            if (percent, stage) != self._last:
                self._on_progress(percent, stage)
                self._last = (percent, stage)
        self._percent = to


def read_prompt(prompt: str, options: Mapping[str, Any]) -> Subject:
    """The shape and colour named first in the prompt; a seeded colour when none is."""
    words = re.findall(r"[a-z]+", prompt.lower())
    seed = options.get("seed")
    if not isinstance(seed, int):
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    colour_name = _first(words, COLOURS)
    hue = colorsys.hsv_to_rgb((seed % 360) / 360, 0.65, 0.85)
    colour = COLOURS[colour_name] if colour_name else (
        round(hue[0] * 255), round(hue[1] * 255), round(hue[2] * 255))
    return Subject(SHAPES[_first(words, SHAPES) or "sphere"], colour, colour_name, seed)


def _first(words: list[str], table: Mapping[str, object]) -> str:
    """The first word (or its singular: boxes → box) that is a key of ``table``."""
    for word in words:
        for form in (word, word.removesuffix("s"), word.removesuffix("es")):
            if form in table:
                return form
    return ""


# --- images ---------------------------------------------------------------------------


def _draw_image(subject: Subject, prompt: str, size: tuple[int, int]) -> bytes:
    """The subject over a seeded gradient, with the prompt written small at the bottom."""
    scale = 2  # draw at twice the size, then downsample: smooth edges
    width, height = size[0] * scale, size[1] * scale
    image = _gradient(width, height, random.Random(subject.seed))
    radius = 0.32 * min(width, height)
    _draw_shape(ImageDraw.Draw(image), subject.shape, (width / 2, height / 2), radius,
                subject.colour)
    image = image.resize(size, Image.Resampling.LANCZOS)
    _caption(image, prompt)
    return _png(image)


def _gradient(width: int, height: int, rng: random.Random) -> Image.Image:
    """A vertical gradient from a light tint to a darker, shifted hue."""
    hue = rng.random()
    top = np.array(colorsys.hsv_to_rgb(hue, 0.25, 0.95)) * 255
    bottom = np.array(colorsys.hsv_to_rgb((hue + 0.1 + 0.3 * rng.random()) % 1, 0.5, 0.4)) * 255
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    rows = (top * (1 - t) + bottom * t).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows, (height, width, 3))))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float],
                r: float, colour: RGB) -> None:
    x, y = centre
    edge = (int(colour[0] * 0.6), int(colour[1] * 0.6), int(colour[2] * 0.6))
    width = max(2, round(r * 0.04))
    if shape == "sphere":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=edge, width=width)
    elif shape == "torus":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=round(r * 0.4))
    elif shape == "cylinder":
        draw.rounded_rectangle((x - 0.55 * r, y - r, x + 0.55 * r, y + r), radius=0.2 * r,
                               fill=colour, outline=edge, width=width)
    else:
        draw.polygon(_outline(shape, x, y, r), fill=colour, outline=edge, width=width)


def _outline(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "cube":
        s = 0.8 * r
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if shape == "cone":
        return [(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)]
    points = []  # a five-pointed star
    for i in range(10):
        angle, reach = -math.pi / 2 + i * math.pi / 5, r if i % 2 == 0 else 0.45 * r
        points.append((x + reach * math.cos(angle), y + reach * math.sin(angle)))
    return points


def _caption(image: Image.Image, text: str) -> None:
    """Write ``text`` centred near the bottom, cut with an ellipsis when too wide."""
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    room = image.width - 16
    if draw.textlength(text, font=font) > room:
        while text and draw.textlength(text + "…", font=font) > room:
            text = text[:-1]
        text += "…"
    x = (image.width - draw.textlength(text, font=font)) / 2
    draw.text((x, image.height - 22), text, font=font, fill=(255, 255, 255),
              stroke_width=2, stroke_fill=(0, 0, 0))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# --- models ---------------------------------------------------------------------------

Part = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]


@dataclass(frozen=True)
class _Mesh:
    """Triangles: positions and unit normals (float32, n x 3) and indices (uint32, flat)."""

    positions: NDArray[np.float32]
    normals: NDArray[np.float32]
    indices: NDArray[np.uint32]


def _build_mesh(shape: str) -> _Mesh:
    """The shape's parts joined into one indexed triangle mesh."""
    parts = _PARTS[shape]()
    offsets = np.cumsum([0] + [len(pos) for pos, _, _ in parts])
    return _Mesh(
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


def _pack_glb(mesh: _Mesh, subject: Subject) -> bytes:
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


def _render_thumbnail(mesh: _Mesh, colour: RGB, size: int = 256) -> bytes:
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
    return _png(image.resize((size, size), Image.Resampling.LANCZOS))
