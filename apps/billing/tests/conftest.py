import pytest

from apps.billing import services
from apps.billing.tests.factories import build_account


@pytest.fixture
def stripe_account(fake_stripe, settings):
    """The account of ``factories.py``, listed three objects a page so every walk has pages."""
    settings.STRIPE_PAGE_SIZE = 3
    account = fake_stripe.account("acct_1AcmeRevenue00001", name="Acme Revenue")
    account.named = build_account(account)
    return account


@pytest.fixture
def costr_customers(org):
    """Costr customers as the proxy would have created them from X-Costr-Customer values."""
    from apps.usage.models import Customer

    return {
        external_id: Customer.objects.create(organization=org, external_id=external_id)
        for external_id in ("alice", "cus_Bob0001", "dave", "zed")
    }


@pytest.fixture
def stripe_key(fake_stripe, stripe_account):
    return fake_stripe.restricted_key(stripe_account)


@pytest.fixture
def connected(org, admin, stripe_key, costr_customers, django_capture_on_commit_callbacks):
    """Connected with a key that may read everything, first sync done (it runs on commit)."""
    with django_capture_on_commit_callbacks(execute=True):
        connection = services.stripe_connect(organization=org, key=stripe_key, actor=admin)
    connection.refresh_from_db()
    return connection
