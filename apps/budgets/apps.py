from importlib import import_module

from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "apps.budgets"
    label = "budgets"
    verbose_name = "Budgets, limits and alerts"

    def ready(self):
        # The token cache loads each organization's budgets with its tokens (keys sits below
        # this app, so it is handed the loader rather than importing it).
        from apps.budgets.policy import load_policy
        from apps.keys import keycache

        keycache.set_budget_loader(load_policy)
        # Registers the app's tasks, which services queue by name (costr.tasks).
        import_module(f"{self.name}.tasks")
