"""Cenv ids and file names: stdlib only, so the gateway can check a path without touching SQLite.

An id is 26 characters of lowercase base32 (16 random bytes, no padding); its file is
`{data}/{id}.sqlite`.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from pathlib import Path

LENGTH = 26
ID_RE = re.compile(rf"[a-z2-7]{{{LENGTH}}}")
SUFFIX = ".sqlite"


def new_id() -> str:
    """A fresh random cenv id."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def is_id(value: str) -> bool:
    """True if value has the shape of a cenv id (says nothing about existence)."""
    return len(value) == LENGTH and ID_RE.fullmatch(value) is not None


def path_for(data_dir: str | os.PathLike[str], cenv_id: str) -> Path:
    """Where a cenv's file lives; refuses anything that is not an id, so no path can escape."""
    if not is_id(cenv_id):
        raise ValueError("not a cenv id")
    return Path(data_dir) / f"{cenv_id}{SUFFIX}"
