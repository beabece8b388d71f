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
from types import CodeType, ModuleType

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
    """Gives the moved module itself for its old name, leaving its own `__spec__` (so that
    `reload` keeps working) and, for `python -m <old name>`, its code."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.real: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.real = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The target ran when it was imported; undo the import system's `__spec__` swap."""
        if self.real is not None:
            module.__spec__ = self.real

    def get_code(self, fullname: str) -> CodeType:
        """For `python -m <old name>`: run the target as `__main__` under its own name."""
        return compile(
            f"import runpy\nrunpy.run_module({self.target!r}, run_name='__main__', alter_sys=True)",
            f"<{fullname} moved to {self.target}>",
            "exec",
        )

    def is_package(self, fullname: str) -> bool:
        return False


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
