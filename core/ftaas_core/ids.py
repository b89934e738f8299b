"""Object ids in OpenAI's style (``file-…``, ``ftjob-…``): a prefix and a random, URL-safe suffix."""

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}-" + "".join(secrets.choice(_ALPHABET) for _ in range(length))
