"""The git commit of the code that runs, for run records."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(path: str | Path | None = None) -> dict[str, str | bool | None]:
    """``commit`` (full hash) and ``dirty`` (uncommitted changes) of the repository holding ``path``.

    ``path`` defaults to this package's folder, so the commit is that of the detrlab code that runs,
    whatever the working directory. Outside a git checkout (an installed wheel) or without a ``git``
    executable both values are ``None``.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}
