"""The client and the `portal` command against a real portal (gunicorn) on the test database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.portal_client.harness import Cli, Proxy


@pytest.fixture
def cli_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    # The in-process client reads the same places as the command.
    for name in [k for k in os.environ if k.startswith("PORTAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PORTAL_CONFIG", str(home / "config" / "config.json"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    return home


@pytest.fixture
def cli(portal_server, cli_home) -> Cli:
    return Cli(home=cli_home, url=portal_server.url)


@pytest.fixture
def proxy(portal_server):
    p = Proxy(portal_server.port)
    yield p
    p.close()
