"""Image decoding limits: per image, per request (the pixel budget), shrinking as it decodes, and the pool it
runs in (real Pillow, real images; no Ray, no encoder)."""
import asyncio
import io
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from cluster.config import ImageLimits
from cluster.errors import ImageBudgetExceeded, ImageError
from router.encoding import images
from router.encoding.images import ImageDecoder, PixelBudget, decode_image


def encoded(w: int, h: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A smooth picture (gradients, so that it compresses as photos do), different per seed."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 // max(w - 1, 1) + seed * 37) % 256, y * 255 // max(h - 1, 1),
                    ((x + y) // 7 + seed) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_large_image_is_held_shrunk_to_the_downscale_side(fmt):
    img = decode_image(encoded(3000, 2000, fmt), "f", downscale_side=448)
    assert img.mode == "RGB" and img.size == (672, 448)  # shorter side 448, aspect kept
    small = decode_image(encoded(300, 200, fmt), "f", downscale_side=448)
    assert small.size == (300, 200)  # never enlarged
    assert decode_image(encoded(3000, 2000, fmt), "f", downscale_side=None).size == (3000, 2000)


def test_jpeg_is_decoded_at_a_reduced_scale_not_at_full_size():
    """Draft mode: Pillow's JPEG decoder is asked for >= the target size, so a 4000x3000 photo is decoded at 1/4
    (1000x750) and never materialised at 12 MP."""
    data = encoded(4000, 3000, "JPEG")
    seen = []
    real_load = Image.Image.load

    def spy(self):
        seen.append(self.size)
        return real_load(self)

    Image.Image.load = spy
    try:
        decode_image(data, "f", downscale_side=448)
    finally:
        Image.Image.load = real_load
    assert seen and max(w * h for w, h in seen) <= 1000 * 750


def test_the_pixel_budget_is_for_the_whole_request_and_names_its_setting():
    budget = PixelBudget(1_000_000)
    decode_image(encoded(800, 600), "points[0].payload.image", budget=budget)  # 480,000
    decode_image(encoded(800, 600), "points[1].payload.image", budget=budget)  # 960,000
    with pytest.raises(ImageBudgetExceeded) as exc:
        decode_image(encoded(200, 300), "points[2].payload.image", budget=budget)
    assert exc.value.status == 413 and exc.value.field == "images.max_request_pixels"
    assert "points[2].payload.image" in exc.value.message and "1000000" in exc.value.message


def test_decompression_bombs_are_refused_before_they_are_decompressed():
    budget = PixelBudget(10**12)
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(bomb_png(), "f", max_pixels=40_000_000, budget=budget)
    assert budget.used == 0  # refused on its header: nothing charged, nothing allocated
    with pytest.raises(ImageError, match="exceeds the limit"):
        decode_image(encoded(300, 200), "f", max_pixels=50_000)


def test_decoding_runs_in_the_bounded_pool_never_on_the_event_loop(monkeypatch):
    """Eight images of one request, decoded through a two-thread pool: every decode ran on a pool thread, at most
    two at a time, and the event loop's thread decoded none."""
    pool = ThreadPoolExecutor(2, thread_name_prefix="test-decode")
    threads, running, peak = [], [0], [0]
    lock = threading.Lock()
    real = images.decode_image

    def counted(*args, **kw):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            threads.append(threading.current_thread().name)
        try:
            return real(*args, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(images, "decode_image", counted)
    decoder = ImageDecoder(ImageLimits(), pool)

    async def run():
        loop_thread = threading.current_thread().name
        budget = decoder.budget()
        out = await asyncio.gather(*(decoder.decode(encoded(1200, 900, "JPEG", i), f"points[{i}]", budget)
                                     for i in range(8)))
        return loop_thread, out

    loop_thread, out = asyncio.run(run())
    pool.shutdown()
    assert [im.size for im in out] == [(597, 448)] * 8
    assert len(threads) == 8 and all(t.startswith("test-decode") for t in threads) and loop_thread not in threads
    assert 1 <= peak[0] <= 2
