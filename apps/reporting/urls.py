from urllib.parse import unquote

from django.urls import path, register_converter

from apps.reporting import event_views, views


class ExternalIdConverter:
    """A customer's external id as one path segment, whatever it holds.

    External ids come from the X-Costr-Customer header and may contain "/", "%", "?", dots or
    any Unicode. ``to_url`` escapes "%" and "/" (``reverse`` then percent-encodes the rest, so
    they arrive escaped once more and are read back exactly) and spells an id of only dots with
    escaped dots, which browsers would otherwise resolve as "." or ".." path segments.
    """

    regex = "[^/]+"

    def to_python(self, value: str) -> str:
        return unquote(value)

    def to_url(self, value: str) -> str:
        escaped = value.replace("%", "%25").replace("/", "%2F")
        if escaped.strip(".") == "":
            escaped = escaped.replace(".", "%2E")
        return escaped


register_converter(ExternalIdConverter, "external_id")

org_urlpatterns = [
    path("", views.OverviewView.as_view(), name="org_home"),
    path("customers/", views.CustomersView.as_view(), name="customers"),
    path("customers.csv", views.CustomersExportView.as_view(), name="customers_export"),
    path(
        "customers/<external_id:external_id>/",
        views.CustomerDetailView.as_view(),
        name="customer_detail",
    ),
    # The requests sent without X-Costr-Customer: no external id can be empty, so no clash.
    path(
        "customers-without-id/",
        views.CustomerDetailView.as_view(),
        {"external_id": ""},
        name="no_customer",
    ),
    path("models/", views.ModelsView.as_view(), name="models"),
    path("properties/", views.PropertiesView.as_view(), name="properties"),
    path("events/", event_views.EventsView.as_view(), name="events"),
    path("events/<int:event_id>/", event_views.EventDetailView.as_view(), name="event_detail"),
    path("events/export.csv", event_views.EventsExportView.as_view(), name="events_export"),
]
