"""The collection catalog: each collection's config in DATA_DIR/catalog/<name>.json, which every ingress replica
reads and writes. Paths are built only from names that pass the name rule (cluster.names), so no request can make
one point elsewhere (`../x`, an absolute path); files whose stem is not a valid name are not prism's and are
ignored."""
from __future__ import annotations

import logging
from pathlib import Path

from cluster.config import CollectionConfig
from cluster.names import check_name, name_problem

log = logging.getLogger("prism.catalog")


class Catalog:
    def __init__(self, data_path: Path):
        self.dir = data_path / "catalog"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}.json"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json") if name_problem(p.stem) is None)

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> CollectionConfig | None:
        """The config kept under `name`; None when the file holds another collection's (not prism's doing)."""
        cfg = CollectionConfig.model_validate_json(self.path(name).read_text())
        if cfg.name != name:
            log.warning("catalog file %s.json holds collection %r: ignored", name, cfg.name)
            return None
        return cfg

    def save(self, cfg: CollectionConfig) -> None:
        path = self.path(cfg.name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(cfg.model_dump_json(indent=2))
        tmp.replace(path)

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
