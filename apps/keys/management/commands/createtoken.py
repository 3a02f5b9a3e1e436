from django.core.management.base import BaseCommand, CommandError
from django.views.decorators.debug import sensitive_variables

from apps.accounts.selectors import organization_for_command
from apps.keys import services
from apps.keys.models import Scope


class Command(BaseCommand):
    help = "Create a Costr token. It is printed once, alone on the last line of stdout."

    def add_arguments(self, parser):
        parser.add_argument("org")
        parser.add_argument(
            "--scope",
            action="append",
            choices=Scope.values,
            dest="scopes",
            help="proxy, read, ingest or manage; repeat for several (default: proxy).",
        )
        parser.add_argument("--name", default="Command-line token")

    @sensitive_variables("created")
    def handle(self, *args, org, scopes, name, **options):
        organization = organization_for_command(org)
        try:
            created = services.proxy_token_create(
                organization=organization,
                name=name,
                scopes=scopes or [Scope.PROXY],
                actor=None,
            )
        except services.KeysError as error:
            raise CommandError(str(error)) from error
        token = created.token
        self.stdout.write(
            f"Created token {token.name!r} ({token.prefix}…) for {organization.slug} with "
            f"scopes {', '.join(token.scopes)}. It is shown once:"
        )
        self.stdout.write(created.plaintext)
