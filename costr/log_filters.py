"""Filters for Costr's log configuration (``LOGGING`` in ``costr.settings.base``)."""

import logging

from django.core.exceptions import PermissionDenied


class PermissionDeniedWithoutTraceback(logging.Filter):
    """A 403 is an answer the rules meant to give, not a fault: keep Django's one warning line
    ("Forbidden (Permission denied): /path"), drop the traceback it attaches."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PermissionDenied):
            record.exc_info = None
            record.exc_text = None
        return True
