"""Checking a glmft webhook delivery where it arrives (Standard Webhooks signatures).

```python
from glmft_client.signatures import verify_webhook

verify_webhook(secret, request.headers, raw_body)   # raises WebhookVerificationError
```

The signature is ``v1,<base64 HMAC-SHA256>`` of ``"{webhook-id}.{webhook-timestamp}.{body}"``
keyed by the base64-decoded part of the secret after ``whsec_``; a timestamp more than
``tolerance_s`` away from now is refused (a replay). Deduplicate on ``webhook-id``: a delivery
is retried until it is answered 2xx, so it may arrive twice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

from glmft_client.errors import GlmftError

TOLERANCE_S = 300


class WebhookVerificationError(GlmftError):
    """A delivery whose signature or timestamp does not check out."""


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check ``body`` against its ``webhook-*`` headers (any case); raises
    :class:`WebhookVerificationError`."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp = lower.get("webhook-id", ""), lower.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        raise WebhookVerificationError("missing webhook-id or webhook-timestamp")
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        raise WebhookVerificationError("timestamp outside the replay window")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    for candidate in lower.get("webhook-signature", "").split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise WebhookVerificationError("no valid signature")
