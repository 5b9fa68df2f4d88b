"""OAuth 1.0a: requests signed the way Postman or a PHP integration signs them verify; every
tampering fails with Magento's message; a replay signed by ``sign`` verifies anew."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import pytest
from oauthlib.oauth1 import Client, RequestValidator, SignatureOnlyEndpoint
from oauthlib.oauth1.rfc5849 import parameters, utils

from asyncgate.oauth1 import (
    BAD_TIMESTAMP,
    INVALID_SIGNATURE,
    OUTSIDE_WINDOW,
    REQUIRED_FIELD,
    UNAUTHORIZED,
    OAuthError,
    Verified,
    sign,
    verify,
)
from asyncgate.settings import IntegrationSettings, Secret

NOW = 1_700_000_000.0
CONSUMER_SECRET = "cs0123456789abcdefghijklmnopqrst"
TOKEN_SECRET = "ts0123456789abcdefghijklmnopqrst"
SECRETS = (CONSUMER_SECRET, TOKEN_SECRET)
ERP = IntegrationSettings(
    name="erp",
    consumer_key="ck0123456789abcdefghijklmnopqrst",
    consumer_secret=Secret(CONSUMER_SECRET),
    access_token="at0123456789abcdefghijklmnopqrst",
    access_token_secret=Secret(TOKEN_SECRET),
)
OTHER = IntegrationSettings(
    name="pim",
    consumer_key="ckpim",
    consumer_secret=Secret("pim-consumer-secret"),
    access_token="atpim",
    access_token_secret=Secret("pim-token-secret"),
)
INTEGRATIONS = {i.consumer_key: i for i in (ERP, OTHER)}
ASYNC = "https://shop.example/rest/all/async/V1/customers"
SYNC = "https://shop.example/rest/all/V1/customers"
FORM = "application/x-www-form-urlencoded"
METHODS = ["HMAC-SHA1", "HMAC-SHA256"]


def client_sign(
    url: str,
    method: str = "POST",
    body: bytes = b"",
    content_type: str | None = None,
    signature_method: str = "HMAC-SHA256",
    timestamp: float = NOW,
    **creds: str,
) -> str:
    """Sign as a third-party client would: oauthlib's own Client, header signature."""
    client = Client(
        creds.get("key", ERP.consumer_key),
        client_secret=creds.get("secret", CONSUMER_SECRET),
        resource_owner_key=creds.get("token", ERP.access_token),
        resource_owner_secret=creds.get("token_secret", TOKEN_SECRET),
        signature_method=signature_method,
        timestamp=str(int(timestamp)),
    )
    headers = {"Content-Type": content_type} if content_type else None
    _, signed, _ = client.sign(url, http_method=method, body=body.decode() or None, headers=headers)
    header: str = signed["Authorization"]
    return header


def check(
    header: str | None,
    url: str = ASYNC,
    method: str = "POST",
    body: bytes = b"",
    content_type: str | None = None,
    now: float = NOW,
) -> Verified:
    return verify(method, url, header, body, content_type, INTEGRATIONS, now)


def fails(header: str | None, message: str, **kwargs: Any) -> OAuthError:
    with pytest.raises(OAuthError) as info:
        check(header, **kwargs)
    exc = info.value
    assert exc.message == message
    shown = f"{exc} {exc.message} {exc.reason} {exc.parameters} {exc!r}"
    for secret in SECRETS:
        assert secret not in shown
    return exc


def edit(header: str, drop: str = "", **changes: str) -> str:
    params = dict(utils.parse_authorization_header(header))
    params = {k: utils.unescape(v) for k, v in params.items() if k != drop}
    params.update(changes)
    rendered: str = parameters.prepare_headers(list(params.items()))["Authorization"]
    return rendered


def oauth_params(header: str) -> dict[str, str]:
    return {k: utils.unescape(v) for k, v in utils.parse_authorization_header(header)}


# ---- third-party signatures verify ----------------------------------------------------


