"""The routing file, the router's configurations (nginx, HAProxy, the bucket map) and Kubernetes
manifests made from it, the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tsvision.tools.routing.buckets import BUCKETS, bucket_table, keeps_growing_variants
from tsvision.tools.routing.proxy import HAProxy, Nginx
from tsvision.tools.routing.report import served_by_version, variant_report
from tsvision.tools.routing.routing_file import Routing
from tsvision.tools.routing.templates import render_kubernetes
from tsvision.tools.serve.manage import version_key

EXAMPLE = {"model": "classification_onnx", "sticky_header": "X-User-Id", "shadow": "3.0",
           "variants": [{"version": "1.0", "weight": 90}, {"version": "2.0", "weight": 10}]}


@pytest.mark.parametrize("change, message", [
    ({"variants": [{"version": "1.0", "weight": 90}, {"version": "2.0", "weight": 20}]}, "sum to 100"),
    ({"variants": [{"version": "1.0", "weight": 110}, {"version": "2.0", "weight": -10}]}, "not be negative"),
    ({"variants": [{"version": "1.0", "weight": 50}, {"version": "1.0", "weight": 50}]}, "twice"),
    ({"variants": []}, "at least one variant"),
    ({"shadow": "1.0"}, "also a variant"),
    ({"model": "../etc"}, "model name"),
    ({"sticky_header": "X User"}, "header name"),
    ({"weights": {}}, "unknown routing keys"),
])
def test_bad_routing_files_are_refused_with_a_reason(change, message):
    with pytest.raises(ValueError, match=message):
        Routing.from_mapping({**EXAMPLE, **change})


def test_the_shipped_routing_file_loads():
    routing = Routing.load("examples/routing.yaml")
    assert routing.model == "classification_onnx" and [v.weight for v in routing.variants] == [90, 10]


def test_nginx_accepts_the_generated_configuration_and_it_holds_no_weights(tmp_path):
    proxy = Nginx(tmp_path, 18090, "http://127.0.0.1:8080", router="127.0.0.1:18091")
    proxy.write(Routing.from_mapping(EXAMPLE))  # runs nginx -t, raises if nginx rejects it
    text = proxy.config.read_text()
    # weights and variants live in the router
    assert "split_clients" not in text and "90%" not in text and "1.0" not in text
    assert "server 127.0.0.1:18091;" in text and "proxy_pass http://ab_router;" in text
    assert "map $http_x_user_id $ab_key" in text and "mirror /_shadow;" in text
    assert "proxy_pass http://torchserve/predictions/classification_onnx/3.0;" in text
    assert '"variant":"$upstream_http_x_model_version"' in text and "listen 127.0.0.1:18090;" in text
    check = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(proxy.config)], capture_output=True)
    assert check.returncode == 0


@pytest.mark.parametrize("length", [97, 98])
def test_haproxy_admin_socket_fits_haproxys_limit_whatever_the_prefix(length):
    """HAProxy refuses a 'stats socket' path over 97 bytes (pytest-xdist's deeper temporary folders
    reached 99): from 98 on, the socket moves to a short folder of its own in /tmp."""
    base = Path(tempfile.mkdtemp(prefix="tsv-"))
    try:
        prefix = base / ("d" * (length - len(str(base)) - len("/haproxy.sock") - 1))
        assert len(str(prefix / "haproxy.sock")) == length
        proxy = HAProxy(prefix, 18091, "http://127.0.0.1:8080")
        proxy.write(Routing.from_mapping(EXAMPLE))  # runs haproxy -c, raises if HAProxy rejects it
        assert (proxy.socket == prefix / "haproxy.sock") == (length <= 97) and len(str(proxy.socket)) <= 97
    finally:
        shutil.rmtree(base)


def test_a_rejected_configuration_names_haproxys_reason(tmp_path):
    proxy = HAProxy(tmp_path, 18091, "http://127.0.0.1:8080")
    proxy.socket = Path("/tmp") / ("x" * 120 + ".sock")  # over HAProxy's limit
    with pytest.raises(RuntimeError, match=r"haproxy rejected .*\[ALERT\].*too long"):
        proxy.write(Routing.from_mapping(EXAMPLE))


def test_haproxy_accepts_the_generated_configuration_and_the_map_holds_the_weights(tmp_path):
    proxy = HAProxy(tmp_path, 18091, "http://127.0.0.1:8080")
    proxy.write(Routing.from_mapping(EXAMPLE))  # runs haproxy -c, raises if HAProxy rejects it
    text = proxy.config.read_text()
    assert "req.fhdr(X-User-Id),xxh32,mod(1000)" in text and f"map_int({proxy.map_file})" in text
    assert "set-path /predictions/classification_onnx/%[var(txn.version)]" in text and "X-Model-Version" in text
    assert f"stats socket {proxy.socket}" in text and "server torchserve 127.0.0.1:8080" in text
    table = proxy.map_file.read_text()
    assert "weights 1.0=90 2.0=10" in table and table.count(" 1.0\n") == 900 and table.count(" 2.0\n") == 100


def test_weight_changes_move_only_buckets_of_versions_that_lose_share():
    def routing(weights):
        return Routing.from_mapping({**EXAMPLE, "shadow": None,
                                     "variants": [{"version": v, "weight": w} for v, w in weights.items()]})

    table = bucket_table(routing({"1.0": 70, "2.0": 30}))
    assert len(table) == BUCKETS and table.count("2.0") == 300
    for weights in ({"1.0": 20, "2.0": 80}, {"1.0": 50, "2.0": 30, "3.0": 20}, {"1.0": 33.3, "2.0": 33.3, "3.0": 33.4},
                    {"2.0": 100}, {"1.0": 0, "2.0": 10, "3.0": 90}):
        new = bucket_table(routing(weights), table)
        assert {v: new.count(v) for v in set(new)} == {v: round(w * 10) for v, w in weights.items() if w}
        assert keeps_growing_variants(table, new)
        shrinking = sum(max(0, table.count(v) - new.count(v)) for v in set(table))
        assert sum(a != b for a, b in zip(table, new)) == shrinking  # nothing else moves
        table = new
    # Back to the weights before: the table before comes back exactly (a rollback).
    before = bucket_table(routing({"1.0": 60, "2.0": 40}), table)
    promoted = bucket_table(routing({"2.0": 100}), before)
    assert bucket_table(routing({"1.0": 60, "2.0": 40}), promoted, before) == before


def test_kubernetes_manifests_carry_the_weights_versions_and_shadow():
    documents = list(yaml.safe_load_all(render_kubernetes(Routing.from_mapping(EXAMPLE), "registry/ts:1")))
    kinds = [d["kind"] for d in documents]
    assert kinds.count("Deployment") == 3 \
        and {"Service", "DestinationRule", "VirtualService", "InferenceService"} <= set(kinds)
    deployments = {d["spec"]["template"]["metadata"]["annotations"]["tsvision/model-version"]: d
                   for d in documents if d["kind"] == "Deployment"}
    assert set(deployments) == {"1.0", "2.0", "3.0"}
    assert "classification_onnx=classification_onnx-2.0.mar" in \
        deployments["2.0"]["spec"]["template"]["spec"]["containers"][0]["args"]
    rule = next(d for d in documents if d["kind"] == "DestinationRule")
    subsets = {s["name"]: s["labels"]["version"] for s in rule["spec"]["subsets"]}
    service = next(d for d in documents if d["kind"] == "VirtualService")["spec"]["http"][0]
    weights = {subsets[r["destination"]["subset"]]: r["weight"] for r in service["route"]}
    assert weights == {"v1-0": 90, "v2-0": 10} and sum(weights.values()) == 100
    assert subsets[service["mirror"]["subset"]] == "v3-0" and service["mirrorPercentage"]["value"] == 100
    kserve = next(d for d in documents if d["kind"] == "InferenceService")
    assert kserve["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert kserve["metadata"]["annotations"]["tsvision/canary-version"] == "2.0"


def test_report_counts_errors_latency_and_labels(tmp_path):
    rows = [("1.0", 200, 0.010, "cat"), ("1.0", 200, 0.030, "dog"), ("1.0", 503, 0.020, ""), ("1.0", 200, 0.040, "cat"),
            ("2.0", 200, 0.100, "tiger%20cat")]
    log = tmp_path / "access.log"
    log.write_text("".join(json.dumps({"variant": v, "status": s, "request_time": t, "top_label": label}) + "\n"
                           for v, s, t, label in rows))
    report = variant_report(log)
    assert report["1.0"]["requests"] == 4 and report["1.0"]["errors"] == 1 and report["1.0"]["error_rate"] == 0.25
    assert report["1.0"]["p50_ms"] == pytest.approx(25.0) and report["1.0"]["top_labels"] == {"cat": 0.5, "dog": 0.25}
    assert report["2.0"]["top_labels"] == {"tiger cat": 1.0}
    metrics = ('ts_inference_requests_total{model_name="m",model_version="1.0",hostname="h",} 12.0\n'
               'ts_inference_requests_total{model_name="m",model_version="3.0",hostname="h",} 7.0\n'
               'ts_inference_requests_total{model_name="other",model_version="1.0",hostname="h",} 99.0\n')
    assert served_by_version(metrics, "m") == {"1.0": 12.0, "3.0": 7.0}


def test_versions_sort_numerically():
    assert sorted(["1.10", "1.9", "2.0", "1.0"], key=version_key) == ["1.0", "1.9", "1.10", "2.0"]
