"""Sign-in with the company directory against a real slapd (started here in a temp dir, loaded
with ldapadd): directory passwords create users with the mapped teams and roles, a group
change is picked up at the next sign-in, and a directory that is down gives a clear message
while a local admin still signs in with their local password."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.test import Client

from accounts import services
from accounts.mapping import parse_group_list, parse_team_map
from accounts.models import AuditAction, AuditEvent, ExternalIdentity, IdentitySource, Membership, User
from scripts.stack import spawn, stop
from tests.factories import PASSWORD, make_user
from tests.ports import port
from tests.support import eventually

pytestmark = [pytest.mark.django_db, pytest.mark.end_to_end]

try:
    import django_auth_ldap  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise  # `make test` installs requirements-ldap.txt: in CI these tests must run
    pytest.skip("django-auth-ldap is not installed: pip install -r requirements-ldap.txt", allow_module_level=True)
from accounts.ldap_settings import ldap_settings  # noqa: E402 (needs python-ldap)

SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "directory-admin-secret"  # a test directory's
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
DIRECTORY_PASSWORDS = {"dana": "dana-directory-pw", "erik": "erik-directory-pw"}
TEAM_MAP = "ml-platform=platform:owner, data-science=ds:member, ds-leads=ds:maintainer"


@dataclass
class Directory:
    uri: str
    base: Path
    process: subprocess.Popen | None = None

    def modify(self, ldif: str) -> None:
        _ldap_tool("ldapmodify", self.uri, ldif)


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason + ", and CI must run the directory tests.")
    pytest.skip(reason)


def _ldap_tool(tool: str, uri: str, ldif: str) -> None:
    done = subprocess.run(
        [tool, "-x", "-H", uri, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
        input=ldif,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def _slapd_start(directory: Directory) -> None:
    log = directory.base / "slapd.log"
    with open(log, "a") as out:
        directory.process = spawn(
            ["slapd", "-d", "0", "-h", directory.uri + "/", "-f", str(directory.base / "slapd.conf")],
            stdout=out,
            stderr=out,
        )

    def answers() -> bool:
        if directory.process.poll() is not None:
            return True
        probe = subprocess.run(
            ["ldapsearch", "-x", "-H", directory.uri, "-b", "", "-s", "base", "namingContexts"],
            capture_output=True,
            timeout=10,
        )
        return probe.returncode == 0

    eventually(answers, timeout=30, interval=0.1)
    if directory.process.poll() is not None:
        raise RuntimeError(f"slapd did not start:\n{log.read_text()[-3000:]}")


def _people_and_groups() -> str:
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n",
        f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
    ]
    for uid, password in DIRECTORY_PASSWORDS.items():
        entries.append(
            f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid.title()}\n"
            f"sn: {uid.title()}son\ngivenName: {uid.title()}\nmail: {uid}@example.com\nuserPassword: {password}\n"
        )
    groups = {"data-science": ["dana", "erik"], "ml-platform": ["dana"], "it-approvers": ["dana"], "ds-leads": ["erik"]}
    for name, members in groups.items():
        lines = "".join(f"member: uid={m},ou=people,{SUFFIX}\n" for m in members)
        entries.append(f"dn: cn={name},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {name}\n{lines}")
    return "\n".join(entries)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    slapd = shutil.which("slapd") or ("/usr/sbin/slapd" if os.path.exists("/usr/sbin/slapd") else None)
    if not slapd or not shutil.which("ldapadd"):
        _unavailable("slapd and ldap-utils are not installed (`make test` apt-installs them as root)")
    base = tmp_path_factory.mktemp("slapd")
    (base / "db").mkdir()
    includes = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in SCHEMAS)
    (base / "slapd.conf").write_text(
        f"{includes}"
        "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
        f"pidfile {base}/slapd.pid\nargsfile {base}/slapd.args\n"
        f'database mdb\nmaxsize 10485760\nsuffix "{SUFFIX}"\nrootdn "{ROOT_DN}"\nrootpw {ROOT_PASSWORD}\n'
        f"directory {base}/db\n"
        "access to attrs=userPassword by anonymous auth by self write by * none\n"
        "access to * by * read\n"
    )
    found = Directory(uri=f"ldap://127.0.0.1:{port()}", base=base)
    _slapd_start(found)
    _ldap_tool("ldapadd", found.uri, _people_and_groups())
    yield found
    if found.process is not None:
        stop(found.process)


@pytest.fixture
def directory_sign_in(settings, directory, admin):
    """Settings as LDAP_SERVER_URI and friends make them, pointing at the test directory."""
    env = {
        "LDAP_SERVER_URI": directory.uri,
        "LDAP_BIND_DN": ROOT_DN,
        "LDAP_BIND_PASSWORD": ROOT_PASSWORD,
        "LDAP_USER_SEARCH_BASE": f"ou=people,{SUFFIX}",
        "LDAP_GROUP_SEARCH_BASE": f"ou=groups,{SUFFIX}",
        "LDAP_GROUP_TYPE": "groupOfNames",
        "LDAP_TIMEOUT_SECONDS": "3",
    }
    for name, value in ldap_settings(env).items():
        setattr(settings, name, value)
    settings.LDAP_SERVER_URI = directory.uri
    settings.LDAP_TEAM_MAP = parse_team_map(TEAM_MAP, "LDAP_TEAM_MAP")
    settings.LDAP_APPROVER_GROUPS = parse_group_list("it-approvers")
    settings.AUTHENTICATION_BACKENDS = ["accounts.directory.DirectoryBackend", *settings.AUTHENTICATION_BACKENDS]
    for name in ("platform", "ds"):
        services.team_create(actor=admin, name=name)
    return directory


def sign_in(username: str, password: str) -> tuple[Client, object]:
    client = Client()
    response = client.post("/login/", {"username": username, "password": password})
    return client, response


def roles_of(user: User) -> dict[str, tuple[str, str]]:
    return {m.team.name: (m.role, m.managed_by) for m in Membership.objects.filter(user=user).select_related("team")}


def test_a_directory_password_creates_the_user_with_the_mapped_teams_and_roles(directory_sign_in):
    client, response = sign_in("dana", DIRECTORY_PASSWORDS["dana"])

    assert response.status_code == 302, response.content.decode()[:2000]
    user = User.objects.get(username="dana")
    assert client.session["_auth_user_id"] == str(user.pk)
    assert (user.email, user.first_name, user.last_name) == ("dana@example.com", "Dana", "Danason")
    assert not user.has_usable_password()  # the directory holds the password, not the portal
    assert user.is_approver
    assert roles_of(user) == {"platform": ("owner", "ldap"), "ds": ("member", "ldap")}
    assert ExternalIdentity.objects.get(user=user).source == IdentitySource.LDAP
    created = AuditEvent.objects.get(action=AuditAction.USER_CREATE, target_id=str(user.pk))
    assert created.data == {"source": "ldap", "dn": f"uid=dana,ou=people,{SUFFIX}"}
    # Signed in to the pages a team member sees.
    assert client.get("/teams/platform/").status_code == 200

    wrong = sign_in("dana", "not-her-password")[1]
    assert wrong.status_code == 200
    assert "do not match" in wrong.content.decode()


def test_a_group_change_is_picked_up_at_the_next_sign_in(directory_sign_in, admin):
    sign_in("erik", DIRECTORY_PASSWORDS["erik"])
    erik = User.objects.get(username="erik")
    assert roles_of(erik) == {"ds": ("maintainer", "ldap")}
    web = services.team_create(actor=admin, name="web")
    services.membership_add(actor=admin, team=web, user=erik, role="viewer")  # by hand: stays

    directory_sign_in.modify(
        f"dn: cn=ds-leads,ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\n"
        f"member: uid=erik,ou=people,{SUFFIX}\n-\nadd: member\nmember: uid=dana,ou=people,{SUFFIX}\n\n"
        f"dn: cn=ml-platform,ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\n"
        f"member: uid=erik,ou=people,{SUFFIX}\n"
    )
    try:
        response = sign_in("erik", DIRECTORY_PASSWORDS["erik"])[1]
        assert response.status_code == 302

        erik.refresh_from_db()
        assert roles_of(erik) == {"ds": ("member", "ldap"), "platform": ("owner", "ldap"), "web": ("viewer", "")}
        assert erik.groups.filter(name="team:ds:member").exists()
        assert not erik.groups.filter(name="team:ds:maintainer").exists()
        change = AuditEvent.objects.get(action=AuditAction.MEMBERSHIP_CHANGE, target_id=str(erik.pk))
        assert change.data["from"] == "maintainer" and change.data["to"] == "member"
        assert change.actor is None and change.data["source"] == "ldap"
    finally:
        directory_sign_in.modify(
            f"dn: cn=ds-leads,ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\n"
            f"member: uid=erik,ou=people,{SUFFIX}\n-\ndelete: member\nmember: uid=dana,ou=people,{SUFFIX}\n\n"
            f"dn: cn=ml-platform,ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\n"
            f"member: uid=erik,ou=people,{SUFFIX}\n"
        )


def test_a_local_account_with_a_password_is_not_taken_over_by_the_same_name(directory_sign_in):
    local = make_user("erik", email="erik-local@example.com")

    response = sign_in("erik", DIRECTORY_PASSWORDS["erik"])[1]

    assert response.status_code == 200  # refused: the form again
    assert not ExternalIdentity.objects.filter(user=local).exists()
    assert sign_in("erik", PASSWORD)[1].status_code == 302  # the local password still works


def test_directory_down_says_so_and_a_local_admin_still_signs_in(directory_sign_in, admin):
    stop(directory_sign_in.process)
    directory_sign_in.process = None
    try:
        response = sign_in("dana", DIRECTORY_PASSWORDS["dana"])[1]
        assert response.status_code == 503
        assert "The company directory cannot be reached" in response.content.decode()
        assert not User.objects.filter(username="dana").exists()
        token = Client().post(
            "/api/v1/auth/token",
            {"username": "dana", "password": DIRECTORY_PASSWORDS["dana"], "name": "laptop"},
            content_type="application/json",
        )
        assert token.status_code == 503, token.content
        assert token.json()["detail"].startswith("The company directory cannot be reached")

        client, signed_in = sign_in(admin.username, PASSWORD)
        assert signed_in.status_code == 302
        assert client.session["_auth_user_id"] == str(admin.pk)
    finally:
        _slapd_start(directory_sign_in)
    # Back up: directory sign-in works again.
    assert sign_in("dana", DIRECTORY_PASSWORDS["dana"])[1].status_code == 302
