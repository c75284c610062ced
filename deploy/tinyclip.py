"""A tiny, randomly initialised CLIP saved as a Hugging Face directory: it exercises the real CLIP code path
(sentence-transformers loading, both towers, the processor) without weights from a hub. Used by the tests and by
the ingestion benchmark; its vectors mean nothing, its code path is the real one."""
from __future__ import annotations

import json
from pathlib import Path

DIM = 16


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tiny_clip(dest: Path, seed: int = 0, full_size: bool = False) -> Path:
    """Write a 16-d CLIP (byte-level vocabulary, 32x32 images) to `dest` and return it. `full_size`: towers and
    image processor of CLIP ViT-B/32 (512-d, 224x224, random weights: for throughput on a GPU, never quality)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}-tokenizer"
    work.mkdir(exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (work / "vocab.json").write_text(json.dumps(vocab))
    (work / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(work / "vocab.json"), str(work / "merges.txt"))
    side = 224 if full_size else 32
    images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    if full_size:  # transformers' CLIPConfig defaults are ViT-B/32's shapes
        cfg = CLIPConfig(text_config={"vocab_size": len(vocab), "bos_token_id": vocab["<|startoftext|>"],
                                      "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<|endoftext|>"]},
                         projection_dim=512)
        torch.manual_seed(seed)
        CLIPModel(cfg).save_pretrained(dest)
        CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(dest)
        return dest
    cfg = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(dest)
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(dest)
    return dest
