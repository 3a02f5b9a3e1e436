import sys

from django.core.management.base import BaseCommand, CommandError
from django.views.decorators.debug import sensitive_variables

from apps.accounts.selectors import organization_for_command
from apps.keys import services
from apps.keys.models import Provider


class Command(BaseCommand):
    help = "Store a provider key, encrypted, for an organization. The key is read from stdin."

    def add_arguments(self, parser):
        parser.add_argument("org")
        parser.add_argument("provider", choices=Provider.values)
        parser.add_argument(
            "--key-stdin", action="store_true", required=True, help="Read the key from stdin."
        )
        parser.add_argument("--label", default="")

    @sensitive_variables("key")
    def handle(self, *args, org, provider, label, **options):
        organization = organization_for_command(org)
        key = sys.stdin.readline().strip()
        if not key:
            raise CommandError("Standard input was empty: pipe the key in, e.g. `… < key.txt`.")
        try:
            provider_key = services.provider_key_create(
                organization=organization, provider=provider, key=key, label=label, actor=None
            )
        except services.KeysError as error:
            raise CommandError(str(error)) from error
        default = " (default)" if provider_key.is_default else ""
        self.stdout.write(f"Stored {provider_key}{default} for {organization.slug}.")
