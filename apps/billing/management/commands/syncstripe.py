from django.core.management.base import BaseCommand, CommandError

from apps.accounts.selectors import organization_for_command
from apps.billing.tasks import stripe_sync


class Command(BaseCommand):
    help = "Run an organization's Stripe sync now, in this process (the task beat runs hourly)."

    def add_arguments(self, parser):
        parser.add_argument("org")

    def handle(self, *args, org, **options):
        organization = organization_for_command(org)
        result = stripe_sync(organization.pk)
        status = result["status"]
        if status == "not_connected":
            raise CommandError(f"Stripe is not connected for {organization.slug}.")
        if status == "already_running":
            raise CommandError(f"A Stripe sync of {organization.slug} is already running.")
        if status == "demo":
            raise CommandError(
                f"{organization.slug} is the demo: its Stripe data is made up, nothing to sync."
            )
        if status == "failed":
            raise CommandError(f"Stripe sync of {organization.slug} failed: {result['error']}")
        created = sum(result["created"].values())
        updated = sum(result["updated"].values())
        self.stdout.write(
            f"Synced {organization.slug}: {result['pages']} page(s), {created} new and "
            f"{updated} changed object(s), {result['revenue_rows_changed']} revenue row(s) "
            f"and {result['mappings_changed']} mapping(s) changed."
        )
        for resource, needed in result["missing"].items():
            self.stdout.write(f"Missing permission for {resource}: {needed}.")
