"""Command-line entry points: ``python main.py`` and the ``imbalance-train`` console script.

Both compose the config with Hydra (``config.yaml`` and the groups under ``conf/``), set up the
process (:func:`imbalance.runtime.configure_process`) and call :func:`imbalance.pipeline.run`. A
mistake the user can fix (a path, a key, a name, a value) ends in one line ``error: ...`` and exit
status 2, never in a traceback.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional

from .config import CONFIG_DIR, register_configs, register_resolvers


def rewrite_legacy_argv(argv: List[str]) -> List[str]:
    """``+experiment=X`` (the older spelling of a preset) -> ``experiment=X``."""
    return [a[1:] if a.startswith("+experiment=") else a for a in argv]


def train_command(cfg: Any) -> float:
    """What ``python main.py ...`` runs with Hydra's composed ``cfg``."""
    from .config import with_schema
    from .errors import UserError
    from .pipeline import run
    from .runtime import configure_process

    try:
        configure_process(with_schema(cfg))
        return run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def hydra_entry(config_dir: str, argv: Optional[List[str]] = None) -> Any:
    """Run :func:`train_command` as a Hydra application whose primary config is
    ``<config_dir>/config.yaml``."""
    import hydra

    register_configs()
    register_resolvers()
    sys.argv = [sys.argv[0]] + rewrite_legacy_argv(list(sys.argv[1:] if argv is None else argv))
    app = hydra.main(config_path=config_dir, config_name="config", version_base="1.3")(train_command)
    return app()


def main() -> Any:
    """The ``imbalance-train`` console script (same options as ``python main.py``)."""
    return hydra_entry(CONFIG_DIR)
