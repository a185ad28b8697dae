"""Logging set-up shared by every entry point."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "INFO", prefix: str = "") -> None:
    fmt = f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    # uvicorn's access log is per request: keep it for debugging only
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
