from django.core.management.base import BaseCommand, CommandError

from apps.keys import services
from apps.keys.keyring import get_keyring
from apps.keys.vault import KeyringError


class Command(BaseCommand):
    help = (
        "Re-wrap every stored secret under the primary (first) key of COSTR_ENCRYPTION_KEYS, in "
        "batches. Safe to stop and run again; afterwards older keys can leave the keyring."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=200)

    def handle(self, *args, batch_size, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            keyring = get_keyring()
        except KeyringError as error:
            raise CommandError(str(error)) from error

        def progress(model, done):
            self.stdout.write(f"  {done} re-wrapped so far ({model._meta.verbose_name_plural})")

        total = services.encryption_keys_rotate(batch_size=batch_size, progress=progress)
        self.stdout.write(
            f"Done: {total} secret(s) re-wrapped; every stored secret is now under key "
            f"{keyring.primary_id!r}."
        )
