"""Streaming artifact validators (GLB, PNG), validator_for and make_thumbnail."""

from __future__ import annotations

import io
import json
import random
import struct
import tracemalloc
import zlib
from typing import Any

import pytest
from PIL import Image

from kiln.core.errors import PermanentError, RetryableError
from kiln.runtime.artifacts import (
    CHUNK_BIN,
    CHUNK_JSON,
    GlbInfo,
    GlbValidator,
    PngInfo,
    PngValidator,
    make_thumbnail,
    validator_for,
)

MiB = 1024 * 1024
CHUNK_SIZES = [1, 7, MiB]


def gltf_json(bin_length: int = 16, **changes: Any) -> dict[str, Any]:
    """A minimal glTF document whose one buffer and bufferView span ``bin_length`` bytes."""
    doc: dict[str, Any] = {
        "asset": {"version": "2.0"},
        "buffers": [{"byteLength": bin_length}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": bin_length}],
        "meshes": [{"primitives": []}],
    }
    doc.update(changes)
    return doc


def glb(doc: dict[str, Any] | None = None, binary: bytes | None = b"\0" * 16, *,
        magic: bytes = b"glTF", version: int = 2, length: int | None = None,
        first_type: int = CHUNK_JSON, json_text: bytes | None = None, pad: bool = True,
        extra: bytes = b"") -> bytes:
    """A GLB file, well formed unless an argument says otherwise."""
    text = json_text if json_text is not None else json.dumps(
        gltf_json(len(binary or b"")) if doc is None else doc).encode()
    if pad:
        text += b" " * (-len(text) % 4)
    body = struct.pack("<II", len(text), first_type) + text
    if binary is not None:
        body += struct.pack("<II", len(binary), CHUNK_BIN) + binary
    body += extra
    total = 12 + len(body) if length is None else length
    return struct.pack("<4sII", magic, version, total) + body


def png(width: int = 4, height: int = 3, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), "red").save(out, format="PNG")
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    checksum = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def ihdr(width: int, height: int) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IEND = png_chunk(b"IEND", b"")


def stream(validator: Any, data: bytes, size: int = MiB) -> Any:
    """Feed ``data`` in ``size``-byte pieces, then finish."""
    for start in range(0, len(data), size):
        validator.feed(data[start:start + size])
    return validator.finish()


def rejected(validator: Any, data: bytes) -> PermanentError:
    """The PermanentError that feeding (then finishing) raises."""
    with pytest.raises(PermanentError) as caught:
        stream(validator, data)
    return caught.value


# --- GLB -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_glb_accepted_in_any_chunking(size: int) -> None:
    """Given a 1.1 MiB GLB, fed in 1-byte, 7-byte or 1 MiB pieces, the summary is the same."""
    binary = random.Random(1).randbytes(MiB + 100_000)
    data = glb(binary=binary)
    info = stream(GlbValidator(), data, size)
    json_bytes = len(data) - 28 - len(binary)
    assert info == GlbInfo(total_bytes=len(data), json_bytes=json_bytes,
                           bin_bytes=len(binary), meshes=1, version=2)


def test_glb_without_bin_chunk_and_with_unknown_chunk_accepted() -> None:
    """Given a GLB with no buffers and an extension chunk after JSON, it is accepted."""
    doc = {"asset": {"version": "2.0"}}
    unknown = struct.pack("<II", 4, 0x12345678) + b"abcd"
    info = stream(GlbValidator(), glb(doc, binary=None, extra=unknown))
    assert info.bin_bytes == 0 and info.meshes == 0


