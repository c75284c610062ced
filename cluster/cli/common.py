"""What every `prism` subcommand shares: the consoles it prints on, failing with a message and an exit code, the
--collection name rule, the --api-key option, and where the recorded local instance answers."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

# Markup off: the CLI prints text it did not write (server messages, names, paths, an HAProxy error quoting
# `[file:55]`), which rich would read as markup (and fail on with MarkupError). Colour is given explicitly (Text).
console = Console(markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)  # error messages are never hard-wrapped: scripts grep them


def fail(message: str, code: int = 1) -> None:
    err.print(Text.assemble(("error:", "red"), " ", str(message)))
    raise typer.Exit(code)


def check_collection(value: Optional[str]) -> Optional[str]:
    """A --collection option: the name rule (cluster.names) before any request or path is built from it."""
    from cluster.names import name_problem

    if value is not None and name_problem(value):
        fail(name_problem(value), 2)
    return value


def base_url(url: Optional[str], data_dir: str) -> str:
    if url:
        return url.rstrip("/")
    from cluster.cli.bootstrap import read_state

    state = read_state(data_dir)
    if not state:
        fail(f"no running prism recorded in {Path(data_dir).resolve()}; start one with `prism up --detach` "
              "or pass --url")
    return state["url"]


def grpc_target(data_dir: str) -> str | None:
    from cluster.cli.bootstrap import read_state

    return (read_state(data_dir) or {}).get("grpc")


API_KEY = typer.Option(None, "--api-key", envvar="PRISM_API_KEY", help="API key (default: $PRISM_API_KEY).")
