from django.core.management.base import BaseCommand, CommandError

from apps.accounts import services
from apps.accounts.selectors import organization_for_command


class Command(BaseCommand):
    help = (
        "Set how many days of usage metadata an organization keeps, as its retention page does. "
        "Older data is deleted by the daily purge (or now, with purge_expired)."
    )

    def add_arguments(self, parser):
        parser.add_argument("org")
        parser.add_argument("days", type=int)

    def handle(self, *args, org, days, **options):
        organization = organization_for_command(org)
        previous = organization.retention_days
        try:
            services.organization_retention_set(organization=organization, days=days, actor=None)
        except services.AccountsError as error:
            raise CommandError(str(error)) from None
        if previous == days:
            self.stdout.write(f"{organization.slug} already keeps {days} days; nothing changed.")
        else:
            self.stdout.write(
                f"{organization.slug} now keeps {days} days of usage metadata (was {previous})."
            )
