from django.urls import path

from apps.usage import lifecycle_views, views

org_urlpatterns = [
    path("settings/prices/", views.PriceOverridesView.as_view(), name="price_overrides"),
    path(
        "settings/prices/<int:pk>/delete/",
        views.PriceOverrideDeleteView.as_view(),
        name="price_override_delete",
    ),
    path("settings/prices/reprice/", views.RepriceView.as_view(), name="price_reprice"),
    path("settings/retention/", lifecycle_views.RetentionView.as_view(), name="retention"),
    path("settings/delete/", lifecycle_views.OrganizationDeleteView.as_view(), name="org_delete"),
    path(
        "export/usage.<str:file_format>",
        lifecycle_views.UsageExportView.as_view(),
        name="usage_export",
    ),
]
