"""OAuth 1.0a (RFC 5849) as Magento checks it: verify a client's request, sign a replay.

Magento's signature covers the method, the full URL as requested (so ``/rest/all/async/V1/x``
and ``/rest/all/V1/x`` differ), the query, the ``Authorization`` parameters and, for
``application/x-www-form-urlencoded`` bodies, the form parameters (§3.4.1).  A replay for
the sync URL therefore cannot reuse the client's header: the consumer calls :func:`sign`
with the same integration's four credentials, a fresh nonce and timestamp, on every attempt.

Pure: no I/O.  :func:`verify` does NOT check that the nonce is new; the caller does that
against the store, which several gateway hosts share (keyed by consumer key and nonce, kept
at least ``2 * window`` seconds).  Other bodies (JSON) are not signed, as in Magento; an
``oauth_body_hash`` a client sends is covered by the signature but not compared with the body.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from oauthlib.oauth1 import Client
from oauthlib.oauth1.rfc5849 import signature, utils

from asyncgate.settings import IntegrationSettings

FORM = "application/x-www-form-urlencoded"
SIGNERS = {
    "HMAC-SHA1": signature.sign_hmac_sha1_with_client,
    "HMAC-SHA256": signature.sign_hmac_sha256_with_client,
}
REQUIRED = (
    "oauth_consumer_key",
    "oauth_token",
    "oauth_signature_method",
    "oauth_timestamp",
    "oauth_nonce",
    "oauth_signature",
)
MAX_NONCE = 255

INVALID_SIGNATURE = "The signature is invalid. Verify and try again."
UNAUTHORIZED = "The consumer isn't authorized to access %resources."
REQUIRED_FIELD = '"%fieldName" is required. Enter and try again.'
BAD_TIMESTAMP = "Incorrect timestamp value in the oauth_timestamp parameter."
OUTSIDE_WINDOW = "The timestamp is outside the allowed window. Check the clock and try again."


class OAuthError(Exception):
    """A request failed OAuth verification: answer 401 with ``message`` and ``parameters``.

    ``message`` is Magento's text (placeholders such as ``%resources`` are filled from
    ``parameters``, as Magento's error body does); ``reason`` is a short cause for logs.
    Neither ever holds a secret.
    """

    def __init__(
        self, message: str, parameters: Mapping[str, str] | None = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.parameters: dict[str, str] = dict(parameters or {})
        self.reason = reason or message


@dataclass(frozen=True)
class Verified:
    integration: IntegrationSettings
    consumer_key: str
    nonce: str
    timestamp: int
    signature_method: str


def _unauthorized(reason: str) -> OAuthError:
    return OAuthError(UNAUTHORIZED, {"resources": "the requested resource"}, reason)


def _is_form(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == FORM


def _pairs(text: str) -> list[tuple[str, str]]:
    # Form decoding (W3C HTML 4.0 §17.13.4).  oauthlib's own ``urldecode`` refuses raw
    # characters such as "[" (Magento's searchCriteria[...]) instead of decoding them.
    return parse_qsl(text, keep_blank_values=True)


def _secrets_client(integration: IntegrationSettings, **kwargs: str) -> Client:
    return Client(
        integration.consumer_key,
        client_secret=integration.consumer_secret.reveal(),
        resource_owner_key=integration.access_token,
        resource_owner_secret=integration.access_token_secret.reveal(),
        **kwargs,
    )


def verify(
    method: str,
    url: str,
    authorization: str | None,
    body: bytes,
    content_type: str | None,
    integrations: Mapping[str, IntegrationSettings],
    now: float,
    window: float = 600.0,
) -> Verified:
    """Check an OAuth 1.0a request; ``url`` is the full URL exactly as the client sent it.

    Raises :class:`OAuthError`.  The caller must still reject a reused ``nonce``.
    """
    if not authorization or not authorization.strip():
        raise OAuthError("The Authorization header is missing.", reason="no header")
    scheme, _, rest = authorization.strip().replace("\t", " ").partition(" ")
    if scheme.lower() != "oauth":
        raise OAuthError("The Authorization header is not an OAuth 1.0a header.", reason="scheme")
    header = f"OAuth {rest.strip()}"
    try:
        oauth = {k: utils.unescape(v) for k, v in utils.parse_authorization_header(header)}
    except ValueError:
        oauth = {}
    if not rest.strip() or not oauth:
        raise OAuthError("The OAuth Authorization header is malformed.", reason="malformed")
    for name in REQUIRED:
        if not oauth.get(name):
            raise OAuthError(REQUIRED_FIELD, {"fieldName": name}, f"missing {name}")
    if oauth.get("oauth_version", "1.0") != "1.0":
        raise OAuthError("The OAuth version isn't supported. Use 1.0.", reason="version")
    method_name = oauth["oauth_signature_method"]
    if method_name not in SIGNERS:
        raise OAuthError(
            "The signature method isn't supported. Use HMAC-SHA1 or HMAC-SHA256.",
            reason="signature method",
        )
    raw_ts, nonce = oauth["oauth_timestamp"], oauth["oauth_nonce"]
    if not (raw_ts.isascii() and raw_ts.isdigit()) or int(raw_ts) <= 0:
        raise OAuthError(BAD_TIMESTAMP, reason="timestamp not an integer")
    if len(nonce) > MAX_NONCE:
        raise OAuthError("The nonce is too long.", reason="nonce length")

    consumer_key = oauth["oauth_consumer_key"]
    integration = integrations.get(consumer_key)
    if integration is None:
        raise _unauthorized("unknown consumer key")
    if not hmac.compare_digest(
        oauth["oauth_token"].encode("utf-8"), integration.access_token.encode("utf-8")
    ):
        raise _unauthorized("token does not match the integration")
    timestamp = int(raw_ts)
    if abs(timestamp - now) > window:
        raise OAuthError(OUTSIDE_WINDOW, reason=f"timestamp off by {timestamp - now:+.0f}s")

    # Query and form parameters are decoded here and handed over as a list; oauthlib
    # adds the header's (unescaped, without realm and oauth_signature).
    parts = urlsplit(url)
    extra = _pairs(parts.query)
    if _is_form(content_type):
        extra += _pairs(body.decode("utf-8", "replace"))
    try:
        params = signature.collect_parameters(body=extra, headers={"Authorization": header})
        base = signature.signature_base_string(
            method, signature.base_string_uri(url), signature.normalize_parameters(params)
        )
    except ValueError as exc:
        raise OAuthError(INVALID_SIGNATURE, reason=f"unusable request: {exc}") from None
    expected: str = SIGNERS[method_name](base, _secrets_client(integration))
    given = oauth["oauth_signature"]
    if not hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8")):
        raise OAuthError(INVALID_SIGNATURE, reason="signature mismatch")
    return Verified(integration, consumer_key, nonce, timestamp, method_name)


def sign(
    method: str,
    url: str,
    integration: IntegrationSettings,
    signature_method: str = "HMAC-SHA256",
    body: bytes = b"",
    content_type: str | None = None,
    now: float | None = None,
    nonce: str | None = None,
) -> str:
    """Return the ``Authorization`` value for ``method url``: a fresh nonce and timestamp.

    Call it for every attempt.  A form body must be sent as given; oauthlib refuses one
    on GET or HEAD (ValueError).
    """
    if signature_method not in SIGNERS:
        raise ValueError(f"unsupported signature method {signature_method!r}")
    client = _secrets_client(
        integration,
        signature_method=signature_method,
        nonce=nonce or secrets.token_hex(16),
        timestamp=str(int(time.time() if now is None else now)),
    )
    # Re-encode query and form for oauthlib's strict decoder (it refuses a raw "["): the
    # parameters, all that is signed of them, are unchanged, and the caller sends its own
    # bytes.  A string, not a list: oauthlib turns a list body into a dict, losing repeats.
    parts = urlsplit(url)
    clean = urlunsplit(parts._replace(query=urlencode(_pairs(parts.query)), fragment=""))
    form = urlencode(_pairs(body.decode("utf-8", "replace"))) if _is_form(content_type) else ""
    _, headers, _ = client.sign(
        clean,
        http_method=method.upper(),
        body=form or None,
        headers={"Content-Type": FORM} if form else {},
    )
    header: str = headers["Authorization"]
    return header
