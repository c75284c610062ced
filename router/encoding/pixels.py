"""Images to a vision tower's input tensor, off the model's path.

The CLIP image processor's steps (resize the shorter side, centre crop, rescale, normalise) run here, per image,
in a pool of threads sized to the encoder replica's cores: Pillow's decode and resize and numpy's arithmetic
release the GIL, so threads run in parallel without copying arrays between processes. Measured (640x480 JPEG
bytes to 224x224 CLIP pixels, 2 cores, median of 3): one thread 52/s, 2 threads 168/s, 2 processes 56/s (each
600 KB result pickled back; with the tiny CLIP's 32x32 results processes won, 406 vs 203/s, but those are not the
sizes a real model reads). Inputs are decoded PIL images, or image bytes decoded here
under the same strict limits as everywhere (`images.decode_image`: byte size, header pixel count before any
decompression, decompression bombs refused). On CUDA, JPEG bytes are decoded by nvJPEG
(`torchvision.io.decode_jpeg(device="cuda")`) and resized and normalised on the device, after the same header
limits; anything else (PNG, no torchvision, a decode error) takes the CPU path.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np

from cluster.config import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES
from router.encoding.images import decode_image, opened

EXIF_ORIENTATION = 0x0112


def replica_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or a Ray worker's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def header_check(data: bytes, field: str, *, max_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[str, int, int, int]:
    """(format, width, height, EXIF orientation) read from the header only; the byte and pixel limits refused
    here, before any path decompresses a pixel (the GPU path calls this before nvJPEG sees the bytes)."""

    with opened(data, field, max_bytes, max_pixels) as (img, w, h):
        return str(img.format), w, h, int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)


class ClipPixels:
    """CLIPImageProcessor's steps for one image at a time, in numpy (float32, channels first), in a thread pool."""

    def __init__(self, *, shortest_edge: int, crop: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 resample: int = 3, workers: int | None = None, pool: Executor | None = None,
                 max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_IMAGE_PIXELS):
        self.shortest_edge, self.crop, self.resample = shortest_edge, crop, resample
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.workers = workers or replica_cores()
        self.pool = pool or ThreadPoolExecutor(self.workers, thread_name_prefix="prism-pixels")
        self.max_bytes, self.max_pixels = max_bytes, max_pixels

    @classmethod
    def from_processor(cls, proc: Any, **kw: Any) -> "ClipPixels":
        """Settings read from a (CLIP) image processor, so the vectors match what it would produce."""
        size, crop = proc.size, proc.crop_size
        edge = size.get("shortest_edge") or min(size["height"], size["width"])
        return cls(shortest_edge=int(edge), crop=(int(crop["height"]), int(crop["width"])), mean=proc.image_mean,
                   std=proc.image_std, resample=int(getattr(proc, "resample", 3)), **kw)

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) with the shorter side at `shortest_edge` (transformers' rounding: int of the long)."""
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def one(self, item: Any, field: str = "image") -> np.ndarray:
        """(3, crop_h, crop_w) float32 for a PIL image or image bytes (decoded here, within the limits)."""
        from PIL import Image

        img = item
        if isinstance(item, (bytes, bytearray, memoryview)):
            # Decoded at a reduced scale (JPEG draft mode) down to twice the side the model reads, no further:
            # drafting to the side itself measured pixel cosines of 0.994 against the processor path on noisy
            # images; at twice it (CLIP: 448, the ingress's own setting) the pixels are the reference's.
            img = decode_image(bytes(item), field, max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                               downscale_side=2 * self.shortest_edge)
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = img.resize(self.resized_size(*img.size), Image.Resampling(self.resample))
        ch, cw = self.crop
        w, h = img.size
        top, left = int((h - ch) / 2), int((w - cw) / 2)
        if top >= 0 and left >= 0:
            img = img.crop((left, top, left + cw, top + ch))
        else:  # smaller than the crop (an odd processor setting): pad, as the processor does, then crop
            canvas = Image.new("RGB", (max(w, cw), max(h, ch)))
            canvas.paste(img, ((canvas.width - w) // 2, (canvas.height - h) // 2))
            t, left = (canvas.height - ch) // 2, (canvas.width - cw) // 2
            img = canvas.crop((left, t, left + cw, t + ch))
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255)
        return (arr - self.mean) / self.std

    def batch(self, items: Sequence[Any], fields: Sequence[str] | None = None) -> np.ndarray:
        """(N, 3, crop_h, crop_w) float32, the images prepared in parallel in the pool."""
        fields = list(fields or [f"images[{i}]" for i in range(len(items))])
        if len(items) == 1:
            return self.one(items[0], fields[0])[None]
        return np.stack(list(self.pool.map(self.one, items, fields)))

    # -- CUDA ----------------------------------------------------------------------------------------------------
    def cuda_batch(self, datas: Sequence[bytes], device: str = "cuda",
                   fields: Sequence[str] | None = None):
        """(N, 3, crop_h, crop_w) float32 tensor on `device` from image bytes: JPEGs decoded by nvJPEG and resized
        and normalised on the device; other formats through the CPU path. The header limits hold first."""
        import torch

        fields = list(fields or [f"images[{i}]" for i in range(len(datas))])
        heads = [header_check(d, f, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
                 for d, f in zip(datas, fields)]
        out: list[Any] = [None] * len(datas)
        jpegs = [i for i, h in enumerate(heads) if h[0] == "JPEG"]
        try:
            from torchvision.io import ImageReadMode, decode_jpeg

            decoded = decode_jpeg([torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpegs],
                                  mode=ImageReadMode.RGB, device=device) if jpegs else []
        except (ImportError, RuntimeError):
            decoded, jpegs = [], []
        for i, img in zip(jpegs, decoded):
            out[i] = self._on_device(_orient(img, heads[i][3]))
        rest = [i for i in range(len(datas)) if out[i] is None]
        if rest:
            cpu = torch.from_numpy(self.batch([datas[i] for i in rest], [fields[i] for i in rest])).to(device)
            for j, i in enumerate(rest):
                out[i] = cpu[j]
        return torch.stack(out)

    def _on_device(self, img):
        """A (3, H, W) uint8 tensor resized (bicubic, antialiased as Pillow is), centre-cropped and normalised."""
        import torch

        _, h, w = img.shape
        nw, nh = self.resized_size(w, h)
        x = torch.nn.functional.interpolate(img[None].float(), size=(nh, nw), mode="bicubic", antialias=True,
                                            align_corners=False).clamp_(0, 255).round_()[0]
        ch, cw = self.crop
        top, left = max(0, int((nh - ch) / 2)), max(0, int((nw - cw) / 2))
        x = x[:, top : top + ch, left : left + cw] / 255.0
        mean = torch.as_tensor(self.mean, device=x.device)
        std = torch.as_tensor(self.std, device=x.device)
        return (x - mean) / std


def _orient(img, orientation: int):
    """A (3, H, W) tensor turned as its EXIF orientation says (what ImageOps.exif_transpose does on the CPU)."""
    import torch

    if orientation in (2, 4, 5, 7):
        img = torch.flip(img, dims=[2])  # mirror left-right first; 4/5/7 then turn
    turns = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)  # counter-clockwise quarter turns
    return torch.rot90(img, k=turns, dims=[1, 2]) if turns else img
