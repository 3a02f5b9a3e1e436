from django.core.management.base import BaseCommand, CommandError

from apps.accounts.selectors import organization_for_command
from apps.usage import lifecycle


class Command(BaseCommand):
    help = (
        "Delete an organization, as its owner's page does: keys, Stripe key and tokens at once, "
        "everything else by a task within 24 hours."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--confirm", required=True, help="The slug again.")

    def handle(self, *args, slug, confirm, **options):
        if confirm != slug:
            raise CommandError(f"--confirm must repeat the slug ({slug}); nothing was deleted.")
        organization = organization_for_command(slug)
        lifecycle.organization_delete(organization=organization, actor=None)
        self.stdout.write(
            f"{slug}: keys and tokens destroyed; its data will be deleted within "
            f"{lifecycle.DELETION_DEADLINE_HOURS} hours."
        )
