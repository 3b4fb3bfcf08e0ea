from __future__ import annotations

import re

from core.errors import InvalidInput

_SEMVER = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$")


def parse(version: str, *, field: str = "version") -> tuple[int, int, int]:
    """MAJOR.MINOR.PATCH, each a whole number without leading zeros."""
    match = _SEMVER.match(version or "")
    if not match:
        raise InvalidInput(f"'{version}' is not a semantic version. Use MAJOR.MINOR.PATCH, e.g. 1.4.0.", field=field)
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def render(semver: tuple[int, int, int]) -> str:
    return ".".join(str(n) for n in semver)
