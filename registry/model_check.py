"""Run a model's load-and-predict check in a separate, limited process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from core import sandbox
from core.errors import InvalidInput, Unavailable

# The one part of the source tree a process that runs model code sees.
CODE = Path(__file__).resolve().parent.parent / "modelserver"

# What a model's failure may say back to the person registering it. The text comes from the
# model's own code (an exception message, the check's report): enough to fix the artifact,
# and never a channel for whatever that code could read.
ERROR_MAX_CHARS = 300


def _summary(text: Any) -> str:
    """The first line of `text`, cut to ERROR_MAX_CHARS characters."""
    line = next(iter(str(text).strip().splitlines()), "") or "no message"
    return line if len(line) <= ERROR_MAX_CHARS else line[:ERROR_MAX_CHARS] + "…"


def unsandboxed_refusal(what: str, allowed_by: str) -> str:
    """'' if model code can be sandboxed here, else the message that refuses to run it."""
    reason = sandbox.unavailable_reason(settings.SANDBOX_BWRAP)
    if not reason:
        return ""
    return (
        f"This portal cannot run {what} in a sandbox: {reason}. Model code is not run unsandboxed unless "
        f"an admin allows it ({allowed_by}), which is only safe on a single-user machine."
    )


def check_can_run() -> bool:
    """True if the load check runs sandboxed, False if unsandboxed as an admin allowed;
    raises Unavailable (saying why) where it cannot run at all."""
    refusal = unsandboxed_refusal("the registration check", "ALLOW_UNSANDBOXED_MODEL_CHECK=1")
    if refusal and not settings.ALLOW_UNSANDBOXED_MODEL_CHECK:
        raise Unavailable(refusal)
    return not refusal


def check_sandbox(name: str) -> sandbox.Sandbox:
    """The sandbox a load check runs in, or an unsandboxed one if an admin allowed that."""
    sandboxed = check_can_run()
    return sandbox.Sandbox(
        name=name,
        bwrap=settings.SANDBOX_BWRAP if sandboxed else "",
        limits=sandbox.Limits(
            memory_mb=settings.MODEL_CHECK_MEMORY_MB,
            processes=settings.SANDBOX_MAX_PROCESSES,
            cpu_seconds=settings.MODEL_CHECK_TIMEOUT_SECONDS + 5,
            tmp_mb=settings.SANDBOX_TMP_MB,
        ),
        die_with_parent=True,
    )


class ModelCheck:
    """One load-and-predict check of an artifact, in its own sandboxed process.

    Loading runs the model's code (a pickle is a program), so it never happens in the web
    server: the child runs in a sandbox (core/sandbox.py) that sees nothing of the portal,
    with memory, CPU time and process limits, and a wall-clock limit on top. The process is
    started before the artifact has finished uploading and imports the flavor libraries
    meanwhile (about as long as the import would otherwise add to every registration). Its
    sandbox sees one empty directory, read-only, at /model; once the artifact is complete
    it is linked in there (same filesystem: no copy) and the request names it.
    """

    ARTIFACT = "/model/artifact"

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.proc: subprocess.Popen | None = None
        self.refusal: Unavailable | None = None
        self._sandbox: sandbox.Sandbox | None = None
        # An empty directory the artifact is linked into before the check reads it; the
        # sandbox sees this directory (read-only) and nothing else of the portal's files.
        checks = Path(settings.ARTIFACT_ROOT) / "checks"  # beside the store: linking is not copying
        checks.mkdir(parents=True, exist_ok=True)
        self._workdir = tempfile.TemporaryDirectory(prefix="check-", dir=checks)
        try:
            self._sandbox = check_sandbox(f"check-{os.getpid()}-{id(self):x}")
        except Unavailable as exc:
            self.refusal = exc
            return
        model_dir = Path(self._workdir.name)
        self._sandbox.read_only[model_dir] = str(Path(self.ARTIFACT).parent)
        argv = [sys.executable, "-m", "modelserver.check", "--preload"]
        argv += ["--max-processes", str(settings.SANDBOX_MAX_PROCESSES)]
        self.proc = subprocess.Popen(
            self._sandbox.command(argv, code=CODE),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self._workdir.name,
            **self._sandbox.popen_kwargs(code=CODE),
        )

    @property
    def sandboxed(self) -> bool:
        return bool(self._sandbox and self._sandbox.sandboxed)

    def _place(self, path: Path) -> str:
        """Put the artifact where the check process will look for it; return that path."""
        if not self.sandboxed:
            return str(path)
        target = Path(self._workdir.name) / "artifact"
        try:
            os.link(path, target)  # same filesystem: no copy of a large file
        except OSError:
            shutil.copyfile(path, target)
        target.chmod(0o444)
        return self.ARTIFACT

    def cancel(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.proc.communicate(timeout=5)
        if self._sandbox is not None:
            self._sandbox.release()
        with contextlib.suppress(OSError):
            self._workdir.cleanup()

    def run(self, *, flavor: str, path: Path, instances: list[Any], field_order: list[str] | None) -> list[Any]:
        """Return the predictions for `instances`, or raise InvalidInput saying what failed."""
        if self.refusal is not None:
            self.cancel()
            raise self.refusal
        timeout = settings.MODEL_CHECK_TIMEOUT_SECONDS
        try:
            artifact = self._place(path)
        except OSError:
            self.cancel()
            raise
        request = {"flavor": flavor, "artifact": artifact, "instances": instances, "field_order": field_order}
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
        if code is not None and (code < 0 or 128 < code < 128 + signal.NSIG):  # bwrap says 128 + signal
            killed_by = signal.Signals(-code if code < 0 else code - 128)
            hint = " It used more CPU time than the check allows." if killed_by == signal.SIGXCPU else ""
            raise InvalidInput(
                f"The model process was killed by {killed_by.name} while loading or predicting.{hint}",
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
