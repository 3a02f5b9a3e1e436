"""The fake Stripe answers as Stripe does where Costr depends on it."""

import httpx
import pytest

from tests.fakes.stripe import READ_ALL


@pytest.fixture
def fake(fake_stripe):
    account = fake_stripe.account("acct_1FakeCheck0000001")
    customer = account.customer(email="a@example.com")
    account.refund(account.charge(customer, 1000, fee=59), 400)
    return fake_stripe, account


def test_authentication_by_bearer_or_basic_and_stripe_error_shapes(fake):
    fake_stripe, account = fake
    key = fake_stripe.restricted_key(account)

    bearer = httpx.get(
        f"{fake_stripe.url}/v1/customers", headers={"Authorization": f"Bearer {key}"}
    )
    basic = httpx.get(f"{fake_stripe.url}/v1/customers", auth=(key, ""))
    unknown = httpx.get(f"{fake_stripe.url}/v1/customers", auth=("rk_test_" + "x" * 30, ""))

    assert bearer.json()["object"] == "list" and bearer.json()["url"] == "/v1/customers"
    assert basic.json() == bearer.json()
    assert unknown.status_code == 401
    error = unknown.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Invalid API Key provided: rk_test_****")


def test_a_missing_permission_is_named_as_stripe_names_it(fake):
    fake_stripe, account = fake
    key = fake_stripe.restricted_key(account, permissions=READ_ALL - {"rak_charge_read"})

    direct = httpx.get(f"{fake_stripe.url}/v1/charges", auth=(key, ""))
    expanded = httpx.get(
        f"{fake_stripe.url}/v1/balance_transactions",
        params={"expand[]": "data.source"},
        auth=(key, ""),
    )
    plain = httpx.get(f"{fake_stripe.url}/v1/balance_transactions", auth=(key, ""))

    assert direct.status_code == expanded.status_code == 403
    message = direct.json()["error"]["message"]
    assert "on account 'acct_1FakeCheck0000001'" in message
    assert message.endswith(
        "Having the 'rak_charge_read' permission would allow this request to continue."
    )
    assert plain.status_code == 200 and plain.json()["data"][0]["source"].startswith("re_")


def test_writes_are_recorded_and_refused(fake):
    fake_stripe, account = fake
    key = fake_stripe.restricted_key(account)

    response = httpx.post(f"{fake_stripe.url}/v1/refunds", data={"charge": "ch_x"}, auth=(key, ""))

    assert response.status_code == 403 and "rak_refund_write" in response.text
    assert [(w["method"], w["path"]) for w in fake_stripe.writes()] == [("POST", "/v1/refunds")]


def test_limits_and_cursors_are_checked(fake):
    fake_stripe, account = fake
    key = fake_stripe.restricted_key(account)
    url = f"{fake_stripe.url}/v1/balance_transactions"

    too_many = httpx.get(url, params={"limit": 101}, auth=(key, ""))
    bad_cursor = httpx.get(url, params={"starting_after": "txn_nope"}, auth=(key, ""))
    newest = httpx.get(url, params={"limit": 1}, auth=(key, "")).json()
    older = httpx.get(
        url, params={"limit": 1, "starting_after": newest["data"][0]["id"]}, auth=(key, "")
    ).json()

    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "limit"
    assert bad_cursor.status_code == 400
    assert newest["has_more"] and newest["data"][0]["type"] == "refund"
    assert not older["has_more"] and older["data"][0]["type"] == "charge"
