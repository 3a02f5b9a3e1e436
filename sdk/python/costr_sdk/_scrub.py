"""Credentials removed from everything the SDK sends: API keys of the providers, bearer tokens,
JWTs, Slack and GitHub tokens, Costr's own tokens. Applied to every string of a record, keys
and values, after ``before_send``."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"
CREDENTIAL = re.compile(
    "|".join(
        (
            r"sk-ant-[A-Za-z0-9_\-]{8,}",  # Anthropic
            r"sk-[A-Za-z0-9_\-]{16,}",  # OpenAI (sk-proj-…, sk-svcacct-…, legacy sk-…)
            r"AIza[0-9A-Za-z_\-]{30,}",  # Google API keys
            r"(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}",  # an Authorization value
            r"eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",  # JWT
            r"xox[abposre]-[A-Za-z0-9\-]{10,}",  # Slack
            r"gh[pousr]_[A-Za-z0-9]{20,}",  # GitHub classic tokens
            r"github_pat_[A-Za-z0-9_]{20,}",  # GitHub fine-grained tokens
            r"costr_[A-Za-z0-9_\-]{16,}",  # Costr proxy and API tokens
        )
    )
)


def scrub_text(text: str) -> str:
    return CREDENTIAL.sub(REDACTED, text) if text else text


def scrub(value: Any) -> Any:
    """A copy of ``value`` (JSON-like) with every credential in a string replaced."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    return value
