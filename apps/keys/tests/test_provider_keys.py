import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.keys import services
from apps.keys.keyring import open_secret
from apps.keys.models import ProviderKey
from apps.keys.tests.factories import KEY_MAKERS, anthropic_key, google_key, openai_key

pytestmark = pytest.mark.django_db


def _add(client, org, provider, key, label=""):
    return client.post(
        reverse("provider_keys", args=[org.slug]),
        {"provider": provider, "key": key, "label": label},
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_an_admin_adds_a_key_which_is_stored_encrypted_and_shown_masked(
    client, org, admin, provider
):
    key = KEY_MAKERS[provider]()
    client.force_login(admin)

    response = _add(client, org, provider, f"  {key}\n", label="prod")

    assert response.status_code == 302
    stored = ProviderKey.objects.for_org(org).get()
    assert (stored.provider, stored.label, stored.last4, stored.is_default) == (
        provider,
        "prod",
        key[-4:],
        True,
    )
    assert key.encode() not in bytes(stored.ciphertext)
    assert open_secret(ciphertext=bytes(stored.ciphertext), context=stored.vault_context()) == key
    page = client.get(reverse("provider_keys", args=[org.slug])).content.decode()
    assert f"…{key[-4:]}" in page
    assert key not in page
    event = AuditEvent.objects.for_org(org).get(action="provider_key.created")
    assert event.actor == admin and event.details["provider"] == provider


@pytest.mark.parametrize(
    ("provider", "key", "message"),
    [
        ("openai", "pk-nope-123", "does not look like a key for OpenAI"),
        ("openai", anthropic_key(), "looks like a key for Anthropic"),
        ("anthropic", openai_key(), "looks like a key for OpenAI"),
        ("anthropic", "sk-ant-short", "does not look like a key for Anthropic"),
        ("google", "AIzaTooShort", "39 characters"),
        ("google", "rk_live_abcdefghijklmnopqrstuvwxyz0123456789", "Stripe key"),
        ("openai", "sk-proj-has space inside the key value 123", "no spaces"),
    ],
)
def test_a_key_of_the_wrong_shape_is_refused_with_a_clear_message(
    client, org, admin, provider, key, message
):
    client.force_login(admin)

    response = _add(client, org, provider, key)

    assert response.status_code == 400
    assert any(message in e for e in response.context["form"].errors["key"]), response.context[
        "form"
    ].errors
    assert not ProviderKey.objects.for_org(org).exists()


def test_the_same_key_pasted_twice_is_refused(client, org, admin):
    key = openai_key()
    client.force_login(admin)
    _add(client, org, "openai", key, label="first")

    response = _add(client, org, "openai", key)

    assert response.status_code == 400
    assert "already stored" in response.context["form"].errors["key"][0]
    assert ProviderKey.objects.for_org(org).count() == 1


def test_the_same_key_may_live_in_two_orgs(org, other_org, admin):
    key = openai_key()
    services.provider_key_create(organization=org, provider="openai", key=key, actor=None)

    services.provider_key_create(organization=other_org, provider="openai", key=key, actor=None)

    assert ProviderKey.objects.for_org(other_org).count() == 1


def test_the_first_key_of_a_provider_is_default_and_the_default_can_move(client, org, admin):
    first = services.provider_key_create(
        organization=org, provider="google", key=google_key(), actor=None
    )
    second = services.provider_key_create(
        organization=org, provider="google", key=google_key(), actor=None
    )
    other = services.provider_key_create(
        organization=org, provider="openai", key=openai_key(), actor=None
    )
    assert (first.is_default, second.is_default, other.is_default) == (True, False, True)
    client.force_login(admin)

    client.post(reverse("provider_key_default", args=[org.slug, second.pk]))

    defaults = set(
        ProviderKey.objects.for_org(org).filter(is_default=True).values_list("pk", flat=True)
    )
    assert defaults == {second.pk, other.pk}


def test_deleting_a_key_destroys_the_row_and_promotes_a_spare(client, org, admin):
    first = services.provider_key_create(
        organization=org, provider="openai", key=openai_key(), actor=None
    )
    spare = services.provider_key_create(
        organization=org, provider="openai", key=openai_key(), actor=None
    )
    client.force_login(admin)
    url = reverse("provider_key_delete", args=[org.slug, first.pk])

    assert "Delete" in client.get(url).content.decode()
    assert ProviderKey.objects.for_org(org).count() == 2  # GET only asks
    client.post(url)

    assert list(ProviderKey.objects.for_org(org).values_list("pk", "is_default")) == [
        (spare.pk, True)
    ]
    assert AuditEvent.objects.for_org(org).filter(action="provider_key.deleted").exists()


def test_a_member_sees_the_list_but_cannot_change_it(client, org, member):
    key = services.provider_key_create(
        organization=org, provider="openai", key=openai_key(), actor=None
    )
    spare = services.provider_key_create(
        organization=org, provider="openai", key=openai_key(), actor=None
    )
    client.force_login(member)

    page = client.get(reverse("provider_keys", args=[org.slug]))
    assert page.status_code == 200
    assert key.masked in page.content.decode()
    assert "Add a key" not in page.content.decode()

    assert _add(client, org, "google", google_key()).status_code == 403
    default = reverse("provider_key_default", args=[org.slug, spare.pk])
    assert client.post(default).status_code == 403
    delete = reverse("provider_key_delete", args=[org.slug, key.pk])
    assert client.get(delete).status_code == 403
    assert client.post(delete).status_code == 403
    state = list(ProviderKey.objects.for_org(org).order_by("pk").values_list("pk", "is_default"))
    assert state == [(key.pk, True), (spare.pk, False)]
