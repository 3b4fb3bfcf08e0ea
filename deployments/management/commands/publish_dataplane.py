from django.core.management.base import BaseCommand, CommandError

from deployments import publish


class Command(BaseCommand):
    help = "Republish every route, token digest and grant to Redis for the gateway."

    def handle(self, *args, **options):
        generation = publish.publish()
        if generation is None:
            raise CommandError("Redis is unreachable (REDIS_URL); nothing was published.")
        self.stdout.write(f"Published the data plane (generation {generation}).")
