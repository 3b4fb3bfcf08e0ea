from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from deployments.runtime import BackendUnavailable
from deployments.runtime.docker import DockerBackend
from deployments.runtime.images import ImageBuildFailed, build_base_image


class Command(BaseCommand):
    help = "Build the model servers' base image (Debian + Python + pinned libraries) once; later runs reuse it."

    def add_arguments(self, parser):
        parser.add_argument("--tag", default=settings.DOCKER_BASE_IMAGE)

    def handle(self, *args, tag, **options):
        try:
            backend = DockerBackend.default()
            built = build_base_image(backend.client, tag, log=lambda line: self.stdout.write(line))
        except (BackendUnavailable, ImageBuildFailed) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Built {tag}." if built else f"{tag} already exists; nothing to do.")
