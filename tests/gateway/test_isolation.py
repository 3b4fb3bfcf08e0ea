"""The data plane runs without the control plane: importing the gateway and the model server
loads no Django and no portal app, and the contract loads nothing else of the gateway."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.gateway.harness import ROOT

CONTROL_PLANE = ("django", "rest_framework", "portal", "accounts", "registry", "deployments", "core")


def modules_loaded_by(*imports: str) -> list[str]:
    """Every module a fresh interpreter has loaded after the imports, with only the repository
    on its path and a minimal environment (no DJANGO_SETTINGS_MODULE to lean on)."""
    code = f"import json, sys\nimport {', '.join(imports)}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_data_plane_loads_no_control_plane_module():
    loaded = modules_loaded_by("gateway.app", "gateway.contract", "modelserver.server", "modelserver.__main__")
    assert "gateway.app" in loaded and "modelserver.server" in loaded  # the check itself worked
    assert [m for m in loaded if m.split(".")[0] in CONTROL_PLANE] == []


def test_the_contract_stands_alone():
    # The control plane imports the contract: it must not drag the gateway's runtime in with it.
    loaded = set(modules_loaded_by("gateway.contract"))
    assert "gateway.contract" in loaded
    assert loaded.isdisjoint({"gateway.app", "gateway.state", "gateway.metrics", "redis", "aiohttp"})
