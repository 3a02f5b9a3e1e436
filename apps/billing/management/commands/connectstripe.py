import sys

from django.core.management.base import BaseCommand, CommandError
from django.views.decorators.debug import sensitive_variables

from apps.accounts.selectors import organization_for_command
from apps.billing import services
from apps.billing.models import DEFAULT_METADATA_FIELD


class Command(BaseCommand):
    help = (
        "Check a Stripe restricted key (read-only calls), store it encrypted and queue the "
        "first sync. The key is read from stdin."
    )

    def add_arguments(self, parser):
        parser.add_argument("org")
        parser.add_argument(
            "--key-stdin", action="store_true", required=True, help="Read the key from stdin."
        )
        parser.add_argument("--metadata-field", default=DEFAULT_METADATA_FIELD)

    @sensitive_variables("key")
    def handle(self, *args, org, metadata_field, **options):
        organization = organization_for_command(org)
        key = sys.stdin.readline().strip()
        if not key:
            raise CommandError("Standard input was empty: pipe the key in, e.g. `… < key.txt`.")
        try:
            connection = services.stripe_connect(
                organization=organization, key=key, metadata_field=metadata_field, actor=None
            )
        except services.BillingError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"Connected {connection} for {organization.slug}.")
        for resource, needed in connection.missing_permissions.items():
            label, grant, _ = services.RESOURCES[resource]
            self.stdout.write(f"Missing permission for {label}: {needed} (set “{grant}”).")