@pytest.mark.parametrize("signature_method", METHODS)
def test_client_signature_with_query_verifies(signature_method: str) -> None:
    url = "https://shop.example/rest/all/V1/products?searchCriteria%5BpageSize%5D=10&q=a+b%20c"
    header = client_sign(url, "GET", signature_method=signature_method)
    result = check(header, url=url, method="GET")
    assert result.integration is ERP
    assert result.consumer_key == ERP.consumer_key
    assert result.signature_method == signature_method
    assert result.timestamp == int(NOW)
    assert result.nonce == oauth_params(header)["oauth_nonce"]


@pytest.mark.parametrize("signature_method", METHODS)
def test_client_signature_with_form_body_verifies(signature_method: str) -> None:
    body = b"name=Jane+Doe&tag=b&tag=a&empty="
    header = client_sign(ASYNC, "POST", body, FORM, signature_method)
    assert check(header, body=body, content_type=FORM).signature_method == signature_method
    # A charset parameter on the media type does not change what is signed.
    check(header, body=body, content_type="Application/X-WWW-Form-URLEncoded; charset=UTF-8")


def test_raw_brackets_in_query_verify_like_their_encoded_form() -> None:
    # curl and browsers send searchCriteria[...] unencoded; the decoded parameters are signed.
    header = client_sign(SYNC + "?searchCriteria%5BpageSize%5D=5", "GET")
    check(header, url=SYNC + "?searchCriteria[pageSize]=5", method="GET")


def test_json_body_is_not_signed_but_an_oauth_body_hash_is_accepted() -> None:
    body = b'{"customer": {"email": "jane@example.com"}}'
    header = client_sign(ASYNC, "POST", body, "application/json")
    assert "oauth_body_hash" in oauth_params(header)
    check(header, body=body, content_type="application/json")


def test_host_case_default_port_and_realm_are_normalized() -> None:
    header = client_sign("http://shop.example/rest/V1/orders", "GET")
    check(header, url="http://SHOP.example:80/rest/V1/orders", method="GET")
    check(
        'OAuth realm="shop",' + header[len("OAuth") :],
        url="http://shop.example/rest/V1/orders",
        method="GET",
    )
    on_port = client_sign("https://shop.example:8443/rest/V1/orders", "GET")
    fails(on_port, INVALID_SIGNATURE, url="https://shop.example/rest/V1/orders", method="GET")


# ---- failures -------------------------------------------------------------------------


def test_tampered_signature() -> None:
    header = client_sign(ASYNC)
    sig = oauth_params(header)["oauth_signature"]
    fails(
        edit(header, oauth_signature=("A" if sig[0] != "A" else "B") + sig[1:]), INVALID_SIGNATURE
    )
    fails(edit(header, oauth_signature="é"), INVALID_SIGNATURE)


def test_wrong_consumer_secret() -> None:
    fails(client_sign(ASYNC, secret="not-the-secret"), INVALID_SIGNATURE)


def test_wrong_token_secret() -> None:
    fails(client_sign(ASYNC, token_secret="not-the-secret"), INVALID_SIGNATURE)


def test_secrets_of_another_integration_do_not_sign_for_this_one() -> None:
    header = client_sign(ASYNC, secret="pim-consumer-secret", token_secret="pim-token-secret")
    fails(header, INVALID_SIGNATURE)


def test_unknown_consumer_key() -> None:
    exc = fails(client_sign(ASYNC, key="nobody"), UNAUTHORIZED)
    assert set(exc.parameters) == {"resources"}


def test_token_of_another_integration() -> None:
    fails(client_sign(ASYNC, token=OTHER.access_token), UNAUTHORIZED)
    fails(client_sign(ASYNC, token="revoked"), UNAUTHORIZED)


@pytest.mark.parametrize("skew", [-601, 601, -100_000])
def test_timestamp_outside_window(skew: float) -> None:
    fails(client_sign(ASYNC, timestamp=NOW + skew), OUTSIDE_WINDOW)


@pytest.mark.parametrize("skew", [-600, 0, 600])
def test_timestamp_inside_window(skew: float) -> None:
    check(client_sign(ASYNC, timestamp=NOW + skew))


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1.7e9", "\u0661\u0667" * 5])
def test_timestamp_not_a_positive_integer(value: str) -> None:
    fails(edit(client_sign(ASYNC), oauth_timestamp=value), BAD_TIMESTAMP)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(header: str | None) -> None:
    assert "missing" in fails(header, "The Authorization header is missing.").message


