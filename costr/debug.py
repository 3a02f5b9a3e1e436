"""Error reports that hide secrets even with DEBUG on.

Django's default filter only honours ``sensitive_variables``/``sensitive_post_parameters`` when
DEBUG is off, and a developer runs the embedded mode with ``DEBUG=1`` for debug pages; a provider
key must not appear on a debug page either.
"""

from django.views.debug import SafeExceptionReporterFilter


class AlwaysSafeExceptionReporterFilter(SafeExceptionReporterFilter):
    def is_active(self, request):
        return True
