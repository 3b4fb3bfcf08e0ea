"""A sandbox for processes that run model code (bubblewrap), and the limits they run under.

A model artifact is a program: a pickle runs code when it loads, a pyfunc is a Python
module. Whatever loads one (the registration check, a `local` model server) runs in a
bubblewrap sandbox that sees:

- read-only: /usr, the Python installation and virtualenv it runs with, the `modelserver`
  package (and nothing else of the source tree), and its own artifact;
- a private tmpfs /tmp of bounded size, and (a model server) one writable directory for
  the unix socket it answers on;
- a /proc of its own processes only, a minimal /dev, an empty environment but for the
  few variables passed in.

It has its own network namespace (only a loopback nobody else is on: no Redis, no portal,
no other model server, no outside network), its own user namespace as nobody with no
capabilities and no further user namespaces, and the kernel's no-new-privileges flag.
Memory (address space), CPU time and file sizes are bounded by rlimits set before it
starts; the number of processes by RLIMIT_NPROC, which the sandboxed entry point sets for
itself (so it counts the sandbox's own processes only) and, when the portal runs as root
(which the kernel exempts from RLIMIT_NPROC), by a pids cgroup where one can be had.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

NOBODY = 65534
# Where the modelserver package is mounted inside the sandbox (it is put on PYTHONPATH).
CODE_DIR = "/opt/portal"
# Variables passed into every process that runs model code: one thread per math library
# (predictable memory, no pools reserving address space) and no bytecode written.
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class SandboxUnavailable(Exception):
    """No sandbox can be had here; the message says why and what would give one."""


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    processes: int = 64
    cpu_seconds: int | None = None  # total CPU time (a check); a server gets a CPU share instead
    cpus: float | None = None  # a CPU quota, applied through a cpu cgroup where one can be had
    file_mb: int = 1024  # the largest file it may write (its /tmp is bounded separately)
    tmp_mb: int = 256
    open_files: int = 1024


@functools.cache
def _probe(bwrap: str) -> str:
    """'' if `bwrap` can build a sandbox here, else why not."""
    path = shutil.which(bwrap) if bwrap else None
    if not path:
        return "bubblewrap (bwrap) is not installed; on Debian or Ubuntu: apt-get install bubblewrap"
    try:
        probe = subprocess.run(
            [path, *_namespace_args(), "--ro-bind", "/usr", "/usr", *_usr_links(), "--", "true"],
            capture_output=True,
            timeout=10,
            env={},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} could not be run ({exc})"
    if probe.returncode != 0:
        reason = probe.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        return f"{path} cannot create a sandbox here ({reason[0]}); user namespaces may be disabled"
    return ""


def unavailable_reason(bwrap: str) -> str:
    """'' if model code can be sandboxed with `bwrap`, else a sentence saying why not."""
    return _probe(bwrap)


def _namespace_args() -> list[str]:
    return [
        "--unshare-all",  # user, pid, network, ipc, uts and cgroup namespaces of its own
        "--unshare-user",
        "--uid", str(NOBODY),
        "--gid", str(NOBODY),
        "--disable-userns",
        "--cap-drop", "ALL",
        "--hostname", "model",
        "--new-session",
        "--clearenv",
        "--proc", "/proc",
        "--dev", "/dev",
    ]  # fmt: skip


def _usr_links() -> list[str]:
    """/bin, /lib, ... as they are on this machine: symlinks into /usr (merged /usr) or
    read-only binds."""
    args: list[str] = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def _python_dirs() -> list[str]:
    """The directories the running Python needs (its installation and virtualenv), outside /usr."""
    dirs: list[str] = []
    for prefix in {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}:
        real = os.path.realpath(prefix)
        if not real.startswith("/usr/") and real not in dirs:
            dirs.append(real)
        if prefix != real and not prefix.startswith("/usr/") and prefix not in dirs:
            dirs.append(prefix)
    return sorted(dirs)


@dataclass
class Sandbox:
    """How one process that runs model code is started: `command(argv)` and `popen_kwargs()`.

    `read_only` and `writable` map host paths to where they appear inside. With
    `bwrap=''` (an admin allowed unsandboxed model code) the same command runs directly,
    with the same environment and rlimits but nothing else of the sandbox.
    """

    name: str
    limits: Limits
    bwrap: str
    read_only: dict[Path, str] = field(default_factory=dict)
    writable: dict[Path, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    die_with_parent: bool = False
    _cgroups: list[Path] = field(default_factory=list, init=False)

    @property
    def sandboxed(self) -> bool:
        return bool(self.bwrap)

    def environment(self, code_root: Path) -> dict[str, str]:
        if self.sandboxed:
            return {**BASE_ENV, "HOME": "/tmp", "PYTHONPATH": CODE_DIR, **self.env}  # noqa: S108 - its own tmpfs
        return {**BASE_ENV, "PYTHONPATH": str(code_root), **self.env}

    def command(self, argv: Sequence[str], *, code: Path) -> list[str]:
        """`argv` (a Python command line) as run in this sandbox; `code` is the modelserver
        package directory, the only part of the source tree it sees."""
        if not self.sandboxed:
            return list(argv)
        args = [shutil.which(self.bwrap) or self.bwrap, *_namespace_args(), "--ro-bind", "/usr", "/usr", *_usr_links()]
        if self.die_with_parent:
            args.append("--die-with-parent")
        # The private /tmp first: what is bound later (a checkout or venv under /tmp) stays visible.
        args += ["--size", str(self.limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]  # noqa: S108 - inside
        for path in _python_dirs():
            args += ["--ro-bind", path, path]
        args += ["--ro-bind", str(code), f"{CODE_DIR}/{code.name}"]
        for host, inside in self.read_only.items():
            args += ["--ro-bind", str(host), inside]
        for host, inside in self.writable.items():
            args += ["--bind", str(host), inside]
        for key, value in self.environment(code.parent).items():
            args += ["--setenv", key, value]
        return [*args, "--chdir", "/tmp", "--", *argv]  # noqa: S108 - inside the sandbox

    def popen_kwargs(self, *, code: Path) -> dict:
        """Environment and pre-exec limits for subprocess.Popen of `command(...)`."""
        self._cgroups = self._make_cgroups()
        limits, cgroups = self.limits, list(self._cgroups)

        memory = limits.memory_mb * 1024 * 1024
        file_bytes = limits.file_mb * 1024 * 1024
        pid_files = [str(group / "cgroup.procs") for group in cgroups]

        def preexec() -> None:
            # Runs in the forked copy of this (large) process: the address-space limit comes
            # last, once nothing here needs to allocate.
            for path in pid_files:
                with contextlib.suppress(OSError), open(path, "w") as procs:
                    procs.write(str(os.getpid()))
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if limits.cpu_seconds:
                resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        return {"env": self.environment(code.parent), "preexec_fn": preexec, "start_new_session": True}

    def release(self) -> None:
        """Remove the cgroups made for this sandbox (once its processes have ended)."""
        release_cgroups(self.name)
        self._cgroups = []

    # ---------------------------------------------------------------- cgroups

    def _make_cgroups(self) -> list[Path]:
        """A pids (and cpu) cgroup for this sandbox, when the portal runs as root: the kernel
        does not apply RLIMIT_NPROC to root's processes. Best effort; logged when missing."""
        if os.geteuid() != 0:
            return []
        version = _cgroup_version()
        if not version:
            log.warning("No writable pids cgroup: the process limit of %s is not enforced (root).", self.name)
            return []
        made: list[Path] = []
        for controller, settings in _cgroup_settings(self.limits, version).items():
            parent = _cgroup_parent(version, controller)
            group = parent / self.name
            try:
                parent.mkdir(exist_ok=True)
                if version == 2:  # let the sandboxes' groups use the controllers
                    for level in (CGROUP_ROOT, parent):
                        with contextlib.suppress(OSError):
                            (level / "cgroup.subtree_control").write_text("+pids +cpu")
                group.mkdir(exist_ok=True)
                for name, value in settings.items():
                    (group / name).write_text(value)
            except OSError as exc:
                log.warning("Could not set up the %s cgroup of %s: %s", controller, self.name, exc)
                continue
            made.append(group)
        return made


