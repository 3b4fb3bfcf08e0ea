"""Where the client finds the portal and its token: the environment, then a config file.

`PORTAL_URL` and `PORTAL_TOKEN` win over the file. The file (`PORTAL_CONFIG`, or
`$XDG_CONFIG_HOME/portal/config.json`, or `~/.config/portal/config.json`) is written with
0600 permissions in a 0700 directory, because it holds a secret.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    if explicit := os.environ.get("PORTAL_CONFIG"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "portal" / "config.json"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "portal"


@dataclass
class Settings:
    url: str
    token: str | None
    source: str  # where the token came from, for messages


def read_file() -> dict:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise OSError(f"Cannot read the config file {path}: {exc}. Fix or delete it, then `portal login`.") from None
    return data if isinstance(data, dict) else {}


def load(*, url: str | None = None, token: str | None = None) -> Settings:
    stored = read_file()
    resolved_url = url or os.environ.get("PORTAL_URL") or stored.get("url") or DEFAULT_URL
    if token:
        return Settings(resolved_url.rstrip("/"), token, "argument")
    if env_token := os.environ.get("PORTAL_TOKEN"):
        return Settings(resolved_url.rstrip("/"), env_token.strip(), "PORTAL_TOKEN")
    # A stored token belongs to the portal it was made for; never send it to another one.
    same_portal = stored.get("url", "").rstrip("/") == resolved_url.rstrip("/")
    stored_token = stored.get("token") if same_portal else None
    return Settings(resolved_url.rstrip("/"), stored_token, str(config_path()))


def save(*, url: str, token: str | None) -> Path:
    """Write the config file atomically with 0600 permissions (created that way, never widened)."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = {"url": url.rstrip("/")}
    if token:
        data["token"] = token
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
