"""Run a model's load-and-predict check in a separate, limited process."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from core.errors import InvalidInput

ROOT = Path(__file__).resolve().parent.parent

# What a model's failure may say back to the person registering it. The text comes from the
# model's own code (an exception message, the check's report): enough to fix the artifact,
# and never a channel for whatever that code could read.
ERROR_MAX_CHARS = 300


def _summary(text: Any) -> str:
    """The first line of `text`, cut to ERROR_MAX_CHARS characters."""
    line = next(iter(str(text).strip().splitlines()), "") or "no message"
    return line if len(line) <= ERROR_MAX_CHARS else line[:ERROR_MAX_CHARS] + "…"


def model_process_env() -> dict[str, str]:
    """The whole environment of a process that runs model code (the load check, a local
    model server): none of the portal's settings or secrets, and one thread per math
    library, for predictable memory and no thread pools reserving address space."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


class ModelCheck:
    """One load-and-predict check of an artifact, in its own process.

    Loading runs the model's code (a pickle is a program), so it never happens in the web
    server: the child gets an address-space limit before it reads its request, and a time
    limit. The process can be started before the artifact has finished uploading; it
    imports the flavor libraries meanwhile, which takes about as long as the import would
    otherwise add to every registration.
    """

    def __init__(self) -> None:
        limit = settings.MODEL_CHECK_MEMORY_MB * 1024 * 1024
        env = model_process_env()
        self.started = time.monotonic()
        # An empty working directory: the model's code starts away from the portal's files.
        self._workdir = tempfile.TemporaryDirectory(prefix="portal-check-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelserver.check", "--preload"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self._workdir.name,
            start_new_session=True,
        )
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(self.proc.pid, resource.RLIMIT_AS, (limit, limit))

    def cancel(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.communicate(timeout=5)
        with contextlib.suppress(OSError):
            self._workdir.cleanup()

    def run(self, *, flavor: str, path: Path, instances: list[Any], field_order: list[str] | None) -> list[Any]:
        """Return the predictions for `instances`, or raise InvalidInput saying what failed."""
        timeout = settings.MODEL_CHECK_TIMEOUT_SECONDS
        request = {"flavor": flavor, "artifact": str(path), "instances": instances, "field_order": field_order}
        try:
            stdout, stderr = self.proc.communicate(json.dumps(request).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise InvalidInput(
                f"The model did not load and predict its sample input within {timeout} s. Check that loading it "
                "does not wait on anything, or ask an admin to raise MODEL_CHECK_TIMEOUT_SECONDS.",
                field="artifact",
            ) from None
        finally:
            self.cancel()
        predictions = self._interpret(flavor, stdout, stderr)
        # The answer comes from the process that ran the model's code: trust its shape no more
        # than its words.
        if not isinstance(predictions, list) or len(predictions) != len(instances):
            raise InvalidInput(
                f"The model check answered something other than one prediction for each of the {len(instances)} "
                "sample instances.",
                field="artifact",
            )
        return predictions

    def _interpret(self, flavor: str, stdout: bytes, stderr: bytes) -> list[Any]:
        try:
            result = json.loads(stdout or b"{}")
        except ValueError:
            result = {}
        if not isinstance(result, dict):
            result = {}
        if result.get("ok"):
            return result["predictions"]
        if result.get("memory"):
            raise InvalidInput(
                f"The model ran out of memory while {'loading' if result.get('stage') == 'load' else 'predicting'}: "
                f"the check allows {settings.MODEL_CHECK_MEMORY_MB} MiB (MODEL_CHECK_MEMORY_MB).",
                field="artifact",
            )
        if "error" in result:
            error = _summary(result["error"])
            if result.get("stage") == "load":
                raise InvalidInput(f"The model does not load as flavor '{flavor}': {error}", field="artifact")
            raise InvalidInput(f"The model loads but fails on its sample input: {error}", field="sample_input")
        code = self.proc.returncode
        if code is not None and code < 0:
            raise InvalidInput(
                f"The model process was killed by {signal.Signals(-code).name} while loading or predicting.",
                field="artifact",
            )
        lines = stderr.decode(errors="replace").strip().splitlines()
        last = _summary(lines[-1] if lines else "no output")
        hint = " It may need more memory than MODEL_CHECK_MEMORY_MB allows." if "MemoryError" in last else ""
        raise InvalidInput(f"The model check failed: {last}.{hint}", field="artifact")


def model_check(
    *, flavor: str, path: Path, instances: list[Any], field_order: list[str] | None, check: ModelCheck | None = None
) -> list[Any]:
    return (check or ModelCheck()).run(flavor=flavor, path=path, instances=instances, field_order=field_order)
