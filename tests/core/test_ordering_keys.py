"""Ordering keys: which operations are applied one at a time, and the route rule's config."""

from __future__ import annotations

import pytest

from asyncgate.errors import ConfigError
from asyncgate.ordering import digest, is_ordering_rule, ordering_key
from asyncgate.settings import settings_from_mapping

PRODUCT = '{"product": {"sku": "24-MB01", "price": 12}}'
CUSTOMER = '{"customer": {"email": "jane@example.com", "website_id": 1}}'


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_auto_keys_resource_writes_by_their_path(method: str) -> None:
    assert ordering_key("auto", method, "/V1/products/24-MB01", PRODUCT) == "/v1/products/24-mb01"


def test_auto_leaves_creates_unordered() -> None:
    assert ordering_key("auto", "POST", "/V1/customers", CUSTOMER) is None


def test_path_keys_every_method_and_none_keys_nothing() -> None:
    assert ordering_key("path", "POST", "/V1/orders/7/comments", "{}") == "/v1/orders/7/comments"
    assert ordering_key("none", "PUT", "/V1/products/24-MB01", PRODUCT) is None


def test_a_body_field_keys_by_its_value() -> None:
    key = ordering_key("body.customer.email", "POST", "/V1/customers", CUSTOMER)
    assert key == "/v1/customers customer.email=jane@example.com"
    assert ordering_key("body.product.price", "PUT", "/V1/x", PRODUCT) == "/v1/x product.price=12"


@pytest.mark.parametrize(
    "alias", ["/V1/products/24-mb01", "/V1/products/24%2DMB01", "/V1/products/24-MB01/"]
)
def test_one_resource_has_one_key(alias: str) -> None:
    """Encoding, case and a trailing slash do not make another resource (Magento's lookups
    ignore case); two resources sharing a key would only cost concurrency."""
    assert ordering_key("auto", "PUT", alias, "") == ordering_key(
        "auto", "PUT", "/V1/products/24-MB01", ""
    )


def test_a_body_value_is_normalised_too() -> None:
    rule = "body.customer.id"
    five = ordering_key(rule, "POST", "/V1/x", '{"customer": {"id": 5}}')
    assert five == ordering_key(rule, "POST", "/V1/x", '{"customer": {"id": 5.0}}')
    upper = ordering_key("body.email", "POST", "/V1/x", '{"email": "A@X.COM"}')
    assert upper == ordering_key("body.email", "POST", "/V1/x", '{"email": "a@x.com"}')


@pytest.mark.parametrize(
    "body",
    [
        '{"customer": {}}',  # missing
        '{"customer": {"email": {"a": 1}}}',  # not a scalar
        '{"customer": {"email": true}}',
        '{"customer": "jane"}',  # not an object on the way
        "not json",
        "",
    ],
)
def test_an_item_without_the_field_is_unordered(body: str) -> None:
    assert ordering_key("body.customer.email", "POST", "/V1/customers", body) is None


def test_digests_are_fixed_width_and_distinct() -> None:
    a, b = digest("/V1/products/a"), digest("/V1/products/b")
    assert len(a) == len(b) == 64 and a != b


@pytest.mark.parametrize("rule", ["auto", "path", "none", "body.customer.email", "body.sku"])
def test_valid_rules(rule: str) -> None:
    assert is_ordering_rule(rule)
    route = {"name": "r", "match": "PUT /V1/products/*", "ordering": rule}
    assert settings_from_mapping({"routes": [route]}, {}).routes[0].ordering == rule


@pytest.mark.parametrize("rule", ["sometimes", "body.", "body..x", "body", ""])
def test_a_bad_rule_is_a_config_error(rule: str) -> None:
    route = {"name": "r", "match": "PUT /V1/products/*", "ordering": rule}
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"routes": [route]}, {})
    assert any(p.startswith("routes[0].ordering: must be") for p in info.value.problems)
