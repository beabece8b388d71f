"""Install a Debian package for the tests when its program is missing (CI runs as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

_POLICY = Path("/usr/sbin/policy-rc.d")


def ensure(package: str, *programs: str) -> list[str]:
    """Paths of `programs`, after `apt-get install package` if any of them is missing."""
    found = [shutil.which(p) for p in programs]
    if all(found):
        return [str(p) for p in found]
    if os.geteuid() != 0:
        raise RuntimeError(f"{package} is missing and only root can apt-get install it")
    # Maintainer scripts would start system-wide daemons (Prometheus on 0.0.0.0:9090, nginx on
    # :80); a policy-rc.d answering 101 forbids that. Only one we created is removed again.
    ours = not _POLICY.exists()
    if ours:
        _POLICY.write_text("#!/bin/sh\nexit 101\n")
        _POLICY.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]  # another session may be installing too
    try:
        subprocess.run(["apt-get", *lock, "update", "-q"], check=True, env=env)
        subprocess.run(
            ["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", package],
            check=True,
            env=env,
        )
    finally:
        if ours:
            _POLICY.unlink(missing_ok=True)
    found = [shutil.which(p) for p in programs]
    if not all(found):
        raise RuntimeError(f"apt-get installed {package} but {programs} are not all on PATH")
    return [str(p) for p in found]
