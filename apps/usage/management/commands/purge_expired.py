from django.core.management.base import BaseCommand

from apps.accounts.models import Organization
from apps.usage import lifecycle


class Command(BaseCommand):
    help = (
        "Apply every organization's retention now: delete usage older than it (what the daily "
        "task does), printing what went."
    )

    def handle(self, *args, **options):
        total = 0
        for organization in Organization.objects.filter(deletion_requested_at__isnull=True):
            events = rollups = 0
            while True:
                result = lifecycle.usage_purge_expired(organization=organization)
                events, rollups = events + result.events, rollups + result.rollups
                if result.done:
                    break
                self.stdout.write(f"{organization.slug}: {events} events deleted so far…")
            if events or rollups:
                self.stdout.write(
                    f"{organization.slug}: deleted {events} events and {rollups} daily totals "
                    f"older than {organization.retention_days} days."
                )
            total += events
        self.stdout.write(f"Done: {total} events deleted.")
