"""Old import paths of the modules that moved into rooms (issue 13), kept for one release.

`import smoothexplain.service` gives the very module `smoothexplain.serving.service` (not a
copy), so attributes, patches and isinstance checks agree under either name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["MOVED", "install"]

MOVED: dict[str, str] = {
    **{
        name: f"protocol.{name}"
        for name in ("errors", "options", "local_server", "images", "heatmap")
    },
    **{name: f"engine.{name}" for name in ("spec", "api")},
    **{
        name: f"serving.{name}"
        for name in (
            "admission",
            "allocator",
            "archive_command",
            "archiving",
            "budget",
            "codec",
            "config",
            "diskguard",
            "memory",
            "metrics",
            "modelcheck",
            "models",
            "service",
            "ts_entry",
            "ts_handler",
        )
    },
    **{
        name: f"ops.{name}" for name in ("exporter", "keyrotation", "launcher", "serve", "watchdog")
    },
    "cli": "client.cli",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The target module ran when it was imported: nothing more to do."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.partition(".")
        if package != __package__ or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(f"{package}.{MOVED[name]}"))


def install() -> None:
    """Put the finder on sys.meta_path once."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
