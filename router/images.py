"""Image inputs: decoded strictly, before any model sees them. Pillow only; no Ray, no network unless allowed.

Limits are checked before pixels are decompressed: the byte size of the upload, then the pixel count Pillow reads
from the header (a 20000x20000 PNG of a few KB is a decompression bomb, refused without allocating it).
"""
from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from cluster.config import MAX_IMAGE_PIXELS as DEFAULT_MAX_PIXELS, MAX_UPLOAD_BYTES as DEFAULT_MAX_BYTES
from cluster.errors import ImageError, PayloadTooLarge


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
                   max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Bytes of an image given as base64 / data URI, a local path (local ingest only) or an http(s) URL."""
    if ref.startswith(("http://", "https://")):
        if not allow_network:
            raise ImageError(f"{field}: image URLs are disabled (config images.allow_network)", field=field)
        import httpx

        try:
            with httpx.stream("GET", ref, timeout=20, follow_redirects=True) as r:
                r.raise_for_status()
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"{field}: image at URL exceeds {max_bytes} bytes", field=field)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise ImageError(f"{field}: cannot fetch {ref!r}: {exc}", field=field) from None
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


def decode_image(data: bytes, field: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
    """A fully decoded RGB PIL image, EXIF-rotated; ImageError / PayloadTooLarge name the field."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageError(f"{field}: empty image", field=field)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{field}: image of {len(data)} bytes exceeds {max_bytes}", field=field)
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{field}: {w}x{h} pixels exceeds the limit of {max_pixels} (decompression bomb?)",
                                 field=field)
            img.load()
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{field}: refused as a decompression bomb", field=field) from None
    except UnidentifiedImageError:
        raise ImageError(f"{field}: not an image Pillow can read", field=field) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{field}: broken image ({exc})", field=field) from None
