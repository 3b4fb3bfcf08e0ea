"""Start the test OpenID Connect provider (provider.mjs, npm's certified `oidc-provider`).

Its npm packages are installed once per lock file into var/cache/ (`npm ci`, under a file
lock so that parallel test workers install once), and the script runs from there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.stack import ROOT, spawn, stop
from tests.ports import port
from tests.support import eventually

HERE = Path(__file__).resolve().parent
CACHE = ROOT / "var" / "cache"
IN_CI = bool(os.environ.get("CI"))


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(reason + ", and CI must run the single sign-on tests.")
    pytest.skip(reason)


def installed() -> Path:
    """The directory holding node_modules/oidc-provider for this lock file (installed if missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        _unavailable("Node.js and npm are needed for the test OpenID Connect provider (apt-get install nodejs npm)")
    lock = (HERE / "package-lock.json").read_bytes()
    target = CACHE / f"oidc-provider-{hashlib.sha256(lock).hexdigest()[:16]}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "oidc-provider.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (target / "node_modules" / "oidc-provider").is_dir():
            work = Path(tempfile.mkdtemp(prefix="oidc-provider-", dir=CACHE))
            shutil.copy(HERE / "package.json", work)
            shutil.copy(HERE / "package-lock.json", work)
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                shutil.rmtree(work, ignore_errors=True)
                _unavailable(f"npm ci of the test OpenID Connect provider failed: {done.stderr[-2000:]}")
            shutil.rmtree(target, ignore_errors=True)
            work.rename(target)
    # The script imports oidc-provider as an ES module: it must sit beside node_modules.
    shutil.copy(HERE / "provider.mjs", target / "provider.mjs")
    return target


@dataclass
class Provider:
    issuer: str
    client_id: str
    client_secret: str
    accounts_file: Path
    process: subprocess.Popen

    def set_accounts(self, accounts: dict[str, dict]) -> None:
        """Replace the provider's accounts: {username: {password, email, email_verified, name, groups}}."""
        tmp = self.accounts_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(accounts))
        tmp.replace(self.accounts_file)  # whole, never half-written for the provider to read


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a 127.0.0.1 URL the test built)
            return response.status == 200
    except OSError:
        return False


def start(*, portal_url: str, directory: Path) -> Provider:
    home = installed()
    listen = port()
    issuer = f"http://127.0.0.1:{listen}"
    accounts_file = directory / "accounts.json"
    log = directory / "provider.log"
    provider = Provider(
        issuer=issuer,
        client_id="portal-test",
        client_secret="portal-test-client-secret",
        accounts_file=accounts_file,
        process=None,  # type: ignore[arg-type]
    )
    provider.set_accounts({})
    env = dict(
        os.environ,
        PORT=str(listen),
        CLIENT_ID=provider.client_id,
        CLIENT_SECRET=provider.client_secret,
        REDIRECT_URI=f"{portal_url}/login/sso/callback",
        POST_LOGOUT_REDIRECT_URI=f"{portal_url}/login/",
        ACCOUNTS_FILE=str(accounts_file),
        NODE_ENV="test",
    )
    with open(log, "w") as out:
        provider.process = spawn([shutil.which("node"), "provider.mjs"], cwd=home, env=env, stdout=out, stderr=out)
    ready = eventually(
        lambda: provider.process.poll() is not None or _answers(f"{issuer}/.well-known/openid-configuration"),
        timeout=30,
    )
    if not ready or provider.process.poll() is not None:
        stop(provider.process)
        raise RuntimeError(f"The test OpenID Connect provider did not start:\n{log.read_text()[-3000:]}")
    return provider


def stop_provider(provider: Provider) -> None:
    stop(provider.process)
