"""Container images for model servers, built here from Debian's packages and PyPI.

The base image: a minimal Debian bookworm made by debootstrap (Python 3.11 from Debian),
imported into the engine, plus a virtualenv with the model server's libraries installed
from wheels downloaded on this machine (pinned; no Docker Hub, no network inside the build).
Model images: the base plus the model server's code and one artifact, tagged by service,
version and artifact digest, so a second deployment of the same version reuses the image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker.errors

ROOT = Path(__file__).resolve().parent.parent.parent
MODELSERVER = ROOT / "modelserver"
DEBIAN_SUITE = "bookworm"
# What the model server needs, pinned like requirements.txt.
BASE_PACKAGES = [
    "numpy==2.4.6",
    "scipy==1.17.1",
    "scikit-learn==1.9.1",
    "joblib==1.6.0",
    "onnxruntime==1.31.1",
    "uvicorn[standard]==0.54.0",
]
CONTAINER_PORT = 8000
# Where a container's model server answers when it has no network (the default): a unix
# socket in a host directory bind-mounted at CONTAINER_SOCKET_DIR.
CONTAINER_SOCKET_DIR = "/run/model"


class ImageBuildFailed(Exception):
    pass


def _say(log: Callable[[str], None] | None, line: str) -> None:
    if log and line.strip():
        log(line.rstrip())


def _stream_build(client, context: Path, tag: str, labels: dict[str, str], log) -> None:
    for chunk in client.api.build(path=str(context), tag=tag, rm=True, forcerm=True, decode=True, labels=labels):
        if "error" in chunk:
            raise ImageBuildFailed(chunk["error"].strip())
        if "stream" in chunk:
            _say(log, chunk["stream"])


def image_exists(client, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_base_image(client, tag: str, *, log: Callable[[str], None] | None = None, mirror: str | None = None) -> bool:
    """Build the base image unless it exists. Returns True when it built one."""
    if image_exists(client, tag):
        return False
    os_tag = f"{tag.split(':')[0]}-os:{DEBIAN_SUITE}"
    with tempfile.TemporaryDirectory(prefix="portal-base-") as tmp:
        work = Path(tmp)
        if not image_exists(client, os_tag):
            mirror = _debootstrap_ready(mirror)
            rootfs = work / "rootfs"
            _say(log, f"debootstrap {DEBIAN_SUITE} (minbase, python3) from {mirror}")
            result = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=python3,python3-venv,ca-certificates",
                    DEBIAN_SUITE,
                    str(rootfs),
                    mirror,
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise ImageBuildFailed(f"debootstrap failed: {result.stderr.strip()[-500:]}")
            tarball = work / "rootfs.tar"
            with tarfile.open(tarball, "w") as tar:
                tar.add(rootfs, arcname=".")
            shutil.rmtree(rootfs)
            repository, _, os_version = os_tag.partition(":")
            client.api.import_image(src=str(tarball), repository=repository, tag=os_version)
            tarball.unlink()
            _say(log, f"imported {os_tag}")
        context = work / "context"
        (context / "wheels").mkdir(parents=True)
        _say(log, "downloading wheels: " + " ".join(BASE_PACKAGES))
        result = subprocess.run(
            # This machine's Python is the image's (Debian bookworm's 3.11), so its wheels fit.
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "-d",
                str(context / "wheels"),
                *BASE_PACKAGES,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ImageBuildFailed(f"pip download failed: {result.stderr.strip()[-500:]}")
        packages = " ".join(f'"{p}"' for p in BASE_PACKAGES)
        (context / "Dockerfile").write_text(
            f"FROM {os_tag}\n"
            "COPY wheels /wheels\n"
            "RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check "
            f"--no-index --find-links /wheels {packages} && rm -rf /wheels\n"
            "ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 "
            "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1\n"
        )
        _stream_build(client, context, tag, {"portal.role": "modelserver-base"}, log)
    _say(log, f"built {tag}")
    return True


def _debootstrap_ready(mirror: str | None) -> str:
    """Check that debootstrap can run here (installing it if apt-get can); the mirror to use."""
    if os.geteuid() != 0:
        raise ImageBuildFailed("Building the base image runs debootstrap, which needs root.")
    if not shutil.which("debootstrap"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=False, capture_output=True)
        if not shutil.which("debootstrap"):
            raise ImageBuildFailed("debootstrap is missing: apt-get install debootstrap")
    mirror = mirror or os.environ.get("DEBIAN_MIRROR") or host_debian_mirror()
    if not mirror:
        raise ImageBuildFailed(
            f"No Debian mirror for {DEBIAN_SUITE} in this machine's apt sources (/etc/apt): "
            "set DEBIAN_MIRROR to the archive to build the base image from, e.g. your company's mirror."
        )
    return mirror


def host_debian_mirror(apt_dir: Path = Path("/etc/apt"), suite: str = DEBIAN_SUITE) -> str | None:
    """The Debian archive this machine's apt installs `suite` from (its main component), read
    from sources.list and sources.list.d (one-line `.list` files and deb822 `.sources`): the
    mirror the company chose, rather than an address written here."""
    candidates: list[Path] = []
    if (apt_dir / "sources.list").is_file():
        candidates.append(apt_dir / "sources.list")
    if (apt_dir / "sources.list.d").is_dir():
        candidates += sorted(p for p in (apt_dir / "sources.list.d").iterdir() if p.suffix in (".list", ".sources"))
    for path in candidates:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        entries = _deb822(text) if path.suffix == ".sources" else _one_line(text)
        for types, uris, suites, components in entries:
            if "deb" in types and suite in suites and "main" in components:
                for uri in uris:
                    if uri.startswith(("http://", "https://")):
                        return uri.rstrip("/")
    return None


def _one_line(text: str) -> list[tuple[list[str], list[str], list[str], list[str]]]:
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] not in ("deb", "deb-src"):
            continue
        kind, rest = words[0], words[1:]
        if rest and rest[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest.pop(0)
            if rest:
                rest.pop(0)
        if len(rest) >= 2:
            entries.append(([kind], [rest[0]], [rest[1]], rest[2:]))
    return entries


def _deb822(text: str) -> list[tuple[list[str], list[str], list[str], list[str]]]:
    entries = []
    for stanza in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        if fields.get("enabled", ["yes"])[0].lower() == "no":
            continue
        entries.append(
            (fields.get("types", []), fields.get("uris", []), fields.get("suites", []), fields.get("components", []))
        )
    return entries


def ensure_base_image(client, tag: str, *, log: Callable[[str], None] | None = None) -> None:
    """Build the base image if the engine lacks it: the first deployment that needs it does,
    saying what it is doing in its events. One build at a time on this machine: a second
    deployment waits for the first one's image instead of building it again."""
    # Opened without following a link someone may have planted, and without truncating.
    descriptor = os.open(
        Path(tempfile.gettempdir()) / "portal-base-image.lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600
    )
    with os.fdopen(descriptor, "r+") as lock:
        _say(log, f"The base image {tag} is missing: building it (a few minutes, once per engine).")
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if image_exists(client, tag):
                _say(log, f"The base image {tag} was built meanwhile.")
                return
            build_base_image(client, tag, log=_milestones(log))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _milestones(log: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """A log for a long build in a deployment's events: its own steps, not every line the
    build prints."""
    if log is None:
        return None

    def say(line: str) -> None:
        text = line.strip()
        if text.startswith(("Step ", "debootstrap", "imported", "downloading wheels", "built ")):
            log(f"Base image: {text}")

    return say


def code_digest() -> str:
    digest = hashlib.sha256()
    for path in [*sorted(MODELSERVER.glob("*.py")), Path(__file__)]:  # the server and how its image is made
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def model_image_tag(*, service: str, version: str, sha256: str) -> str:
    return f"portal-model/{service}:{version}-{sha256[:12]}-{code_digest()}"


def ensure_model_image(
    client,
    *,
    base: str,
    service: str,
    version: str,
    sha256: str,
    artifact: Path,
    flavor: str,
    field_order: list[str],
    log: Callable[[str], None] | None = None,
    registry: str = "",
) -> str:
    """The image serving this artifact, built on `base` unless it exists (reused otherwise).

    With `registry` (host:port) the image is also pushed there, and the reference returned
    is the registry's, which every engine of a swarm can pull.
    """
    tag = model_image_tag(service=service, version=version, sha256=sha256)
    if registry:
        remote = f"{registry}/{tag}"
        if in_registry(client, remote):
            _say(log, f"Reusing image {remote}.")
            return remote
        if image_exists(client, tag):
            _say(log, f"Reusing image {tag}.")
        else:
            _build_model_image(client, tag, base, service, version, sha256, artifact, flavor, field_order, log)
        push_image(client, tag, remote, log=log)
        return remote
    if image_exists(client, tag):
        _say(log, f"Reusing image {tag}.")
        return tag
    _build_model_image(client, tag, base, service, version, sha256, artifact, flavor, field_order, log)
    return tag


def in_registry(client, reference: str) -> bool:
    """Whether the registry holds `reference` (asked through the engine, with its credentials)."""
    try:
        client.images.get_registry_data(reference)
        return True
    except docker.errors.APIError:  # NotFound, or a registry that answers "unknown manifest"
        return False


def push_image(client, tag: str, remote: str, *, log: Callable[[str], None] | None = None) -> str:
    """Tag the local image `tag` as `remote` (registry/name:tag) and push it; its digest.

    Progress goes to `log` a line per layer (pushed, already there), not every byte count.
    """
    repository, _, version = remote.rpartition(":")
    client.images.get(tag).tag(repository, version)
    _say(log, f"Pushing {remote}")
    digest = ""
    try:
        for chunk in client.images.push(repository, tag=version, stream=True, decode=True):
            if chunk.get("error"):
                raise ImageBuildFailed(f"Pushing {remote} failed: {chunk['error'].strip()}")
            status = chunk.get("status", "")
            if chunk.get("aux", {}).get("Digest"):
                digest = chunk["aux"]["Digest"]
            elif status.startswith(("Pushed", "Layer already exists", "Mounted from")):
                _say(log, f"Push: layer {chunk.get('id', '')}: {status}")
    except docker.errors.APIError as exc:
        raise ImageBuildFailed(f"Pushing {remote} failed: {exc.explanation or exc}") from None
    _say(log, f"Pushed {remote} ({digest or 'no digest reported'}).")
    return digest


def _build_model_image(
    client,
    tag: str,
    base: str,
    service: str,
    version: str,
    sha256: str,
    artifact: Path,
    flavor: str,
    field_order: list[str],
    log: Callable[[str], None] | None,
) -> None:
    if not image_exists(client, base):
        ensure_base_image(client, base, log=log)
    with tempfile.TemporaryDirectory(prefix="portal-image-") as tmp:
        context = Path(tmp)
        shutil.copytree(MODELSERVER, context / "modelserver", ignore=shutil.ignore_patterns("__pycache__"))
        try:
            os.link(artifact, context / "artifact")  # same filesystem: no copy of a large file
        except OSError:
            shutil.copyfile(artifact, context / "artifact")
        command = [
            "python",
            "-m", "modelserver",
            "--artifact", "/model/artifact",
            "--flavor", flavor,
            "--version", version,
        ]  # fmt: skip
        if field_order:
            command += ["--field-order", ",".join(field_order)]
        # Where it listens (a socket, or a port on a shared network) is the container's command.
        (context / "Dockerfile").write_text(
            f"FROM {base}\n"
            "COPY modelserver /app/modelserver\n"
            "COPY artifact /model/artifact\n"
            "ENV PYTHONPATH=/app\n"
            # No set-user-id or set-group-id programs (su, mount, ...): where the engine cannot
            # forbid privilege escalation (swarm services before API 1.46), nothing can escalate.
            "RUN find / -xdev -type f -perm /6000 -exec chmod ug-s {} + \n"
            "USER 65534:65534\n"
            f"EXPOSE {CONTAINER_PORT}\n"
            f"HEALTHCHECK --interval=2s --timeout=3s --start-period=5s --retries=3 "
            f"CMD {_json(['python', '-m', 'modelserver.health'])}\n"
            f"ENTRYPOINT {_json(command)}\n"
        )
        _say(log, f"Building image {tag}")
        _stream_build(
            client, context, tag, {"portal.service": service, "portal.version": version, "portal.artifact": sha256}, log
        )


def _json(value) -> str:
    return json.dumps(value)
