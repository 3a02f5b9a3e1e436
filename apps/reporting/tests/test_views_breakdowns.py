"""The models and properties breakdowns."""

import pytest

from apps.reporting.tests.dashboard_data import (
    OCTOBER,
    build_october,
    chart_data,
    price,
    url,
    use,
    utc,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def october(org):
    return build_october(org)


def _table(html: str, css_class: str = "") -> str:
    import re

    start = html.index("<tbody>", html.index(f'<table class="{css_class}"') if css_class else 0)
    body = html[start : html.index("</tbody>", start)]
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def test_models_table_and_chart(client, october, member):
    client.force_login(member)
    html = client.get(url("models", october), OCTOBER).content.decode()

    table = _table(html, "models")
    # Columns: model, provider, requests, input, cache reads, cache writes, output, spend with its
    # change, share, error rate, average latency.
    # test-large: 1 request, $1.00 (99.5% of $1.0048), new since September, 40 ms.
    assert "test-large openai 1 1,000,000 0 0 0 $1.00 new 99.5% 0.0% 40 ms" in table
    # test-small: acme's 3 requests and globex's error; $0.0048; 1 error of 4; (10+20+30+60)/4 ms;
    # September had one request ($0.0012): +300%.
    assert "test-small openai 4 4,000 0 0 400 $0.0048 ▲ 300% 0.5% 25.0% 30 ms" in table
    # Its only request has no price: its cost is unknown, not $0.
    assert "mystery-model openai 1 1,000 0 0 100 unknown 1 unpriced" in table
    chart = chart_data(html, "models-chart")
    assert [s["label"] for s in chart["datasets"]] == ["test-large", "test-small", "mystery-model"]


def test_models_page_without_requests(client, october, member):
    client.force_login(member)
    params = {"period": "custom", "start": "2026-06-01", "end": "2026-06-02"}
    html = client.get(url("models", october), params).content.decode()
    assert "No requests in this period." in html
    assert "models-chart" not in html


def test_properties_table_for_the_chosen_name(client, october, member):
    use(october, utc(2026, 10, 9), customer="acme", properties={"feature": "search", "env": "prod"})
    client.force_login(member)

    html = client.get(url("properties", october), {**OCTOBER, "name": "env"}).content.decode()
    assert 'name="name" id="id_name" list="property-names" value="env"' in html
    table = _table(html)
    assert "prod 1 1,100 $0.0012" in table
    assert "(not set) 6" in table
    default = client.get(url("properties", october), OCTOBER).content.decode()
    assert 'list="property-names" value="feature"' in default  # "feature" first when present
    assert '<option value="env">' in default  # offered as recently seen
    assert "chat 1 1,100 $0.0012" in _table(default)
    assert chart_data(default, "properties-chart")["labels"][:1] == ["(not set)"]


def test_an_unknown_property_name_is_explained(client, october, member):
    client.force_login(member)
    html = client.get(url("properties", october), {**OCTOBER, "name": "nope"}).content.decode()
    assert "No request in this period carried the property “nope”" in html
    assert "properties-chart" not in html


def test_properties_page_without_properties(client, org, member):
    price(org)
    use(org, utc(2026, 10, 5))
    client.force_login(member)
    html = client.get(url("properties", org), OCTOBER).content.decode()
    assert "No request in this period carried a property" in html


@pytest.mark.parametrize("name", ["models", "properties"])
def test_breakdown_query_counts_do_not_grow(client, org, member, django_assert_num_queries, name):
    price(org)
    client.force_login(member)
    use(org, utc(2026, 10, 5), properties={"feature": "a"})
    with django_assert_num_queries(QUERIES[name]):
        client.get(url(name, org), OCTOBER)
    for k in range(60):
        use(org, utc(2026, 10, 1 + k % 28), model=f"test-{k % 7}", properties={"feature": f"{k}"})
    with django_assert_num_queries(QUERIES[name]):
        client.get(url(name, org), OCTOBER)


# Session, user, membership, nav (4), then: models now and before, spend per day by model (3);
# recent property names, values of both periods (2).
QUERIES = {"models": 7, "properties": 7}
