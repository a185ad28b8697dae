"""The address-list forms of the service URLs: Sentinel, several AMQP nodes, MySQL servers.

Parsing only (no server): what each form means, that the one-address forms mean what they
always did, and that a malformed list is a ConfigError naming the problem.
"""

from __future__ import annotations

import pytest

from common import amqpconn
from common.addrlist import parse_host_list
from common.db import MySQLParams
from common.errors import ConfigError
from common.redact import redact_url
from common.redisconn import SentinelParams, SentinelRedis, client_for, is_sentinel_url


def test_host_lists() -> None:
    assert parse_host_list("a:1,b,[fd00::1]:3", 9, "x") == (("a", 1), ("b", 9), ("fd00::1", 3))
    for bad in ("", "a,,b", "a:x", "a:0", "a:70000", ":5", "fd00::1:3", "[fd00::1", "a:1,a:1"):
        with pytest.raises(ConfigError):
            parse_host_list(bad, 9, "x")


def test_sentinel_url() -> None:
    p = SentinelParams.from_url(
        "redis+sentinel://:p%40ss@10.0.0.1:26380,10.0.0.2,10.0.0.3:26379/im/3"
        "?sentinel_password=s&socket_timeout=1.5"
    )
    assert p.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("10.0.0.3", 26379))
    assert (p.service, p.db, p.username, p.password) == ("im", 3, None, "p@ss")
    assert (p.sentinel_password, p.socket_timeout, p.socket_connect_timeout) == ("s", 1.5, 5.0)
    assert SentinelParams.from_url("redis+sentinel://h/mymaster").db == 0
    for bad in (
        "redis+sentinel://h",  # no service
        "redis+sentinel://h/",
        "redis+sentinel://h/im/x",
        "redis+sentinel://h/im/0/extra",
        "redis+sentinel://h/im?colour=blue",
        "redis+sentinel://h/im?socket_timeout=-1",
        "redis+sentinel://h:x/im",
        "redis+sentinel://,h/im",
    ):
        with pytest.raises(ConfigError):
            SentinelParams.from_url(bad)
    assert redact_url("redis+sentinel://:secret@h1:26379,h2:26379/im/0").count("secret") == 0


def test_sentinel_client_has_liveness_settings_and_one_server_url_has_not() -> None:
    """The Sentinel form gives up a silent server (keep-alive, user timeout, health checks);
    the one-server form is redis-py's own, unchanged."""
    url = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/im/2"
    assert is_sentinel_url(url) and not is_sentinel_url("redis://127.0.0.1:6379/0")
    client = client_for(url)
    assert isinstance(client, SentinelRedis)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["db"] == 2 and kwargs["socket_keepalive"] is True
    assert kwargs["health_check_interval"] > 0 and kwargs["socket_keepalive_options"]
    plain = client_for("redis://127.0.0.1:6379/4?socket_connect_timeout=1")
    plain_kwargs = plain.connection_pool.connection_kwargs
    assert plain_kwargs["db"] == 4 and plain_kwargs["socket_connect_timeout"] == 1.0
    assert "health_check_interval" not in plain_kwargs
    assert not plain_kwargs.get("socket_keepalive")


def test_amqp_url_lists() -> None:
    one = amqpconn.parse_urls("amqp://guest:guest@127.0.0.1:5672/?reconnect_interval=0.5")
    assert [str(u) for u in one] == ["amqp://guest:guest@127.0.0.1:5672/?reconnect_interval=0.5"]
    three = amqpconn.parse_urls(
        "amqp://u:p@10.0.0.1:5672/v?heartbeat=10, amqp://u:p@10.0.0.2:5672/v,amqp://u:p@10.0.0.3/v"
    )
    assert [u.host for u in three] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    shown = redact_url("amqp://u:secret@10.0.0.1:5672/,amqp://u:secret@10.0.0.2:5672/")
    assert "secret" not in shown and shown.count("10.0.0.") == 2
    for u in three:  # the first URL's options for all; the cluster defaults fill the rest
        assert u.query["heartbeat"] == "10"
        assert u.query["reconnect_interval"] == str(amqpconn.CLUSTER_RECONNECT)
        assert u.path == "/v"
    for bad in (
        "",
        ",",
        "http://h/",
        "amqp://h1/?heartbeat=5,amqp://h2/?heartbeat=6",
    ):
        with pytest.raises(ConfigError):
            amqpconn.parse_urls(bad)


def test_mysql_address_list() -> None:
    p = MySQLParams.from_url("mysql://im:pw@10.0.0.1:3306,10.0.0.2,[fd00::3]:3307/im?pool_size=4")
    assert p.addresses == (("10.0.0.1", 3306), ("10.0.0.2", 3306), ("fd00::3", 3307))
    assert (p.host, p.port, p.user, p.password, p.database, p.pool_size) == (
        "10.0.0.1",
        3306,
        "im",
        "pw",
        "im",
        4,
    )
    assert p.clustered
    assert "pw" not in redact_url("mysql://im:pw@10.0.0.1:3306,10.0.0.2/im")
    assert p.label == "mysql im@10.0.0.1:3306,10.0.0.2:3306,[fd00::3]:3307/im"
    one = MySQLParams.from_url("mysql://root@127.0.0.1:3306/im")
    assert one.addresses == (("127.0.0.1", 3306),) and not one.clustered
    assert one.label == "mysql root@127.0.0.1:3306/im"
    assert MySQLParams.from_url("mysql://h/im?wsrep_sync_wait=1").wsrep_sync_wait == 1
    assert one.wsrep_sync_wait is None
    for bad in (
        "mysql://root@a,,b/im",
        "mysql://root@a,b:x/im",
        "mysql://root@a:1,a:1/im",
        "mysql://h/im?wsrep_sync_wait=16",
        "mysql://h/im?wsrep_sync_wait=x",
    ):
        with pytest.raises(ConfigError):
            MySQLParams.from_url(bad)
