"""Where the CLI writes what it makes (an export, an adapter): checked before the work starts."""

from __future__ import annotations

import os
from pathlib import Path


def why_not_creatable(path: Path) -> str | None:
    """Why `path` could not be made, from the nearest of its folders that exists (None: it can).
    Nothing is made here: a command that then fails leaves no empty folder behind."""
    folder = next((parent for parent in Path(path).parents if parent.exists()), None)
    if folder is None:
        return None
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    return None
