"""Page sizes and opaque page tokens for the List RPCs."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(position: list) -> str:
    """An opaque token for the position after which the next page starts."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def decode_token(token: str) -> list:
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidArgument("invalid page_token") from None
    if not isinstance(position, list):
        raise InvalidArgument("invalid page_token")
    return position


def encode_created(created_on: datetime, item_id: str) -> str:
    """The token after an item of a newest-first list ordered by (created_on, id)."""
    return encode_token([created_on.isoformat(), item_id])


def decode_created(token: str) -> tuple[datetime, str]:
    """`encode_created`'s (created_on, id), or InvalidArgument."""
    position = decode_token(token)
    try:
        created_on, item_id = position
        return datetime.fromisoformat(created_on), str(item_id)
    except (ValueError, TypeError):
        raise InvalidArgument("invalid page_token") from None
