from datetime import date

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import Organization
from apps.accounts.selectors import organization_for_command
from apps.usage.rollups import rollups_rebuild


class Command(BaseCommand):
    help = (
        "Rebuild the daily rollups (per customer, per organization with latency histograms, "
        "per property) from the stored events, one UTC day at a time: after upgrading to a "
        "version that adds rollups, or to repair them. Safe while traffic is written."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "org", nargs="?", help="The organization's slug; every organization without it."
        )
        parser.add_argument(
            "--since", help="Only from this UTC day on (YYYY-MM-DD); all days without it."
        )

    def handle(self, *args, org=None, since=None, **options):
        start = None
        if since:
            try:
                start = date.fromisoformat(since)
            except ValueError:
                raise CommandError(
                    f"--since must be a date as YYYY-MM-DD, not {since!r}."
                ) from None
        if org:
            organizations = [organization_for_command(org)]
        else:
            organizations = Organization.objects.filter(deletion_requested_at__isnull=True)
        for organization in organizations:
            days, rows = rollups_rebuild(organization=organization, since=start)
            self.stdout.write(f"{organization.slug}: {days} days rebuilt, {rows} rollup rows.")