GLB_REJECTS: dict[str, tuple[bytes, str]] = {
    "bad magic": (glb(magic=b"gltf"), "does not start with the bytes 'glTF'"),
    "version 1": (glb(version=1), "version 1"),
    "longer than header": (glb() + b"\0\0\0\0", "its header gives"),
    "impossible length": (glb(length=18), "impossible length"),
    "bad JSON": (glb(json_text=b'{"asset": '), "not valid JSON"),
    "JSON not an object": (glb(json_text=b"[1, 2]"), 'asset.version "2.0"'),
    "wrong asset version": (glb({"asset": {"version": "1.0"}}), 'asset.version "2.0"'),
    "BIN first": (glb(first_type=CHUNK_BIN), "first chunk is not JSON"),
    "unpadded chunk": (glb(json_text=b'{"asset":{"version":"2.0"}}', pad=False,
                                           binary=b"\0" * 17),
                       "not a multiple of 4"),
    "buffer larger than BIN": (glb(gltf_json(64), binary=b"\0" * 16), "the BIN chunk holds 16"),
    "buffer without BIN": (glb(gltf_json(16), binary=None), "no BIN chunk"),
    "view past buffer": (glb(gltf_json(16, bufferViews=[
        {"buffer": 0, "byteOffset": 8, "byteLength": 16}])), "past the end of buffer 0"),
    "view of missing buffer": (glb(gltf_json(16, bufferViews=[
        {"buffer": 3, "byteLength": 4}])), "does not exist"),
    "view without length": (glb(gltf_json(16, bufferViews=[{"buffer": 0}])), "'byteLength'"),
    "buffers not a list": (glb(gltf_json(16, buffers={"byteLength": 16})), "not a list"),
    "external buffer": (glb(gltf_json(16, buffers=[{"byteLength": 16, "uri": "a.bin"}])),
                        "external file"),
    "external image": (glb(gltf_json(16, images=[{"uri": "https://attacker.example/b.png"}])),
                       "image 0 refers to an external file"),
    "second JSON chunk": (glb(extra=struct.pack("<II", 4, CHUNK_JSON) + b"{}  "),
                          "second JSON or BIN"),
    "empty": (b"", "header"),
}


@pytest.mark.parametrize("case", GLB_REJECTS)
def test_glb_rejected(case: str) -> None:
    """Given a malformed GLB, the validator raises invalid_artifact saying what is wrong."""
    data, reason = GLB_REJECTS[case]
    error = rejected(GlbValidator(), data)
    assert error.code == "invalid_artifact"
    assert reason in error.message and error.message.startswith("The model file (GLB)")


def test_a_glb_cut_short_is_fetched_again_in_any_chunking() -> None:
    """Given a GLB shorter than its header says (cut off on the way), 1-byte, 7-byte and
    whole feeding all call it incomplete: a retryable error, so the job fetches it again
    instead of failing a finished task."""
    for size in CHUNK_SIZES:
        with pytest.raises(RetryableError) as cut:
            stream(GlbValidator(), glb()[:-4], size)
        assert cut.value.code == "fetch_incomplete" and "header gives" in cut.value.message


def test_glb_declared_oversize_rejected_from_header() -> None:
    """Given a header declaring more than max_bytes, the first 12 bytes are enough to refuse."""
    with pytest.raises(PermanentError) as caught:
        GlbValidator(max_bytes=1000).feed(glb(binary=b"\0" * 2000)[:12])
    assert caught.value.code == "artifact_too_large"


def test_glb_json_chunk_cap() -> None:
    """Given a JSON chunk over max_json_bytes, it is refused before being buffered."""
    data = glb({"asset": {"version": "2.0"}, "extras": "x" * 500}, binary=None)
    error = rejected(GlbValidator(max_json_bytes=256), data[:20])
    assert error.code == "invalid_artifact" and "JSON chunk" in error.message


def test_glb_json_chunk_past_four_mib_is_refused_by_default() -> None:
    """A JSON chunk is parsed whole (about 26 times its size in memory): by default one
    over 4 MiB is refused from its chunk header, before a byte of it is buffered."""
    import struct

    length = 4 * MiB + 4
    head = struct.pack("<4sII", b"glTF", 2, 12 + 8 + length) + struct.pack("<II", length,
                                                                             0x4E4F534A)
    error = rejected(GlbValidator(), head)
    assert error.code == "invalid_artifact" and "JSON chunk" in error.message


