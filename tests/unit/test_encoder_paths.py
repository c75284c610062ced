"""The encoders' fast paths against the reference paths they replace (real models: MiniLM, the tiny CLIP): text
tokenised once (vectors and truncation flags as sentence-transformers' encode plus a length count gave them),
float32 out, and images prepared in the pixel pool (vectors as the CLIPProcessor path gives them), within the
strict image limits on every path."""
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from cluster.errors import ImageError, PayloadTooLarge
from deploy.tinyclip import build_tiny_clip
from router.encoding.embed import ClipEncoder, load_encoder
from router.encoding.images import decode_image
from router.encoding.pixels import _orient, header_check

TEXTS = ["waterproof hiking boot", "word " * 50, "", "ünïcode façade 漢字", "a b c " * 4, "short"]


@pytest.fixture(scope="module")
def minilm():
    """MiniLM with a 32-token window (both paths read it), so a batch holding a cut text pads to 32, not 256."""
    enc = load_encoder("minilm", device="cpu")
    enc.max_tokens = enc.model.max_seq_length = 32
    return enc


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return ClipEncoder("clip", str(build_tiny_clip(tmp_path_factory.mktemp("m") / "clip")), device="cpu")


def reference(enc, texts):
    """The path before: sentence-transformers' encode, and a second tokenisation to count lengths."""
    vecs = enc.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    lengths = [len(ids) for ids in enc._tok()(texts, add_special_tokens=True)["input_ids"]]
    return vecs, [n > enc.max_tokens for n in lengths]


def test_text_is_tokenised_once_and_embeds_as_before(minilm, monkeypatch):
    calls = []
    tok = minilm._tok()
    real = type(tok).__call__
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    got = minilm.encode(TEXTS)
    assert len(calls) == 1  # one tokenisation for the batch: the model's own, which also says what it cut
    monkeypatch.undo()
    want, cut = reference(minilm, TEXTS)
    assert [e.truncated for e in got] == cut and cut[1] and not cut[0]
    for e, w in zip(got, want):
        assert e.vector.dtype == np.float32 and e.vector.shape == (minilm.dim,)
        assert float(np.dot(e.vector, w)) >= 0.9999
    docs = minilm.encode_documents(TEXTS)  # fitting texts: as queries; long ones: the mean of their windows
    assert all(d.vector.dtype == np.float32 and not d.truncated for d in docs)
    assert float(np.dot(docs[0].vector, want[0])) >= 0.9999 and float(np.dot(docs[1].vector, want[1])) < 0.9999


def test_clip_text_reads_exactly_the_window(clip):
    """Texts that fit, or are cut at a word's end, embed as before; a cut text is the tokenizer's own first 75
    tokens (the old path decoded them and tokenised the text again, which changed a word cut in its middle)."""
    texts = ["a cup of coffee", "hello " * 30, "tok " * 10]  # 'hello ' * 30: cut after 15 whole words
    got = clip.encode(texts)
    want, cut = reference(clip, ["a cup of coffee", "hello " * 15, "tok " * 10])
    assert [e.truncated for e in got] == [False, True, False]
    assert all(float(np.dot(e.vector, w)) >= 0.9999 for e, w in zip(got, want))
    tok = clip._tok()
    feats, flags = clip._tokenize(["word " * 300])
    ids = tok("word " * 300, add_special_tokens=False)["input_ids"]
    assert flags == [True] and feats["input_ids"][0][1:-1].tolist() == ids[:clip.max_tokens - 2]


def jpeg(w: int, h: int, seed: int = 0, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, rng.integers(0, 64, (h, w))], -1).astype(np.uint8)
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if orientation is None:
        img.save(buf, format="JPEG", quality=90)
    else:
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


def test_pooled_pixels_equal_the_clip_processor_path(clip):
    """From JPEG bytes (EXIF-rotated too) and from decoded images, through the pool: the vectors the processor
    path gives (the model's own preprocess on the decoded image)."""
    datas = [jpeg(640, 480, 1), jpeg(300, 500, 2, orientation=6), jpeg(33, 17, 3), jpeg(1200, 900, 4, orientation=3)]
    imgs = [decode_image(d, f"i{i}") for i, d in enumerate(datas)]
    ref = clip._forward(clip.model.preprocess(imgs))
    for got in (clip.encode_images(datas), clip.encode_images(imgs), clip.encode_images(datas[:1])):
        for e, w in zip(got, ref):
            assert e.vector.dtype == np.float32 and float(np.dot(e.vector, w)) >= 0.999
    pixels = clip.pixels.batch(imgs)
    want = clip.model.preprocess(imgs)["pixel_values"].numpy()
    assert pixels.dtype == np.float32 and pixels.shape == want.shape and np.abs(pixels - want).max() < 0.05


def bomb_png(side: int = 20000) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_limits_hold_on_the_pooled_path_and_before_the_gpu_decoder(clip):
    for check in (lambda d: clip.encode_images([jpeg(40, 40), d]), lambda d: header_check(d, "images[1]")):
        with pytest.raises(ImageError, match="decompression bomb"):
            check(bomb_png())
        with pytest.raises(ImageError, match="not an image"):
            check(b"plain text")
    with pytest.raises(PayloadTooLarge):
        header_check(jpeg(64, 64), "f", max_bytes=100)
    small = type(clip.pixels)(shortest_edge=32, crop=(32, 32), mean=[0, 0, 0], std=[1, 1, 1], max_pixels=1000)
    with pytest.raises(ImageError, match="exceeds the limit"):
        small.batch([jpeg(64, 64), jpeg(10, 10)])
    assert header_check(jpeg(64, 48, orientation=6), "f") == ("JPEG", 64, 48, 6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_exif_rotation_matches_pillow(orientation):
    """The GPU path turns decoded tensors itself: checked here on CPU tensors against ImageOps.exif_transpose."""
    import torch

    data = jpeg(24, 16, orientation=orientation)
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    raw = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)
    assert np.array_equal(_orient(raw, orientation).permute(1, 2, 0).numpy(), want)
