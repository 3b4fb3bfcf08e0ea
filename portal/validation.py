"""Run a model's load-and-predict check in a separate, limited process."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings

from portal.errors import InvalidInput

ROOT = Path(__file__).resolve().parent.parent


def model_check(*, flavor: str, path: Path, instances: list[Any], field_order: list[str] | None) -> list[Any]:
    """Load the artifact and predict the sample; return the predictions or raise InvalidInput.

    Loading runs the model's code (a pickle is a program), so it runs in its own process
    with an address-space limit and a time limit, never in the web server.
    """
    timeout = settings.MODEL_CHECK_TIMEOUT_SECONDS
    limit = settings.MODEL_CHECK_MEMORY_MB * 1024 * 1024
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        # One thread each: predictable memory, and no thread pools reserving address space.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelserver.check", "--flavor", flavor, "--artifact", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        # The child reads its request before loading anything, so the limit is in place
        # before any of the model's code runs.
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (limit, limit))
        stdout, stderr = proc.communicate(
            json.dumps({"instances": instances, "field_order": field_order}).encode(), timeout=timeout
        )
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise InvalidInput(
            f"The model did not load and predict its sample input within {timeout} s. "
            "Check that loading it does not wait on anything, or ask an admin to raise MODEL_CHECK_TIMEOUT_SECONDS.",
            field="artifact",
        ) from None
    except ProcessLookupError:
        stdout, stderr = proc.communicate()
    try:
        result = json.loads(stdout or b"{}")
    except json.JSONDecodeError:
        result = {}
    if result.get("ok"):
        return result["predictions"]
    if "error" in result:
        if result.get("stage") == "load":
            message = f"The model does not load as flavor '{flavor}': {result['error']}"
        else:
            message = f"The model loads but fails on its sample input: {result['error']}"
        return _refuse(message, field="artifact" if result.get("stage") == "load" else "sample_input")
    if proc.returncode and proc.returncode < 0:
        what = signal.Signals(-proc.returncode).name
        return _refuse(f"The model process was killed by {what} while loading or predicting.", field="artifact")
    tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    memory_hint = " It may need more memory than MODEL_CHECK_MEMORY_MB allows." if "MemoryError" in tail[0] else ""
    return _refuse(f"The model check failed: {tail[0][:300]}.{memory_hint}", field="artifact")


def _refuse(message: str, *, field: str):
    raise InvalidInput(message, field=field)