def _cgroup_settings(limits: Limits, version: int) -> dict[str, dict[str, str]]:
    period = 100_000
    quota = max(1000, int(limits.cpus * period)) if limits.cpus else 0
    if version == 2:
        return {"": {"pids.max": str(limits.processes), **({"cpu.max": f"{quota} {period}"} if quota else {})}}
    wanted = {"pids": {"pids.max": str(limits.processes)}}
    if quota:
        wanted["cpu"] = {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)}
    return wanted


CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP = "portal-sandbox"


def _cgroup_version() -> int:
    """2 for a writable unified hierarchy with the pids controller, 1 for a writable v1
    pids hierarchy, 0 when neither can be used."""
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists():
        if "pids" in controllers.read_text().split() and os.access(CGROUP_ROOT, os.W_OK):
            return 2
        return 0
    return 1 if os.access(CGROUP_ROOT / "pids", os.W_OK) and (CGROUP_ROOT / "pids" / "cgroup.procs").exists() else 0


def _cgroup_parent(version: int, controller: str) -> Path:
    return CGROUP_ROOT / GROUP if version == 2 else CGROUP_ROOT / controller / GROUP


def release_cgroups(name: str) -> None:
    """Remove the cgroups of the sandbox `name` (a no-op if it had none or they are busy)."""
    for group in [CGROUP_ROOT / GROUP / name, *(CGROUP_ROOT / c / GROUP / name for c in ("pids", "cpu"))]:
        with contextlib.suppress(OSError):
            group.rmdir()
