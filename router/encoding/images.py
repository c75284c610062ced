"""Image inputs: decoded strictly, before any model sees them. Pillow only; no Ray, no network unless allowed.

Limits are checked before pixels are decompressed: the byte size of the upload, then the pixel count Pillow reads
from the header (a 20000x20000 PNG of a few KB is a decompression bomb, refused without allocating it), per image
and summed over the request (`PixelBudget`). Decoding runs in a bounded thread pool (`ImageDecoder`), never on the
event loop, and an image is shrunk as it is decoded (JPEG draft mode, then a resize) so a request holds small
images only. URLs (when allowed) reach public addresses only (`fetch_url`).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster.config import MAX_IMAGE_PIXELS as DEFAULT_MAX_PIXELS, MAX_UPLOAD_BYTES as DEFAULT_MAX_BYTES, ImageLimits
from cluster.errors import ImageBudgetExceeded, ImageError, PayloadTooLarge
from router.encoding.fetch import fetch_url

DEFAULT_DOWNSCALE_SIDE = 448


def decode_base64(data: str, field: str) -> bytes:
    if data.startswith("data:"):
        head, _, data = data.partition(",")
        if ";base64" not in head:
            raise ImageError(f"{field}: only base64 data URIs are accepted", field=field)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{field}: not valid base64", field=field) from None


MAX_PATH = 4096


def is_inline(ref: str) -> bool:
    """Inline image data (base64 or a data URI), as opposed to a URL or an explicit file:// reference.

    Not a prefix test on '/': base64 of every JPEG starts with '/9j/' (measured: it made local ingest read JPEGs
    as file paths)."""
    return not ref.startswith(("http://", "https://", "file://"))


def local_path(ref: str) -> Path | None:
    """The file a reference names: an explicit file:// URL, or a short string that is an existing file's path."""
    if ref.startswith("file://"):
        return Path(ref.removeprefix("file://"))
    if len(ref) < MAX_PATH and "\n" not in ref and Path(ref).is_file():
        return Path(ref)
    return None


def load_reference(ref: str, field: str, *, allow_files: bool = False, allow_network: bool = False,
                   max_bytes: int = DEFAULT_MAX_BYTES, fetch_timeout_s: float = 10.0) -> bytes:
    """Bytes of an image given as base64 / data URI, a local path (local ingest only) or an http(s) URL."""
    if ref.startswith(("http://", "https://")):
        if not allow_network:
            raise ImageError(f"{field}: image URLs are disabled (config images.allow_network)", field=field)
        return fetch_url(ref, field, max_bytes=max_bytes, timeout_s=fetch_timeout_s)
    if ref.startswith("file://") and not allow_files:
        raise ImageError(f"{field}: file paths are accepted only by local ingest", field=field)
    path = local_path(ref) if allow_files else None
    if ref.startswith("file://") and path is not None and not path.is_file():
        raise ImageError(f"{field}: no image file at {str(path)!r}", field=field)
    if path is not None:
        if path.stat().st_size > max_bytes:
            raise PayloadTooLarge(f"{field}: {path.stat().st_size} bytes exceeds {max_bytes}", field=field)
        return path.read_bytes()
    return decode_base64(ref, field)


def check_bytes(data: bytes, field: str, max_bytes: int) -> None:
    """The byte limit, before anything is parsed (every decoding path, the GPU's too)."""
    if not data:
        raise ImageError(f"{field}: empty image", field=field)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{field}: image of {len(data)} bytes exceeds {max_bytes}", field=field)


def check_pixels(img: Any, field: str, max_pixels: int) -> tuple[int, int]:
    """An opened (not yet decoded) image's size, refused past the pixel limit (a decompression bomb)."""
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{field}: {w}x{h} pixels exceeds the limit of {max_pixels} (decompression bomb?)",
                         field=field)
    return w, h


