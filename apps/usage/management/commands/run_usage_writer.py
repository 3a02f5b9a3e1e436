"""``manage.py run_usage_writer``: the Redis mode's batch writer, a long-running process.

Reads the usage stream (``COSTR_USAGE_STREAM`` on ``COSTR_USAGE_REDIS_URL``) as one consumer of
the ``usage-writers`` group and stores what it reads; see ``metering.writer.StreamWriter``.
Run one or more (each is its own consumer); SIGTERM or SIGINT lets the batch in hand finish and
exits 0.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.usage.metering import stream as usage_stream
from apps.usage.metering.writer import StreamWriter


class Command(BaseCommand):
    help = "Store usage records from the Redis stream in the database (Redis mode)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--consumer",
            default=None,
            help="Consumer name in the group (default host-pid). A stable name lets a restarted "
            "writer take back its own pending entries at once instead of after --claim-idle.",
        )
        parser.add_argument(
            "--count", type=int, default=10, help="Stream entries per read (each a batch)."
        )
        parser.add_argument(
            "--claim-idle",
            type=float,
            default=60.0,
            help="Seconds an entry may stay pending with another consumer before this one "
            "takes it over (a writer that died mid-batch).",
        )
        parser.add_argument(
            "--max-backoff",
            type=float,
            default=10.0,
            help="Longest wait, in seconds, between tries while the database or Redis is down.",
        )
        parser.add_argument(
            "--stop-grace",
            type=float,
            default=20.0,
            help="After SIGTERM, how long to keep retrying a batch while the database is down "
            "before exiting with it unwritten (it stays pending for the next writer).",
        )
        parser.add_argument(
            "--until-empty",
            action="store_true",
            help="Exit once the stream has nothing new and nothing pending (scripts, tests).",
        )

    def handle(self, *args, **options):
        url = settings.COSTR_USAGE_REDIS_URL
        if not url:
            raise CommandError(
                "COSTR_USAGE_REDIS_URL (or REDIS_URL) is not set: without Redis the web process "
                "stores usage itself and this writer has nothing to read."
            )
        writer = StreamWriter(
            # Longer than the blocking read, so an idle stream is not a timeout.
            client=usage_stream.client_for(url, socket_timeout=10.0),
            stream=settings.COSTR_USAGE_STREAM,
            consumer=options["consumer"],
            count=options["count"],
            claim_idle=options["claim_idle"],
            max_backoff=options["max_backoff"],
            stop_grace=options["stop_grace"],
            spool_dir=str(settings.COSTR_USAGE_SPOOL_DIR),
        )
        writer.install_signal_handlers()
        self.stdout.write(
            f"usage writer {writer.consumer} reading {writer.stream} (group {writer.group})"
        )
        self.stdout.flush()
        writer.run(until_empty=options["until_empty"])
        self.stdout.write(f"usage writer {writer.consumer} stopped; {writer.stored} events stored")
