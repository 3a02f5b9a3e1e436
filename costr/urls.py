from django.contrib import admin
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path

from apps.accounts import urls as accounts_urls
from apps.accounts import views as accounts_views
from apps.billing import urls as billing_urls
from apps.budgets import alert_urls as budgets_alert_urls
from apps.budgets import urls as budgets_urls
from apps.keys import urls as keys_urls
from apps.reporting import urls as reporting_urls
from apps.usage import urls as usage_urls
from apps.usage import views as usage_views
from costr import trust

# Every organization page lives under /app/<org_slug>/; the isolation suite walks this prefix.
org_patterns = [
    *accounts_urls.org_urlpatterns,
    *keys_urls.org_urlpatterns,
    *billing_urls.org_urlpatterns,
    *usage_urls.org_urlpatterns,
    *budgets_urls.org_urlpatterns,
    *budgets_alert_urls.org_urlpatterns,
    *reporting_urls.org_urlpatterns,
    path("integrate/", usage_views.IntegrateView.as_view(), name="integrate"),
]


def favicon(request):
    """Browsers and crawlers that ask for /favicon.ico get the SVG every page links to. The static
    URL is looked up per request, not at import, so a missing manifest entry cannot break the
    URLconf."""
    return redirect(static("favicon.svg"))


urlpatterns = [
    path("", accounts_views.landing, name="landing"),
    path("favicon.ico", favicon),
    path("security/", trust.security, name="security"),
    path("privacy/", trust.privacy, name="privacy"),
    path("terms/", trust.terms, name="terms"),
    path("dpa/", trust.dpa, name="dpa"),
    path("", include(accounts_urls.urlpatterns)),
    path("app/<slug:org_slug>/", include(org_patterns)),
    path("api/v1/", include("costr.api")),
    path("admin/", admin.site.urls),
]