@contextmanager
def opened(data: bytes, field: str, max_bytes: int, max_pixels: int) -> Iterator[tuple[Any, int, int]]:
    """(the PIL image, its width, its height) from the header only, the byte and pixel limits refused first; what
    Pillow raises inside (here or in the caller's block) becomes an ImageError naming the field."""
    from PIL import Image, UnidentifiedImageError

    check_bytes(data, field, max_bytes)
    try:
        with Image.open(io.BytesIO(data)) as img:
            yield img, *check_pixels(img, field, max_pixels)
    except (ImageError, ImageBudgetExceeded):
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{field}: refused as a decompression bomb", field=field) from None
    except UnidentifiedImageError:
        raise ImageError(f"{field}: not an image Pillow can read", field=field) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{field}: broken image ({exc})", field=field) from None


def decode_image(data: bytes, field: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS, downscale_side: int | None = DEFAULT_DOWNSCALE_SIDE,
                 budget: "PixelBudget | None" = None):
    """A fully decoded RGB PIL image, EXIF-rotated, its shorter side at most `downscale_side` (None: as stored);
    ImageError / PayloadTooLarge name the field. `budget`: the request's pixel budget, charged with the header's
    pixel count before anything is decompressed."""
    from PIL import ImageOps

    with opened(data, field, max_bytes, max_pixels) as (img, w, h):
        if budget is not None:
            budget.take(w * h, field)
        if downscale_side and min(w, h) > downscale_side:
            # JPEG: decode at 1/2, 1/4 or 1/8 scale straight away, never at full size (still >= the target)
            scale = downscale_side / min(w, h)
            img.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
        img.load()
        out = ImageOps.exif_transpose(img).convert("RGB")
        return shrink(out, downscale_side) if downscale_side else out


def shrink(img, side: int):
    """`img` resized (aspect kept) so its shorter side is `side`; as it is when already that small."""
    from PIL import Image

    w, h = img.size
    if min(w, h) <= side:
        return img
    scale = side / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC,
                      reducing_gap=2.0)


class PixelBudget:
    """The pixels one request's images may hold together (their headers' counts, charged before decoding).
    Thread-safe: a request's images are decoded in parallel."""

    def __init__(self, limit: int, field: str = "images.max_request_pixels"):
        self.limit, self.field, self.used = limit, field, 0
        self._lock = threading.Lock()

    def take(self, pixels: int, where: str) -> None:
        with self._lock:
            self.used += pixels
            used = self.used
        if used > self.limit:
            raise ImageBudgetExceeded(
                f"{where}: this request's images hold more than {self.limit} pixels together "
                f"(images.max_request_pixels); send fewer or smaller images per request", field=self.field)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(workers: int) -> ThreadPoolExecutor:
    """One decode pool per size per process, shared by every collection and request of an ingress replica."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="prism-image")
        return pool


class ImageDecoder:
    """Fetch and decode images in a bounded pool of threads, within a request's pixel budget."""

    def __init__(self, limits: ImageLimits, pool: Executor | None = None):
        self.limits = limits
        self.pool = pool or shared_pool(limits.decode_workers)

    def budget(self) -> PixelBudget:
        return PixelBudget(self.limits.max_request_pixels)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def decode(self, data: bytes, field: str, budget: PixelBudget):
        return await self.run(self._decode, data, field, budget)

    async def load(self, ref: str, field: str, budget: PixelBudget):
        """A payload's image reference (base64, data URI, or an allowed URL) fetched and decoded in the pool."""
        def job():
            data = load_reference(ref, field, allow_network=self.limits.allow_network,
                                  max_bytes=self.limits.max_bytes, fetch_timeout_s=self.limits.fetch_timeout_s)
            return self._decode(data, field, budget)
        return await self.run(job)

    def _decode(self, data: bytes, field: str, budget: PixelBudget):
        lim = self.limits
        return decode_image(data, field, max_bytes=lim.max_bytes, max_pixels=lim.max_pixels,
                            downscale_side=lim.downscale_side, budget=budget)
