from importlib import import_module

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "apps.billing"
    label = "billing"
    verbose_name = "Billing (Stripe, read-only)"

    def ready(self):
        # Registers the app's tasks, which services queue by name (costr.tasks).
        import_module(f"{self.name}.tasks")
