"""Directory groups → portal teams, roles and the approver role: one syntax for single sign-on
(OIDC_TEAM_MAP) and the company directory (LDAP_TEAM_MAP).

A map is a comma- or newline-separated list of `group=team:role` entries, e.g.
`ml-platform=platform:owner, data-science=ds:member, ds-leads=ds:maintainer`. A group may
map to several teams; when several of a person's groups map to the same team, the highest
role wins. Group names are compared without regard to case (directories treat them so).

Settings parse the maps at startup, so a typo stops the portal with the variable's name
instead of silently granting nothing. This module imports no models for that reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

ROLES = ("viewer", "member", "maintainer", "owner")  # lowest first: the rank is the index


@dataclass(frozen=True)
class TeamRule:
    group: str  # casefolded
    team: str
    role: str


def parse_team_map(text: str, variable: str) -> tuple[TeamRule, ...]:
    """Parse `group=team:role, ...`; raise ImproperlyConfigured naming `variable` on a bad entry."""
    rules = []
    for raw in text.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry:
            continue
        group, eq, target = entry.rpartition("=")
        team, colon, role = target.partition(":")
        group, team, role = group.strip(), team.strip(), role.strip().lower()
        if not eq or not group or not colon or not team:
            raise ImproperlyConfigured(
                f"{variable}: {entry!r} is not of the form group=team:role "
                f"(e.g. data-science=ds:member; entries separated by commas)."
            )
        if role not in ROLES:
            raise ImproperlyConfigured(f"{variable}: {entry!r} has the role {role!r}; use one of {', '.join(ROLES)}.")
        rules.append(TeamRule(group=group.casefold(), team=team, role=role))
    return tuple(rules)


def parse_group_list(text: str) -> frozenset[str]:
    return frozenset(g.strip().casefold() for g in text.replace("\n", ",").split(",") if g.strip())


def normalize_groups(value: object) -> list[str]:
    """The group names a provider sent: a list of strings, or one string (some providers send
    a single group so); anything else counts as no groups."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list | tuple | set | frozenset):
        return sorted({str(g) for g in value if isinstance(g, str) and g.strip()})
    return []


def teams_for(groups: Iterable[str], rules: Iterable[TeamRule]) -> dict[str, str]:
    """{team name: role} that these groups give, the highest role per team."""
    mine = {g.casefold() for g in groups}
    wanted: dict[str, str] = {}
    for rule in rules:
        if rule.group in mine and ROLES.index(rule.role) >= ROLES.index(wanted.get(rule.team, ROLES[0])):
            wanted[rule.team] = rule.role
    return wanted


def is_approver(groups: Iterable[str], approver_groups: frozenset[str]) -> bool:
    return any(g.casefold() in approver_groups for g in groups)
