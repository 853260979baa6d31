"""The HTTP service (``balance serve``): FastAPI over BalanceService."""

from .app import create_app

__all__ = ["create_app"]
