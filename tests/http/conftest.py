from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from balance_ledger import BalanceService
from balance_ledger.http import create_app

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(svc: BalanceService) -> Iterator[MakeClient]:
    """A TestClient of the app over ``svc`` holding a fresh key with ``scopes``."""
    clients: list[TestClient] = []

    def make(*scopes: str, **app_options: object) -> TestClient:
        key, secret = svc.create_api_key(f"test-{len(clients)}", list(scopes) or ["admin"])
        client = TestClient(create_app(svc, **app_options), raise_server_exceptions=False)
        client.headers["Authorization"] = f"Bearer {secret}"
        client.key_id = key.id  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    """An admin's client."""
    return make_client("admin")
