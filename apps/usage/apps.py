from importlib import import_module

from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "apps.usage"
    label = "usage"
    verbose_name = "Usage and metering"

    def ready(self):
        # Registers the app's tasks, which services queue by name (costr.tasks).
        import_module(f"{self.name}.tasks")