@pytest.mark.parametrize("header", ["Bearer abc.def", "Basic dXNlcjpwYXNz", "OAuth2 x=1"])
def test_not_an_oauth_header(header: str) -> None:
    fails(header, "The Authorization header is not an OAuth 1.0a header.")


@pytest.mark.parametrize("header", ["OAuth", "OAuth ", "OAuth garbage", "OAuth a, b"])
def test_malformed_header(header: str) -> None:
    fails(header, "The OAuth Authorization header is malformed.")


@pytest.mark.parametrize(
    "name",
    [
        "oauth_consumer_key",
        "oauth_token",
        "oauth_signature_method",
        "oauth_timestamp",
        "oauth_nonce",
        "oauth_signature",
    ],
)
def test_missing_parameter(name: str) -> None:
    exc = fails(edit(client_sign(ASYNC), drop=name), REQUIRED_FIELD)
    assert exc.parameters == {"fieldName": name}
    exc = fails(edit(client_sign(ASYNC), **{name: ""}), REQUIRED_FIELD)
    assert exc.parameters == {"fieldName": name}


def test_version_and_signature_method() -> None:
    header = client_sign(ASYNC)
    fails(edit(header, drop="oauth_version"), INVALID_SIGNATURE)  # signed when present
    fails(edit(header, oauth_version="2.0"), "The OAuth version isn't supported. Use 1.0.")
    for method in ("PLAINTEXT", "RSA-SHA1", "HMAC-SHA512", "hmac-sha256"):
        fails(
            edit(header, oauth_signature_method=method),
            "The signature method isn't supported. Use HMAC-SHA1 or HMAC-SHA256.",
        )


def test_signature_made_for_the_async_url_fails_for_the_sync_url() -> None:
    header = client_sign(ASYNC, "POST")
    check(header, url=ASYNC)
    fails(header, INVALID_SIGNATURE, url=SYNC)
    fails(header, INVALID_SIGNATURE, url=ASYNC.replace("https", "http"))
    fails(header, INVALID_SIGNATURE, url=ASYNC.replace("shop.example", "other.example"))
    fails(header, INVALID_SIGNATURE, url=ASYNC, method="PUT")
    fails(header, INVALID_SIGNATURE, url=ASYNC + "?dryRun=1")


def test_changed_form_body_or_query_fails() -> None:
    body = b"name=Jane"
    header = client_sign(ASYNC, "POST", body, FORM)
    fails(header, INVALID_SIGNATURE, body=b"name=Mallory", content_type=FORM)
    # Sent as JSON, the same bytes are no longer parameters: the signed set changes.
    fails(header, INVALID_SIGNATURE, body=body, content_type="text/plain")
    query = client_sign(SYNC + "?id=1", "GET")
    fails(query, INVALID_SIGNATURE, url=SYNC + "?id=2", method="GET")


def test_secrets_are_hidden_from_repr() -> None:
    for shown in (repr(ERP), str(ERP), repr(check(client_sign(ASYNC)))):
        for secret in SECRETS:
            assert secret not in shown


# ---- sign(): the replay ---------------------------------------------------------------


@pytest.mark.parametrize("signature_method", METHODS)
def test_sign_verifies_with_verify(signature_method: str) -> None:
    header = sign("POST", SYNC, ERP, signature_method, now=NOW)
    result = check(header, url=SYNC)
    assert result.signature_method == signature_method
    assert result.integration is ERP
    fails(header, INVALID_SIGNATURE, url=ASYNC)


@pytest.mark.parametrize(
    ("method", "url", "body", "content_type"),
    [
        ("PUT", SYNC + "/5?storeId=1&x[]=a", b'{"customer": {}}', "application/json"),
        ("POST", SYNC, b"a=1&b=%5B2%5D&b=", FORM + "; charset=UTF-8"),
        ("DELETE", "https://shop.example:8443/rest/default/V1/products/sku%20one", b"", None),
        ("GET", SYNC + "?searchCriteria[filter_groups][0][filters][0][field]=email", b"", None),
    ],
)
def test_sign_covers_query_and_form(
    method: str, url: str, body: bytes, content_type: str | None
) -> None:
    header = sign(method, url, ERP, body=body, content_type=content_type, now=NOW)
    check(header, url=url, method=method, body=body, content_type=content_type)
    assert "oauth_body_hash" not in header
    if content_type and content_type.startswith(FORM):
        fails(
            header,
            INVALID_SIGNATURE,
            url=url,
            method=method,
            body=body + b"&c=3",
            content_type=content_type,
        )


