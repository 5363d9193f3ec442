"""`python -m services.control --host 127.0.0.1 --port 50051 --home DIR --ray-address URL`"""

from __future__ import annotations

import asyncio
import sys

from services.common.server import configure_logging
from services.control.app import serve
from services.control.config import ensure_service_token, load_config


def main(argv: list[str] | None = None) -> int:
    config = load_config(argv)
    configure_logging(config.log_level)
    config = ensure_service_token(config)
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
