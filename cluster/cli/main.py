"""The `prism` command: up, down, status, ingest, query, models (install, list), reshard, rebalance, snapshot, loadtest,
bench, keys.
The commands live by job in cluster/cli/serve.py (running an instance), cluster/cli/collection.py (one collection's
data) and cluster/cli/admin.py (model weights, API keys); here they are put together, in the order --help lists
them."""
from __future__ import annotations

import typer

from cluster.cli import collection, serve
from cluster.cli.admin import keys_app, models_app
from cluster.cli.snapshot import snapshot_app

app = typer.Typer(help="prism: sharded multimodal search on Ray + Milvus.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.command()(serve.up)
app.command()(serve.down)
app.command()(serve.status)
app.command()(collection.ingest)
app.command()(collection.query)
app.command()(collection.verify)
app.add_typer(models_app, name="models")
app.command()(collection.reshard)
app.command()(collection.rebalance)
app.add_typer(snapshot_app, name="snapshot")
app.command()(collection.loadtest)
app.add_typer(keys_app, name="keys")
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve.bench)


def main() -> None:
    app()

