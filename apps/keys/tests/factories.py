"""Valid-looking provider keys: each call gives a new one, so fingerprints never collide."""

import itertools

_counter = itertools.count(1)


def openai_key() -> str:
    return f"sk-proj-TestKey{next(_counter):06d}abcdefghijklmnopqrstuv"


def anthropic_key() -> str:
    return f"sk-ant-api03-TestKey{next(_counter):06d}abcdefghijklmnop"


def google_key() -> str:
    return f"AIzaTestKey{next(_counter):06d}" + "x" * 22


KEY_MAKERS = {"openai": openai_key, "anthropic": anthropic_key, "google": google_key}
