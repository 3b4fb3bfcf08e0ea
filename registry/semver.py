from __future__ import annotations

import re

from core.errors import InvalidInput

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
# SemVer sets no bound on a part; the portal stores each in a 32-bit integer column, and nine
# digits always fit (999,999,999 < 2,147,483,647), whatever the database.
MAX_PART_DIGITS = 9


def parse(version: str, *, field: str = "version") -> tuple[int, int, int]:
    """MAJOR.MINOR.PATCH, each a whole number without leading zeros, of at most nine digits."""
    match = _SEMVER.match(version or "")
    if not match:
        raise InvalidInput(f"'{version}' is not a semantic version. Use MAJOR.MINOR.PATCH, e.g. 1.4.0.", field=field)
    if any(len(part) > MAX_PART_DIGITS for part in match.groups()):
        raise InvalidInput(
            f"'{version[:40]}' is a semantic version, but each part of the version may have at most "
            f"{MAX_PART_DIGITS} digits (the portal's limit).",
            field=field,
        )
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def render(semver: tuple[int, int, int]) -> str:
    return ".".join(str(n) for n in semver)