class _Validator(RequestValidator):  # type: ignore[misc]
    """The server side of oauthlib, knowing ERP only; no nonce memory."""

    enforce_ssl = False
    safe_characters: ClassVar[set[str]] = set(utils.UNICODE_ASCII_CHARACTER_SET)
    client_key_length = access_token_length = nonce_length = (8, 64)
    dummy_client = "dummy-client-key-0000"
    dummy_access_token = "dummy-access-token-0000"

    def validate_client_key(self, client_key: str, request: Any) -> bool:
        return client_key == ERP.consumer_key

    def validate_timestamp_and_nonce(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def get_client_secret(self, client_key: str, request: Any) -> str:
        return CONSUMER_SECRET if client_key == ERP.consumer_key else "dummy"

    def get_access_token_secret(self, client_key: str, token: str, request: Any) -> str:
        return TOKEN_SECRET if token == ERP.access_token else "dummy"


@pytest.mark.parametrize("signature_method", METHODS)
def test_sign_verifies_with_oauthlibs_own_endpoint(signature_method: str) -> None:
    endpoint = SignatureOnlyEndpoint(_Validator())
    url = SYNC + "/7?storeId=1"
    body = b"email=jane%40example.com"
    header = sign("PUT", url, ERP, signature_method, body=body, content_type=FORM)
    headers = {"Authorization": header, "Content-Type": FORM}
    ok, _ = endpoint.validate_request(url, "PUT", body.decode(), headers)
    assert ok
    ok, _ = endpoint.validate_request(
        url.replace("/V1/", "/async/V1/"), "PUT", body.decode(), headers
    )
    assert not ok


def test_each_sign_call_is_fresh() -> None:
    before = time.time()
    first, second = (oauth_params(sign("POST", SYNC, ERP)) for _ in range(2))
    after = time.time()
    assert first["oauth_nonce"] != second["oauth_nonce"]
    assert len(first["oauth_nonce"]) == 32
    assert first["oauth_signature"] != second["oauth_signature"]
    for params in (first, second):
        assert int(before) <= int(params["oauth_timestamp"]) <= after
        assert params["oauth_consumer_key"] == ERP.consumer_key
        assert params["oauth_token"] == ERP.access_token
        assert params["oauth_version"] == "1.0"
    # A fresh signature verifies against the real clock.
    check(sign("POST", SYNC, ERP), url=SYNC, now=time.time())


def test_sign_honours_given_nonce_and_time_and_hides_secrets() -> None:
    header = sign("POST", SYNC, ERP, nonce="fixed-nonce", now=NOW + 0.9)
    params = oauth_params(header)
    assert params["oauth_nonce"] == "fixed-nonce"
    assert params["oauth_timestamp"] == str(int(NOW))
    for secret in SECRETS:
        assert secret not in header
    with pytest.raises(ValueError, match="unsupported signature method"):
        sign("POST", SYNC, ERP, "PLAINTEXT")


def test_header_quirks() -> None:
    header = client_sign(ASYNC)
    check("oauth\t" + header[len("OAuth ") :])
    long_nonce = edit(header, oauth_nonce="n" * 256)
    fails(long_nonce, "The nonce is too long.")
    # A URL the caller failed to make absolute is refused, not crashed on.
    fails(header, INVALID_SIGNATURE, url="/rest/all/async/V1/customers")


def test_oauthlib_client_refuses_raw_brackets_that_sign_accepts() -> None:
    # Why sign() re-encodes the query: oauthlib's decoder rejects "[" instead of decoding it.
    url = SYNC + "?searchCriteria[pageSize]=5"
    with pytest.raises(ValueError, match="non urlencoded"):
        client_sign(url, "GET")
    check(sign("GET", url, ERP, now=NOW), url=url, method="GET")
