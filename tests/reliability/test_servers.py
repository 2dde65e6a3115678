"""Self-test of the private servers: PostgreSQL keeps data across a clean and a
crash restart; Redis comes back empty (no persistence) and answering."""

from __future__ import annotations

import psycopg
import pytest
import redis

from tests.reliability.servers import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.reliability


def _rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, note FROM t ORDER BY id").fetchall()


def test_postgres_keeps_data_across_restart_and_crash():
    with PrivatePostgres() as pg:
        pg.create_database("lf_rel")
        conninfo = pg.url("lf_rel").replace("+psycopg", "")
        with psycopg.connect(conninfo) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO t VALUES (1, 'before restart')")

        pg.restart()
        assert _rows(conninfo) == [(1, "before restart")]

        pg.stop(mode="immediate")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(conninfo, connect_timeout=2)
        pg.start()
        assert _rows(conninfo) == [(1, "before restart")]
        assert "database system was interrupted" in pg.logfile.read_text()  # crash recovery ran
    assert not pg.root.exists()


def test_redis_restart_loses_keys():
    with PrivateRedis() as rs:
        client = redis.Redis.from_url(rs.url())
        client.set("k", "v")
        assert client.get("k") == b"v"

        rs.restart()
        client = redis.Redis.from_url(rs.url())
        assert client.ping()
        assert client.get("k") is None
        assert client.dbsize() == 0
    assert not rs.running
    assert not rs.root.exists()


def test_busy_port_is_refused_and_its_server_left_alone():
    """A private server must never answer readiness checks with, or stop, a server it does not own."""
    with PrivateRedis() as owner, PrivatePostgres() as pg_owner:
        with pytest.raises(RuntimeError, match="already in use"):
            with PrivateRedis(port=owner.port):
                pass
        with pytest.raises(RuntimeError, match="already in use"):
            with PrivatePostgres(port=pg_owner.port):
                pass
        assert redis.Redis.from_url(owner.url()).ping()
        with psycopg.connect(pg_owner.admin_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
