import signal

from django.core.management.base import BaseCommand

from deployments.autoscale import Autoscaler


class Command(BaseCommand):
    help = (
        "Run the autoscaler until stopped: autoscaled deployments follow the gateways' requests in flight "
        "(make run starts it; run one or more anywhere that reaches the database and Redis, one leads)."
    )

    def handle(self, *args, **options):
        autoscaler = Autoscaler()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: autoscaler.stop())
        self.stdout.write(f"Autoscaler {autoscaler.id} running (Ctrl-C stops it).")
        self.stdout.flush()
        autoscaler.run()
