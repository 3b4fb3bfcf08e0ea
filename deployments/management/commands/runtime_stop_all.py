from django.core.management.base import BaseCommand

from deployments.runtime.local import LocalBackend


class Command(BaseCommand):
    help = "Stop every model server the local runtime started (used when `make run` stops)."

    def handle(self, *args, **options):
        count = LocalBackend.default().stop_all()
        self.stdout.write(f"Stopped {count} local instance(s).")
