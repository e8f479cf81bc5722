"""Access to ../shared/ (the contract, the real stoney schema): present on CI, maybe not locally."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PROVBACKUP_SHARED_DIR", REPO.parent / "shared"))


def on_ci() -> bool:
    """True on CI, where every test must run and nothing may be skipped."""
    return bool(os.environ.get("CI"))


def shared_file(relative: str) -> Path:
    """A file under ../shared/; skips locally when it is absent, fails on CI."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is not present (the shared/ directory beside the repository)"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path
