import logging

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger("costr.keys")


class KeysConfig(AppConfig):
    name = "apps.keys"
    label = "keys"
    verbose_name = "Key vault"

    def ready(self):
        if settings.COSTR_ENCRYPTION_KEYS_GENERATED:
            logger.warning(
                "COSTR_ENCRYPTION_KEYS is not set: stored secrets are encrypted with a key "
                "generated into var/encryption_keys. Keep that file, or they cannot be decrypted; "
                "set COSTR_ENCRYPTION_KEYS in production."
            )
