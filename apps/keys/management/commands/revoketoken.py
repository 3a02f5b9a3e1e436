from django.core.management.base import BaseCommand, CommandError

from apps.accounts.selectors import organization_for_command
from apps.keys import services
from apps.keys.models import ProxyToken


class Command(BaseCommand):
    help = "Revoke a token by the prefix shown in lists (costr_xxxxxxxx). The proxy refuses it "
    "within seconds."

    def add_arguments(self, parser):
        parser.add_argument("org")
        parser.add_argument("prefix")

    def handle(self, *args, org, prefix, **options):
        organization = organization_for_command(org)
        prefix = prefix.rstrip("…. ")
        if len(prefix) < services.TOKEN_DISPLAY_LENGTH:
            raise CommandError(
                f"Give at least the {services.TOKEN_DISPLAY_LENGTH} characters shown in the "
                "token list (costr_ and 8 more)."
            )
        matches = [
            token
            for token in ProxyToken.objects.for_org(organization).filter(
                prefix=prefix[: services.TOKEN_DISPLAY_LENGTH], revoked_at__isnull=True
            )
        ]
        if not matches:
            raise CommandError(f"No active token of {organization.slug} starts with {prefix!r}.")
        if len(matches) > 1:
            raise CommandError(f"{len(matches)} active tokens start with {prefix!r}; none revoked.")
        services.proxy_token_revoke(token=matches[0], actor=None)
        self.stdout.write(f"Revoked {matches[0]}.")
