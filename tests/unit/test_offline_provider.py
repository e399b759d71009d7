"""The offline provider: real, deterministic PNGs and GLBs on a simulated schedule."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pygltflib
import pytest
from numpy.typing import NDArray
from PIL import Image

from kiln.core.errors import CanceledError, PermanentError, RetryableError
from kiln.providers.base import Artifact, GenerationRequest, SyncProvider
from kiln.providers.offline import OfflineProvider
from kiln.runtime.artifacts import GlbValidator, PngValidator
from kiln_dev.providers import ScriptedOfflineProvider

RED, GREEN, BLUE = 0, 1, 2


class FakeTime:
    """A monotonic clock that moves only when something sleeps (or, optionally, is read)."""

    def __init__(self, tick_on_read: float = 0.0) -> None:
        self.now = 1000.0
        self.start = self.now
        self.sleeps: list[float] = []
        self.tick_on_read = tick_on_read

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        self.now += self.tick_on_read
        return self.now


class Progress:
    """Records ``on_progress`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def __call__(self, percent: int, stage: str) -> None:
        self.calls.append((percent, stage))

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(stage for _, stage in self.calls))


def generate(
    kind: str,
    prompt: str,
    options: Mapping[str, Any] | None = None,
    *,
    seconds: float = 0.0,
    clock: FakeTime | None = None,
    progress: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    provider_class: type[OfflineProvider] = OfflineProvider,
) -> tuple[bytes, Artifact]:
    clock = clock or FakeTime()
    provider = provider_class(image_seconds=seconds, model_seconds=seconds,
                              sleep=clock.sleep, clock=clock.monotonic)
    request = GenerationRequest("job-1", kind, prompt, dict(options or {}))
    artifact = provider.generate(request, progress or Progress(), should_stop)
    return b"".join(artifact.chunks), artifact


def image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def dominant(pixel: Any, channel: int) -> bool:
    """``channel`` of an RGB pixel clearly outweighs both others."""
    assert isinstance(pixel, tuple)
    others = [value for i, value in enumerate(pixel[:3]) if i != channel]
    return pixel[channel] > 120 and pixel[channel] > 2 * max(others)


def load_glb(data: bytes) -> tuple[pygltflib.GLTF2, NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Parse with pygltflib and read POSITION, NORMAL and indices out of the BIN chunk."""
    gltf = pygltflib.GLTF2.load_from_bytes(data)
    blob = gltf.binary_blob()
    primitive = gltf.meshes[0].primitives[0]

    def read(index: int, dtype: type, width: int) -> NDArray[Any]:
        accessor = gltf.accessors[index]
        view = gltf.bufferViews[accessor.bufferView]
        offset = (view.byteOffset or 0) + (accessor.byteOffset or 0)
        values: NDArray[Any] = np.frombuffer(blob, dtype, accessor.count * width, offset)
        return values.reshape(accessor.count, width)

    positions = read(primitive.attributes.POSITION, np.float32, 3)
    normals = read(primitive.attributes.NORMAL, np.float32, 3)
    return gltf, positions, normals, read(primitive.indices, np.uint32, 1).reshape(-1, 3)


# --- the port ------------------------------------------------------------------------


def test_is_a_sync_provider_named_offline() -> None:
    """Given the provider, then it satisfies the SyncProvider port under the name "offline"."""
    provider = OfflineProvider()
    assert isinstance(provider, SyncProvider)
    assert provider.name == "offline"


@pytest.mark.parametrize("kind", ["image", "model"])
def test_artifact_fields(kind: str) -> None:
    """Given a request, the artifact has the kind's content type, its size and provenance."""
    data, artifact = generate(kind, "a teal orb")
    assert artifact.content_type == {"image": "image/png", "model": "model/gltf-binary"}[kind]
    assert artifact.size == len(data) > 0
    assert artifact.provenance == {"provider": "offline", "model": "procedural-v1"}
    assert (artifact.thumbnail is not None) == (kind == "model")


def test_unknown_kind_is_refused() -> None:
    """Given a kind the provider does not make, then it raises PermanentError."""
    with pytest.raises(PermanentError):
        generate("video", "a red ball")


# --- images --------------------------------------------------------------------------


def test_red_sphere_is_red_at_the_centre() -> None:
    """Given "a red sphere", the decoded image's centre pixel is red-dominant."""
    picture = image(generate("image", "a red sphere")[0])
    assert dominant(picture.getpixel((256, 256)), RED)


def test_blue_cube_is_blue_at_the_centre_and_corner() -> None:
    """Given "a blue cube", the centre and a point a circle would miss are blue-dominant."""
    picture = image(generate("image", "a blue cube")[0])
    assert dominant(picture.getpixel((256, 256)), BLUE)
    assert dominant(picture.getpixel((376, 376)), BLUE)


def test_shape_words_change_the_drawing() -> None:
    """Given the same colour, a sphere misses the cube's corner and a ring leaves a hole."""
    sphere = image(generate("image", "a blue sphere")[0])
    ring = image(generate("image", "a blue ring")[0])
    assert not dominant(sphere.getpixel((376, 376)), BLUE)
    assert not dominant(ring.getpixel((256, 256)), BLUE)


@pytest.mark.parametrize(("ratio", "size"), [
    ("1:1", (512, 512)), ("4:3", (512, 384)), ("3:4", (384, 512)),
    ("16:9", (512, 288)), ("9:16", (288, 512)),
])
def test_image_size_follows_aspect_ratio(ratio: str, size: tuple[int, int]) -> None:
    """Given an aspectRatio, the PNG is that shape with a 512 long side and passes validation."""
    data, _ = generate("image", "a green cone", {"aspectRatio": ratio})
    assert Image.open(io.BytesIO(data)).size == size
    validator = PngValidator()
    validator.feed(data)
    assert validator.finish() == (*size, len(data))
    assert dominant(image(data).getpixel((size[0] // 2, size[1] // 2)), GREEN)


def test_unknown_aspect_ratio_is_refused() -> None:
    """Given an aspectRatio the provider cannot draw, then it raises invalid_options."""
    with pytest.raises(PermanentError) as caught:
        generate("image", "a red ball", {"aspectRatio": "2:1"})
    assert caught.value.code == "invalid_options"


def test_image_is_deterministic_and_the_seed_changes_it() -> None:
    """Given the same prompt and options, the bytes repeat; a different seed changes them."""
    first = generate("image", "an orange star", {"seed": 1})[0]
    assert generate("image", "an orange star", {"seed": 1})[0] == first
    assert generate("image", "an orange star", {"seed": 2})[0] != first


def test_prompt_is_written_at_the_bottom() -> None:
    """Given two prompts with one seed and subject, only the bottom band of pixels differs."""
    short = np.asarray(image(generate("image", "red ball", {"seed": 5})[0]), dtype=int)
    long = np.asarray(image(generate("image", "red ball in a field", {"seed": 5})[0]), dtype=int)
    assert np.array_equal(short[:480], long[:480])
    assert not np.array_equal(short[480:], long[480:])


# --- models --------------------------------------------------------------------------


def test_model_is_a_valid_glb() -> None:
    """Given a model request, the GLB passes GlbValidator and pygltflib reads consistent data."""
    data, _ = generate("model", "a red sphere")
    validator = GlbValidator()
    validator.feed(data)
    info = validator.finish()
    assert info.version == 2 and info.meshes == 1 and info.total_bytes == len(data)
    assert 20_000 < len(data) < 500_000
    gltf, positions, normals, indices = load_glb(data)
    assert len(gltf.meshes) == 1 and len(gltf.meshes[0].primitives) == 1
    assert 1_000 <= len(positions) <= 20_000
    accessor = gltf.accessors[gltf.meshes[0].primitives[0].attributes.POSITION]
    assert accessor.min == positions.min(axis=0).tolist()
    assert accessor.max == positions.max(axis=0).tolist()
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert indices.max() < len(positions)


def test_red_sphere_material_is_red() -> None:
    """Given "a red sphere", the material's linear baseColorFactor is red and opaque."""
    gltf = load_glb(generate("model", "a red sphere")[0])[0]
    r, g, b, a = gltf.materials[0].pbrMetallicRoughness.baseColorFactor
    assert r > 0.5 and g < 0.1 and b < 0.1 and a == 1.0


def _radial(p: NDArray[Any]) -> NDArray[Any]:
    return np.hypot(p[:, 0], p[:, 2])


SHAPE_CHECKS: dict[str, Callable[[NDArray[Any], NDArray[Any]], bool]] = {
    "a shiny sphere": lambda p, n: bool(np.allclose(np.linalg.norm(p, axis=1), 1, atol=1e-5)),
    "something lovely": lambda p, n: bool(np.allclose(np.linalg.norm(p, axis=1), 1, atol=1e-5)),
    "three wooden boxes": lambda p, n: bool(np.all(np.isclose(np.abs(n), 1).sum(axis=1) == 1)
                                            and np.allclose(np.abs(p).max(axis=1), 1)),
    "a donut": lambda p, n: bool(_radial(p).min() > 0.39 and _radial(p).max() < 1.01),
    "a stone pyramid": lambda p, n: bool(np.all(_radial(p[p[:, 1] > 0.999]) < 1e-6)),
    "a tall tower": lambda p, n: bool(np.isclose(_radial(p).max(), 0.6)
                                      and np.isclose(np.ptp(p[:, 1]), 2)),
    "a star": lambda p, n: bool(np.allclose(np.abs(p[:, 2]), 0.25)),
}


@pytest.mark.parametrize("prompt", SHAPE_CHECKS)
def test_shape_words_pick_the_mesh(prompt: str) -> None:
    """Given a shape word (or none: a sphere), the mesh has that shape's geometry."""
    _, positions, normals, _ = load_glb(generate("model", prompt)[0])
    assert SHAPE_CHECKS[prompt](positions, normals)


@pytest.mark.parametrize("prompt", ["sphere", "cube", "cone", "cylinder", "torus", "star"])
def test_triangles_face_outwards(prompt: str) -> None:
    """Given any shape, every triangle winds counter-clockwise seen from outside."""
    _, positions, normals, indices = load_glb(generate("model", prompt)[0])
    corners = positions[indices]
    face = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert np.all(np.einsum("ij,ij->i", face, normals[indices].sum(axis=1)) > 0)
    if prompt in ("sphere", "cube", "cone", "cylinder"):  # convex: outward is away from 0
        assert np.all(np.einsum("ij,ij->i", face, corners.mean(axis=1)) > 0)


def test_model_thumbnail_shows_the_shape_in_its_colour() -> None:
    """Given "a red sphere" model, the thumbnail is a 256px PNG, red at the centre."""
    thumbnail = generate("model", "a red sphere")[1].thumbnail
    assert thumbnail is not None
    picture = image(thumbnail)
    assert picture.size == (256, 256)
    assert dominant(picture.getpixel((128, 128)), RED)


def test_model_is_deterministic() -> None:
    """Given the same prompt twice, the GLB and its thumbnail are byte-identical."""
    first, artifact = generate("model", "a gold torus")
    second, again = generate("model", "a gold torus")
    assert first == second and artifact.thumbnail == again.thumbnail


# --- schedule, progress and stopping ----------------------------------------------------


@pytest.mark.parametrize(("kind", "seconds", "stages"), [
    ("image", 3.0, ["queued", "generating"]),
    ("model", 8.0, ["generating", "meshing", "texturing", "packaging"]),
])
def test_progress_rises_to_100_over_the_configured_time(
    kind: str, seconds: float, stages: list[str]
) -> None:
    """Given a duration, progress climbs 0→100 through the stages, sleeping that long in all."""
    clock, progress = FakeTime(), Progress()
    generate(kind, "a pink cube", seconds=seconds, clock=clock, progress=progress)
    percents = [percent for percent, _ in progress.calls]
    assert percents[0] == 0 and percents[-1] == 100
    assert percents == sorted(percents)
    assert progress.stages == stages
    assert sum(clock.sleeps) == pytest.approx(seconds)
    assert len(progress.calls) <= 4 * seconds + len(stages) + 1  # a few reports a second


def test_work_time_counts_towards_the_duration() -> None:
    """Given a clock that also moves while work runs, the whole call still takes ≈ the duration."""
    clock = FakeTime(tick_on_read=0.05)
    generate("model", "a cube", seconds=8.0, clock=clock)
    assert sum(clock.sleeps) < 8.0
    assert clock.now - clock.start == pytest.approx(8.0, abs=0.1)


@pytest.mark.parametrize("kind", ["image", "model"])
def test_zero_seconds_is_instant(kind: str) -> None:
    """Given a duration of 0, nothing sleeps and progress still ends at 100."""
    clock, progress = FakeTime(), Progress()
    generate(kind, "a cyan cylinder", clock=clock, progress=progress)
    assert clock.sleeps == []
    assert progress.calls[-1][0] == 100


def test_stop_midway_raises_canceled() -> None:
    """Given should_stop turning true midway, generate raises CanceledError and stops early."""
    checks, progress = [], Progress()

    def should_stop() -> bool:
        checks.append(1)
        return len(checks) > 5

    with pytest.raises(CanceledError):
        generate("model", "a ball", seconds=8.0, progress=progress, should_stop=should_stop)
    assert len(progress.calls) == 5 and progress.calls[-1][0] < 100


def test_stop_before_start_reports_nothing() -> None:
    """Given should_stop already true, generate raises CanceledError before any progress."""
    clock, progress = FakeTime(), Progress()
    with pytest.raises(CanceledError):
        generate("image", "a ball", seconds=3.0, clock=clock, progress=progress,
                 should_stop=lambda: True)
    assert progress.calls == [] and clock.sleeps == []


# --- failure hooks (development package only) ------------------------------------------


@pytest.mark.parametrize("prompt", ["a red ball [fail:permanent]", "[fail:retryable] a ball",
                                    "a ball [hang]"])
def test_the_deployed_generator_has_no_planted_failures(prompt: str) -> None:
    """Given a planted-failure token, then the product's offline provider just draws it:
    the tokens work only in kiln_dev's scripted provider, which is never deployed."""
    data, artifact = generate("image", prompt)
    assert artifact.content_type == "image/png" and data.startswith(b"\x89PNG")


@pytest.mark.parametrize("kind", ["image", "model"])
def test_permanent_failure_token(kind: str) -> None:
    """Given "[fail:permanent]" in the prompt, then PermanentError content_refused, readable."""
    with pytest.raises(PermanentError) as caught:
        generate(kind, "a red ball [fail:permanent]", provider_class=ScriptedOfflineProvider)
    assert caught.value.code == "content_refused"
    assert caught.value.message == "The provider refused this prompt."


@pytest.mark.parametrize("kind", ["image", "model"])
def test_retryable_failure_token(kind: str) -> None:
    """Given "[fail:retryable]" in the prompt, then RetryableError provider_unavailable."""
    with pytest.raises(RetryableError) as caught:
        generate(kind, "[fail:retryable] a red ball", provider_class=ScriptedOfflineProvider)
    assert caught.value.code == "provider_unavailable"


def test_hang_token_waits_until_stopped() -> None:
    """Given "[hang]", then the scripted generator only sleeps until told to stop, then ends
    with CanceledError, reporting no progress."""
    clock, progress = FakeTime(), Progress()
    stops = iter([False, False, True])
    with pytest.raises(CanceledError):
        generate("model", "a cube [hang]", clock=clock, progress=progress,
                 should_stop=lambda: next(stops), provider_class=ScriptedOfflineProvider)
    assert progress.calls == [] and len(clock.sleeps) == 2
