"""Fixtures the reporting tests share: simple prices worked out by hand, and an API client."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.keys import keycache, services
from apps.usage.models import PriceOverride


@pytest.fixture(autouse=True)
def _fresh_cache():
    keycache._drop_local(None)
    yield
    keycache._drop_local(None)


@pytest.fixture
def priced(org):
    PriceOverride.objects.create(
        organization=org,
        model_pattern="test-*",
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(2),
    )
    return org


@pytest.fixture
def api(client, org):
    created = services.proxy_token_create(organization=org, name="api", scopes=["read"], actor=None)
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {created.plaintext}"
    return client
