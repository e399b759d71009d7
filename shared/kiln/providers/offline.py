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

Planted failures for tests and demos (``[fail:…]``, ``[hang]``) are not here: they live in
the development package (``kiln_dev.providers``), which is never deployed.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kiln.core.errors import CanceledError, PermanentError
from kiln.providers.base import Artifact, GenerationRequest, ProgressCallback
from kiln.providers.procedural_mesh import build_mesh, pack_glb, png_bytes, render_thumbnail

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
        subject = read_prompt(request.prompt, request.options)
        if request.kind == "image":
            pacer = _Pacer(self.image_seconds, on_progress, should_stop, self._sleep, self._clock)
            return _make_image(subject, request, pacer)
        if request.kind == "model":
            pacer = _Pacer(self.model_seconds, on_progress, should_stop, self._sleep, self._clock)
            return _make_model(subject, pacer)
        raise PermanentError(f"Unknown kind {request.kind!r}.", code="invalid_kind")


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
    mesh = build_mesh(subject.shape)
    pacer.advance("generating", 40)
    pacer.advance("meshing", 70)
    thumbnail = render_thumbnail(mesh, subject.colour)
    pacer.advance("texturing", 90)
    data = pack_glb(mesh, subject)
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
    return png_bytes(image)


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