def test_glb_gigabyte_validates_in_bounded_memory() -> None:
    """Given a 1 GiB GLB streamed in 1 MiB chunks, validation allocates well under 1 MiB."""
    bin_length = 1024 * MiB
    head = glb(gltf_json(bin_length), binary=None)
    head = head[:8] + struct.pack("<I", len(head) + 8 + bin_length) + head[12:]
    head += struct.pack("<II", bin_length, CHUNK_BIN)
    piece = bytes(MiB)
    validator = GlbValidator()
    tracemalloc.start()
    try:
        validator.feed(head)
        for _ in range(1024):
            validator.feed(piece)
        info = validator.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.bin_bytes == bin_length
    assert peak < 256 * 1024


# --- PNG -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_png_accepted_in_any_chunking(size: int) -> None:
    """Given a 1.1 MiB noise PNG fed in 1-byte, 7-byte or 1 MiB pieces, its size is read."""
    noise = Image.frombytes("RGB", (640, 640), random.Random(2).randbytes(640 * 640 * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG")
    data = out.getvalue()
    assert len(data) > MiB
    assert stream(PngValidator(), data, size) == PngInfo(640, 640, len(data))


PNG_REJECTS: dict[str, tuple[bytes, str]] = {
    "bad signature": (b"\x89PNG\r\n\x1a\x00" + png()[8:], "PNG signature"),
    "JPEG": (b"\xff\xd8\xff\xe0" + b"\0" * 40, "PNG signature"),
    "IHDR not first": (PNG_SIGNATURE + png_chunk(b"tEXt", b"a\0b") + ihdr(4, 4) + IEND,
                       "IHDR is not its first chunk"),
    "zero width": (PNG_SIGNATURE + ihdr(0, 4) + IEND, "width is 0"),
    "too tall": (PNG_SIGNATURE + ihdr(4, 20000) + IEND, "height is 20000"),
    "truncated": (png()[:-12], "truncated"),
    "bad CRC": (PNG_SIGNATURE + ihdr(4, 4) + png_chunk(b"IDAT", b"xxxx", crc=1) + IEND,
                "IDAT chunk fails its CRC"),
    "data after IEND": (png() + b"\0", "data after its end"),
    "non-empty IEND": (PNG_SIGNATURE + ihdr(4, 4) + png_chunk(b"IEND", b"1234"), "not empty"),
}


@pytest.mark.parametrize("case", PNG_REJECTS)
def test_png_rejected(case: str) -> None:
    """Given a malformed PNG, the validator raises invalid_artifact saying what is wrong."""
    data, reason = PNG_REJECTS[case]
    error = rejected(PngValidator(), data)
    assert error.code == "invalid_artifact"
    assert reason in error.message and error.message.startswith("The image file (PNG)")


def test_png_oversize_rejected_while_streaming() -> None:
    """Given max_bytes, the chunk that crosses it raises artifact_too_large at once."""
    data = png(64, 64)
    validator = PngValidator(max_bytes=len(data) - 1)
    validator.feed(data[:-1])
    with pytest.raises(PermanentError) as caught:
        validator.feed(data[-1:])
    assert caught.value.code == "artifact_too_large"


def test_png_large_body_validates_in_bounded_memory() -> None:
    """Given a PNG with a 64 MiB chunk, streaming it allocates well under 1 MiB."""
    piece, pieces = bytes(MiB), 64
    crc = zlib.crc32(b"IDAT")
    for _ in range(pieces):
        crc = zlib.crc32(piece, crc)
    head = PNG_SIGNATURE + ihdr(8, 8) + struct.pack(">I", pieces * MiB) + b"IDAT"
    validator = PngValidator()
    tracemalloc.start()
    try:
        validator.feed(head)
        for _ in range(pieces):
            validator.feed(piece)
        validator.feed(struct.pack(">I", crc) + IEND)
        info = validator.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.width == 8 and info.total_bytes > pieces * MiB
    assert peak < 256 * 1024


# --- validator_for and thumbnails -----------------------------------------------------


@pytest.mark.parametrize(("content_type", "cls"), [
    ("image/png", PngValidator),
    ("model/gltf-binary", GlbValidator),
    ("Model/GLTF-Binary; charset=binary", GlbValidator),
])
def test_validator_for_known_types(content_type: str, cls: type) -> None:
    """Given a PNG or GLB content type (any case, with parameters), its validator is returned."""
    validator = validator_for(content_type, max_bytes=123)
    assert isinstance(validator, cls) and validator.max_bytes == 123


def test_validator_for_unknown_type_is_refused() -> None:
    """Given a type Kiln does not store, validator_for raises unsupported_content_type."""
    with pytest.raises(PermanentError) as caught:
        validator_for("image/jpeg")
    assert caught.value.code == "unsupported_content_type"


def test_thumbnail_keeps_aspect_and_alpha() -> None:
    """Given a 1024x512 RGBA PNG, the thumbnail is a 256x128 RGBA PNG."""
    thumb = Image.open(io.BytesIO(make_thumbnail(png(1024, 512, "RGBA"))))
    assert (thumb.format, thumb.size, thumb.mode) == ("PNG", (256, 128), "RGBA")


@pytest.mark.parametrize("side", [512, 1000, 1024])
def test_thumbnail_averages_detail_finer_than_its_pixels(side: int) -> None:
    """Given a one-pixel black-and-white checkerboard with a white left half, every
    thumbnail pixel of the checkerboard is mid-grey (no aliasing) and the white half stays
    white, whether the size divides by a whole number or not."""
    image = Image.new("L", (side, side), 255)
    pixels = image.load()
    for y in range(side):
        for x in range(side // 2, side):
            pixels[x, y] = 255 * ((x + y) % 2)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG")
    thumb = Image.open(io.BytesIO(make_thumbnail(out.getvalue()))).convert("L")
    w, h = thumb.size
    checker = [thumb.getpixel((x, y)) for y in range(h) for x in range(w // 2 + 2, w)]
    white = [thumb.getpixel((x, y)) for y in range(h) for x in range(w // 2 - 2)]
    assert all(100 <= value <= 155 for value in checker), (min(checker), max(checker))
    assert min(white) >= 250


def test_thumbnail_of_small_image_is_not_enlarged() -> None:
    """Given a 100x50 PNG and size 256, the thumbnail stays 100x50."""
    assert Image.open(io.BytesIO(make_thumbnail(png(100, 50)))).size == (100, 50)


@pytest.mark.parametrize(("data", "code"), [
    (b"\0" * (50 * 1000**2 + 1), "artifact_too_large"),
    (PNG_SIGNATURE + ihdr(6000, 5000) + IEND, "artifact_too_large"),
    (b"not an image at all", "invalid_artifact"),
    (png()[:30], "invalid_artifact"),
])
def test_thumbnail_refusals(data: bytes, code: str) -> None:
    """Given a source over 50 MB, over 25 megapixels, or unreadable, make_thumbnail refuses."""
    with pytest.raises(PermanentError) as caught:
        make_thumbnail(data)
    assert caught.value.code == code


@pytest.mark.parametrize(("cls", "data"), [(GlbValidator, glb()), (PngValidator, png())])
def test_corrupted_files_only_raise_permanent_error(cls: type, data: bytes) -> None:
    """Given 500 random corruptions, the validator accepts or raises PermanentError, never
    else; a GLB cut short of its header's length is the one retryable refusal (it may have
    been cut off on the way: fetched again)."""
    rng = random.Random(3)
    for _ in range(500):
        corrupt = bytearray(data)
        if rng.random() < 0.5:
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        else:
            del corrupt[rng.randrange(len(corrupt)):]
        try:
            stream(cls(), bytes(corrupt), rng.choice([1, 7, MiB]))
        except PermanentError:
            pass
        except RetryableError as exc:
            assert cls is GlbValidator and exc.code == "fetch_incomplete"


def test_a_small_image_and_its_thumbnail_are_stored_as_a_streamed_one_is() -> None:
    """An image of known small size is validated whole, then stored with its thumbnail at
    the same time: the same objects and result as the streamed path (size unknown)."""
    from kiln.core.job import Job
    from kiln.providers.base import Artifact
    from kiln.runtime.results import store_result
    from kiln_dev.fakes import InMemoryBlobs

    data = png(64, 48)
    job = Job.from_docs("job1", {"uid": "u", "kind": "image", "status": "processing"})
    results = []
    for size in (len(data), None):
        blobs = InMemoryBlobs()
        artifact = Artifact("image", "image/png", [data[:10], data[10:]], size=size)
        results.append((store_result(blobs, job, artifact, max_bytes=10_000_000),
                        sorted(blobs.objects)))
    assert results[0] == results[1]
    result, objects = results[0]
    assert objects == ["generations/u/job1/result.png", "generations/u/job1/thumb.png"]
    assert result["bytes"] == len(data) and result["thumbnailPath"].endswith("thumb.png")


def test_a_small_invalid_image_stores_nothing_not_even_a_thumbnail() -> None:
    from kiln.core.job import Job
    from kiln.providers.base import Artifact
    from kiln.runtime.results import store_result
    from kiln_dev.fakes import InMemoryBlobs

    data = png(64, 48)[:-20]  # cut short: the validator refuses it
    job = Job.from_docs("job1", {"uid": "u", "kind": "image", "status": "processing"})
    blobs = InMemoryBlobs()
    with pytest.raises(PermanentError):
        store_result(blobs, job, Artifact("image", "image/png", [data], size=len(data)),
                     max_bytes=10_000_000)
    assert blobs.objects == {}


def test_an_image_whose_pixels_cannot_be_read_fails_and_stores_nothing() -> None:
    """Given a PNG whose chunks all check out (CRCs, IHDR) but whose pixel data is not a
    zlib stream, then storing it fails with invalid_artifact, small or streamed, and no
    object is left (the streamed one is deleted once its pixels fail to read)."""
    from kiln.core.job import Job
    from kiln.providers.base import Artifact
    from kiln.runtime.results import store_result
    from kiln_dev.fakes import InMemoryBlobs

    data = PNG_SIGNATURE + ihdr(64, 48) + png_chunk(b"IDAT", b"not zlib at all" * 8) + IEND
    job = Job.from_docs("job1", {"uid": "u", "kind": "image", "status": "processing"})
    for size in (len(data), None):
        blobs = InMemoryBlobs()
        with pytest.raises(PermanentError) as caught:
            store_result(blobs, job, Artifact("image", "image/png", [data], size=size),
                         max_bytes=10_000_000)
        assert caught.value.code == "invalid_artifact" and blobs.objects == {}


def test_a_providers_thumbnail_is_made_again_or_left_out() -> None:
    """A provider's thumbnail of 1024 px is stored at 256 px (as promised), and one that
    only starts like a PNG is left out: the model stands without one."""
    from kiln.core.job import Job
    from kiln.providers.base import Artifact
    from kiln.runtime.results import store_result
    from kiln_dev.fakes import InMemoryBlobs

    model = glb()
    job = Job.from_docs("job1", {"uid": "u", "kind": "model", "status": "processing"})
    blobs = InMemoryBlobs()
    result = store_result(blobs, job, Artifact("model", "model/gltf-binary", [model],
                                               size=len(model), thumbnail=png(1024, 512)),
                          max_bytes=10_000_000)
    with Image.open(io.BytesIO(blobs.read(result["thumbnailPath"]))) as thumb:
        assert thumb.size == (256, 128)
    junk = PNG_SIGNATURE + b"garbage" * 10
    result = store_result(InMemoryBlobs(), job, Artifact(
        "model", "model/gltf-binary", [model], size=len(model), thumbnail=junk),
        max_bytes=10_000_000)
    assert "thumbnailPath" not in result
