"""Hostile model artifacts: a pyfunc and a pickle whose code, when loaded, tries to reach
what model code must never reach, and reports what it managed as its predictions.

Each probe answers "reached" or "blocked". The same probe code run outside any sandbox (as
the portal's own user) reaches everything: `run_unsandboxed` is the control that shows the
probes work, so "blocked" in a sandbox means the sandbox blocked it.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The probes, as model code. `TARGETS` is filled in per test; `report()` returns a dict.
PROBE = r"""
import os, socket

TARGETS = __TARGETS__

def _read(path):
    with open(path, "rb") as handle:
        handle.read(16)

def _list(path):
    os.listdir(path)

def _tcp(port):
    socket.create_connection(("127.0.0.1", port), timeout=1).close()

def _unix(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1)
    try:
        sock.connect(path)
    finally:
        sock.close()

def _write(path):
    with open(path, "w") as handle:
        handle.write("written by model code")

def _environment():
    if TARGETS["canary"] in "".join(f"{k}={v}" for k, v in os.environ.items()):
        return
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    if TARGETS["canary"].encode() in handle.read():
                        return
            except OSError:
                pass
    raise PermissionError("no environment with the canary in reach")

def _parent_process():
    with open(f"/proc/{TARGETS['portal_pid']}/cmdline", "rb") as handle:
        handle.read()

def report():
    checks = {"environment": _environment, "portal_process": _parent_process}
    for name, path in TARGETS["read"].items():
        checks[f"read_{name}"] = (lambda p: lambda: _read(p))(path)
    for name, path in TARGETS["list"].items():
        checks[f"list_{name}"] = (lambda p: lambda: _list(p))(path)
    for name, port in TARGETS["tcp"].items():
        checks[f"connect_{name}"] = (lambda p: lambda: _tcp(p))(port)
    for name, path in TARGETS["unix"].items():
        checks[f"connect_{name}"] = (lambda p: lambda: _unix(p))(path)
    for name, path in TARGETS["write"].items():
        checks[f"write_{name}"] = (lambda p: lambda: _write(p))(path)
    found = {}
    for name, check in checks.items():
        try:
            check()
            found[name] = "reached"
        except Exception:
            found[name] = "blocked"
    return found
"""


@dataclass
class Targets:
    canary: str
    portal_pid: int
    read: dict[str, str] = field(default_factory=dict)
    list: dict[str, str] = field(default_factory=dict)
    tcp: dict[str, int] = field(default_factory=dict)
    unix: dict[str, str] = field(default_factory=dict)
    write: dict[str, str] = field(default_factory=dict)

    def code(self) -> str:
        return PROBE.replace("__TARGETS__", repr(asdict(self)))


def pyfunc(path: Path, targets: Targets) -> Path:
    """A pyfunc model that probes when it loads and predicts its report for every instance."""
    path.write_text(
        targets.code() + "\nREPORT = report()\n\ndef predict(instances):\n    return [REPORT for _ in instances]\n"
    )
    return path


class _Payload:
    """Pickles into a call of eval() that runs the probes and returns a model with predict()."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        expression = (
            "(exec(code, scope), type('Model', (), {'report': scope['report'](), "
            "'predict': lambda self, rows: [self.report for _ in rows]})())[1]"
        )
        return (eval, (expression, {"code": self.code, "scope": {}}))


def hostile_pickle(path: Path, targets: Targets) -> Path:
    """A pickle (served as the sklearn flavor) that probes while it is unpickled."""
    path.write_bytes(pickle.dumps(_Payload(targets.code())))
    return path


def run_unsandboxed(targets: Targets) -> dict[str, str]:
    """The control: the same probes, run as the test's own user, with its environment."""
    script = targets.code() + "\nimport json\nprint(json.dumps(report()))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, timeout=60)
    return json.loads(out.stdout)
