from datetime import UTC, date, datetime, time

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.selectors import organization_for_command
from apps.usage.repricing import usage_reprice


class Command(BaseCommand):
    help = (
        "Re-price an organization's stored events with today's catalog and price overrides, "
        "and rebuild the daily rollups of every day whose costs changed."
    )

    def add_arguments(self, parser):
        parser.add_argument("org", help="The organization's slug.")
        parser.add_argument(
            "--since",
            help="Only events from this UTC day on (YYYY-MM-DD); all events without it.",
        )

    def handle(self, *args, org, since=None, **options):
        organization = organization_for_command(org)
        start = None
        if since:
            try:
                start = datetime.combine(date.fromisoformat(since), time.min, tzinfo=UTC)
            except ValueError:
                raise CommandError(
                    f"--since must be a date as YYYY-MM-DD, not {since!r}."
                ) from None
        count = usage_reprice(organization, start)
        scope = f" since {start:%Y-%m-%d}" if start else ""
        self.stdout.write(f"Re-priced {count} events of {organization.slug}{scope}.")
