"""Session-wide test settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from smoothexplain.protocol.local_server import STATE_DIR_ENV


@pytest.fixture(scope="session", autouse=True)
def private_server_record(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Test servers record themselves here, not in the user's ~/.local/state (local_server.py),
    and tests see no record of a server the user left running."""
    previous = os.environ.get(STATE_DIR_ENV)
    os.environ[STATE_DIR_ENV] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop(STATE_DIR_ENV, None)
    else:
        os.environ[STATE_DIR_ENV] = previous
