import logging
from importlib import import_module

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger("costr.keys")


class KeysConfig(AppConfig):
    name = "apps.keys"
    label = "keys"
    verbose_name = "Key vault"

    def ready(self):
        # Registers the app's tasks, which services queue by name (costr.tasks).
        import_module(f"{self.name}.tasks")
        if settings.COSTR_ENCRYPTION_KEYS_GENERATED:
            logger.warning(
                "COSTR_ENCRYPTION_KEYS is not set: stored secrets are encrypted with a key "
                "generated into var/encryption_keys. Keep that file, or they cannot be decrypted; "
                "set COSTR_ENCRYPTION_KEYS in production."
            )
