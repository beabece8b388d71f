"""The package's rooms follow their dependencies (issue 13), and its public names are pinned.

Each module's module-level imports are read from its source (imports inside functions are
deferred on purpose: `smoothexplain serve` loads the serving room only when it runs).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "handler" / "smoothexplain"
ROOMS = ("protocol", "engine", "serving", "ops", "client", "explorer", "demo")
# Which of our rooms each room may import at module level ("_proto" is the generated wire
# format). The client, the protocol and the explorer page need no torch; the engine knows
# nothing of serving.
ALLOWED: dict[str, set[str]] = {
    "protocol": {"protocol", "_proto"},
    "engine": {"engine", "protocol"},
    "serving": {"serving", "engine", "protocol", "_proto"},
    "ops": {"ops", "serving", "engine", "protocol", "explorer", "_proto"},
    "client": {"client", "protocol", "_proto"},
    "explorer": {"explorer", "protocol", "_proto"},
    "demo": set(ROOMS) | {"_proto"},
}
NO_TORCH = ("protocol", "client", "explorer")
HEAVY = ("torch", "torchvision", "ts", "prometheus_client", "yaml", "captum")


def _modules(room: str) -> list[Path]:
    return sorted((PACKAGE / room).glob("*.py"))


def _top_level_imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module, line) of every import outside functions and TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found: list[tuple[str, int]] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = list(here[: len(here) - node.level])
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                found.append((module, node.lineno))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_imports_only_the_rooms_below_it(room: str) -> None:
    wrong = []
    for path in _modules(room):
        for module, line in _top_level_imports(path):
            parts = module.split(".")
            ours = parts[0] == "smoothexplain" and len(parts) > 1
            if ours and parts[1] in {*ROOMS, "_proto"} and parts[1] not in ALLOWED[room]:
                wrong.append(f"{path.name}:{line} imports {module}")
            if room in NO_TORCH and parts[0] in HEAVY:
                wrong.append(f"{path.name}:{line} imports {module}")
    assert not wrong, f"{room}/ reaches outside its room: {wrong}"


def test_the_rooms_cover_the_package() -> None:
    loose = sorted(
        p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "_moved.py"}
    )
    assert not loose, f"modules outside every room: {loose}"
    assert not (PACKAGE / "quality").exists(), "the quality study lives outside the package"


def test_every_module_declares_its_public_names() -> None:
    missing = [
        str(path.relative_to(PACKAGE))
        for room in ROOMS
        for path in _modules(room)
        if "__all__" not in path.read_text(encoding="utf-8") and path.name != "__init__.py"
    ]
    assert not missing, f"modules without __all__: {missing}"


def test_the_public_names_are_pinned() -> None:
    import smoothexplain
    import smoothexplain.client

    assert sorted(smoothexplain.__all__) == [
        "ExplainJob",
        "ExplainSpec",
        "Folded",
        "IgRule",
        "InvalidArgument",
        "JobResult",
        "Method",
        "NoiseKind",
        "NtType",
        "Scheduler",
        "SmoothExplainError",
        "explain",
        "fold_batchnorm",
        "make_spec",
    ]
    assert {"SmoothExplainClient", "ExplainError", "attribution"} <= set(
        smoothexplain.client.__all__
    )
    for name in smoothexplain.__all__:
        assert getattr(smoothexplain, name) is not None


@pytest.mark.parametrize(
    "imports",
    [
        "smoothexplain.client, smoothexplain.client.cli, smoothexplain.protocol.options",
        "smoothexplain.explorer",  # the page's server, inside serve but torch-free itself
    ],
)
def test_importing_the_client_loads_neither_torch_nor_serving(imports: str) -> None:
    code = (
        f"import sys, {imports};"
        "bad = sorted({'.'.join(m.split('.')[:2]) for m in sys.modules"
        " if m.split('.')[0] in {'torch', 'torchvision', 'ts', 'skimage'}"
        " or m.split('.')[:2] in (['smoothexplain', r] for r in ('serving', 'engine', 'ops'))});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("smoothexplain.service", "smoothexplain.serving.service"),
        ("smoothexplain.spec", "smoothexplain.engine.spec"),
        ("smoothexplain.launcher", "smoothexplain.ops.launcher"),
        ("smoothexplain.errors", "smoothexplain.protocol.errors"),
        ("smoothexplain.cli", "smoothexplain.client.cli"),
    ],
)
def test_old_import_paths_give_the_moved_module_itself(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)


def test_an_old_path_leaves_the_module_its_own_spec_and_runs_with_dash_m() -> None:
    code = (
        "import importlib, smoothexplain.engine.spec as real, smoothexplain.spec;"
        "assert real.__spec__.name == 'smoothexplain.engine.spec', real.__spec__;"
        "real.make_spec = None; importlib.reload(real); assert callable(real.make_spec)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "smoothexplain.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "explain" in done.stdout, done.stderr
