"""Seconds from approval to live, with a cold and a warm image cache, for `local` and `docker`.

    .venv/bin/python bench/deploy_time.py

Deploys the iris model to production (approval required) in a scratch portal: for each
runtime, once with nothing cached (docker: the version's image does not exist yet, so it is
built on the base image; local: the first model-server process of the run), then again
with the cache warm (docker: the image is reused). Each time is measured from the approval
to the deployment being live, including readiness, the smoke test and the route switch.
Needs a Docker Engine (DOCKER_HOST, or one started here as root) and the base image.
"""

from __future__ import annotations

import time

from _portal import ScratchPortal, live_iris_service

from scripts.stack import docker_start


def approve_to_live(service, version, environment, requester, approver) -> tuple[float, str]:
    from deployments import rollout, services

    deployment = services.deployment_request(actor=requester, service=service, version=version, environment=environment)
    started = time.perf_counter()
    services.deployment_approve(actor=approver, deployment=deployment)
    rollout.rollout(deployment.pk, owner="bench")
    deployment.refresh_from_db()
    built = deployment.events.filter(message__startswith="Building image").exists()
    return time.perf_counter() - started, deployment.status + (", image built" if built else "")


def main() -> None:
    engine = docker_start()
    import os

    os.environ["DOCKER_HOST"] = engine.host
    try:
        with ScratchPortal():
            from django.conf import settings

            from accounts import services as accounts
            from deployments.models import Environment
            from deployments.runtime.docker import DockerBackend
            from deployments.runtime.images import build_base_image, model_image_tag

            first, _ = live_iris_service()  # also warms the local runtime's imports once
            service, version, requester = first.service, first.version, first.requested_by
            approver = accounts.user_create(actor=None, username="bench-approver", roles=["approver"])
            production = Environment.objects.get(name="production")
            client = DockerBackend.default().client
            build_base_image(client, settings.DOCKER_BASE_IMAGE)
            tag = model_image_tag(service=service.name, version=version.version, sha256=version.artifact.sha256)
            if any(tag in image.tags for image in client.images.list()):
                client.images.remove(tag, force=True)
            results = []
            for runtime in ("local", "docker"):
                production.runtime = runtime
                production.save()
                for cache in ("cold", "warm"):
                    seconds, status = approve_to_live(service, version, production, requester, approver)
                    results.append((runtime, cache, seconds, status))
            client.images.remove(tag, force=True)
    finally:
        engine.stop()
    print("\nseconds from approval to live (iris, sklearn, one replica)")
    for runtime, cache, seconds, status in results:
        print(f"  {runtime:<7} {cache:<5} {seconds:6.2f} s  ({status})")
    print("cold docker = build the version's image on the base image, then start; warm = image reused")


if __name__ == "__main__":
    main()
