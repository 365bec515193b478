"""The deploy stage's verdicts on a smoke test, on tiny frames."""

import pandas as pd

from prefect_mlops.mlops.config import DeployConfig
from prefect_mlops.tasks.deploy import compare_predictions, judge_smoke_test

EXPECTED = pd.DataFrame({"prediction": ["0", "1", "0"], "probability": [0.1, 0.9, 0.2]})
FAST = [0.001] * 20


def test_equal_predictions_within_budget_pass():
    check = judge_smoke_test("http://a", "3", EXPECTED.copy(), EXPECTED, FAST, DeployConfig())
    assert check.passed and check.max_difference == 0.0 and check.served_version == "3"
    assert check.latency_p95_ms == 1.0 and check.rows == 3


def test_a_different_label_or_probability_fails_naming_the_row():
    label = EXPECTED.assign(prediction=["0", "0", "0"])
    agree, _, detail = compare_predictions(label, EXPECTED)
    assert not agree and detail == "'prediction' row 1: '0', expected '1'"
    drift = EXPECTED.assign(probability=[0.1, 0.9, 0.2000001])
    agree, largest, detail = compare_predictions(drift, EXPECTED)
    assert not agree and largest > 9e-8 and detail.startswith("'probability' row 2")
    agree, largest, _ = compare_predictions(
        EXPECTED.assign(probability=[0.1, 0.9, 0.2 + 1e-15]), EXPECTED
    )
    assert agree and largest < 1e-14  # JSON round trips are exact; 1e-9 relative is allowed
    agree, _, detail = compare_predictions(EXPECTED[["probability"]], EXPECTED)
    assert not agree and "columns ['probability']" in detail


def test_a_slow_target_fails_with_the_budget_named():
    slow = [0.001] * 18 + [0.5, 0.5]
    check = judge_smoke_test(
        "http://a", "3", EXPECTED, EXPECTED, slow, DeployConfig(max_latency_p95_ms=10)
    )
    assert not check.passed
    assert check.detail.startswith(
        "http://a: single-row p95 latency 500.0 ms is over the budget of 10 ms"
    )


def test_a_headless_service_name_stands_for_each_replica(monkeypatch):
    import socket

    from prefect_mlops.serving.client import replica_urls

    assert replica_urls("http://127.0.0.1:5001") == ["http://127.0.0.1:5001"]
    assert replica_urls("http://localhost:5001") == ["http://localhost:5001"]  # one IPv4 address
    assert replica_urls("http://no-such-host.invalid:5001") == ["http://no-such-host.invalid:5001"]

    def two_pods(host, port, *args):  # what cluster DNS answers for a headless Service
        assert host == "serving-replicas.mlops.svc"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in ("10.1.0.7", "10.1.0.5")
        ]

    monkeypatch.setattr(socket, "getaddrinfo", two_pods)
    assert replica_urls("http://serving-replicas.mlops.svc:5001") == [
        "http://10.1.0.5:5001",
        "http://10.1.0.7:5001",
    ]
