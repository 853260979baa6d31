"""Throw-away databases on a server, for the tests and the benchmarks."""

from __future__ import annotations

import os

from sqlalchemy import create_engine, make_url, text

DEFAULT_SERVER_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/",
}


def server_url(backend: str, env_prefix: str) -> str:
    """The server of ``backend``: ``{env_prefix}_POSTGRESQL_URL`` etc., else the local one."""
    return os.environ.get(f"{env_prefix}_{backend.upper()}_URL", DEFAULT_SERVER_URLS[backend])


def recreate_database(server_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server; return its URL."""
    url = make_url(server_url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if url.get_backend_name() == "postgresql":
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                conn.execute(text(f"CREATE DATABASE {name}"))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
                conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def reachable(url: str) -> bool:
    """True when a connection to ``url`` opens."""
    engine = create_engine(url)
    try:
        with engine.connect():
            return True
    except Exception:
        return False
    finally:
        engine.dispose()
