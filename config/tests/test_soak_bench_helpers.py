"""The soak bench's own judgement (bench/soak.py): what counts as delivered once, as growth, and
what an open descriptor is. The soak itself is not run here: it takes minutes."""

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import soak  # bench/ is a folder of scripts, not a package


def test_each_acknowledged_event_is_judged_by_its_200s_and_its_deliverys_status():
    answers = {
        "once": [1, 2],  # two 500s, then a 200
        "twice": [2, 0],
        "dead": [0, 4],
        "waiting": [0, 1],
        "not_fanned_out": [0, 0],
        "unrecorded": [1, 0],
        "in_flight": [1, 0],  # answered, not recorded yet
    }
    statuses = {
        "once": "succeeded",
        "twice": "succeeded",
        "dead": "dead",
        "waiting": "pending",
        "unrecorded": "pending",
        "in_flight": "in_flight",
        "backlog": "pending",
        "not_fanned_out": "received",
        "never_sent": "succeeded",
    }
    acked = [*statuses, "no_delivery"]

    result = soak.check_arrivals(acked, answers, statuses)

    assert result["delivered_once"] == 1
    assert result["duplicates"] == 1
    assert result["dead"] == 1
    assert result["retrying"] == 1
    assert result["not_sent_yet"] == 2
    assert result["in_flight"] == 1
    assert result["success_unrecorded"] == 1
    assert result["success_unrecorded_statuses"] == {"pending": 1}
    assert result["lost"] == 2  # "succeeded" with no 200 seen, and no delivery at all
    assert result["ok"] is False


def test_only_dead_and_retrying_events_besides_single_arrivals_pass():
    result = soak.check_arrivals(["a", "b", "c"], {"a": [1, 0]}, {"a": "succeeded", "b": "dead", "c": "in_flight"})

    assert result["ok"] is True


def test_growth_past_a_threshold_is_flagged_per_process_and_replaced_processes_are_named():
    mib = 1024 * 1024
    first = {
        "processes": {"worker 1": {"rss_bytes": 100 * mib, "fds": 20}, "child 2": {"rss_bytes": 90 * mib, "fds": 30}},
        "pg_connections": 10,
        "redis_keys": 12,
        "redis_key_bytes": 10_000,
    }
    last = {
        "processes": {"worker 1": {"rss_bytes": 130 * mib, "fds": 21}, "child 3": {"rss_bytes": 80 * mib, "fds": 30}},
        "pg_connections": 10,
        "redis_keys": 12,
        "redis_key_bytes": 10_000,
    }
    thresholds = {"rss_bytes": 16 * mib, "fds": 16, "pg_connections": 5, "redis_keys": 200, "redis_key_bytes": mib}

    middle = {**first, "processes": {**first["processes"], "worker 1": {"rss_bytes": 115 * mib, "fds": 21}}}

    result = soak.verdicts(first, middle, last, elapsed=120, thresholds=thresholds)

    assert result["rss_bytes"]["verdict"] == "GROWS"
    assert result["rss_bytes"]["flagged"] == {
        "worker 1": {"growth": 30 * mib, "per_minute": 15 * mib, "second_half": 15 * mib}
    }
    assert result["fds"]["verdict"] == "ok"
    assert result["pg_connections"]["verdict"] == "ok"
    assert result["replaced_processes"] == {"gone": ["child 2"], "new": ["child 3"]}


def test_a_tcp_connection_is_named_by_the_port_at_its_far_end():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                targets = [f"socket:[{os.fstat(client.fileno()).st_ino}]", "pipe:[1]", "/var/log/syslog"]
                kinds = soak.fd_kinds(targets, soak.tcp_sockets(), {port: "receiver"})

    assert kinds == {"file": 1, "pipe": 1, "tcp receiver": 1}


def test_growth_that_levelled_off_in_the_second_half_is_not_flagged():
    sample = {"pg_connections": 10, "redis_keys": 12, "redis_key_bytes": 0}
    first = {**sample, "processes": {"pool child": {"rss_bytes": 100, "fds": 24}}}
    middle = {**sample, "processes": {"pool child": {"rss_bytes": 100, "fds": 40}}}  # its connections opened
    last = {**sample, "processes": {"pool child": {"rss_bytes": 100, "fds": 41}}}

    result = soak.verdicts(first, middle, last, elapsed=150)

    assert result["fds"]["verdict"] == "ok"
    assert list(result["fds"]["levelled_off"]) == ["pool child"]
