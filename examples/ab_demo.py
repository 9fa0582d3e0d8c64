"""An A/B split running, in one command: three versions of a classifier behind the router (nginx + HAProxy).

    python -m examples.ab_demo [--routing examples/routing.yaml] [--keys 2000]

Builds versions 1.0, 2.0 and 3.0 of ``classification_onnx`` (same random weights, top-k 5, 3
and 1, so each answer shows which version produced it) into ``build/ab_store``, starts
TorchServe with registration on (the development profile), registers 3.0 and sets the
default explicitly, starts the router from the routing file, sends keyed requests, changes the
weights to an even split live while keep-alive clients send (nothing is reloaded; no request
fails), prints the per-variant report, and stops everything. Needs ``./archive.sh`` first
(``bash run.sh ab`` does both).
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from PIL import Image

from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.routing.proxy import Router
from tsvision.tools.routing.report import format_table, served_by_version, variant_report
from tsvision.tools.routing.routing_file import Routing
from tsvision.tools.serve.manage import Management
from tsvision.tools.serve.server import DEVELOPMENT_PROFILE, TorchServe, free_port

REPO = Path(__file__).resolve().parent.parent
TOP_K = {"1.0": 5, "2.0": 3, "3.0": 1}


def build_versions(store: Path, model: str) -> None:
    export = REPO / "build" / "classification"
    if not (export / "model.onnx").exists():
        raise SystemExit("missing build/classification: run ./archive.sh first")
    for version, top_k in TOP_K.items():
        archive_main(["--model", str(export / "model.onnx"), "--settings", str(export / "settings.json"),
                      "--name", model, "--version", version, "--archive-file", f"{model}-{version}",
                      "--store", str(store), "--set", f"top_k={top_k}",
                      "--set", "top_label_header=true"])  # the router logs X-Top-Label per variant


def send(url: str, server: TorchServe, keys, image: bytes) -> Counter:
    """POST ``image`` once per key (as X-User-Id); count the versions that answered."""
    headers = {"Content-Type": "image/jpeg", **server.headers()}

    def one(key):
        response = requests.post(url, data=image, headers={**headers, "X-User-Id": key}, timeout=60)
        return response.headers.get("X-Model-Version") if response.ok else f"HTTP {response.status_code}"

    with ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(one, keys))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routing", type=Path, default=REPO / "examples" / "routing.yaml")
    parser.add_argument("--keys", type=int, default=2000)
    args = parser.parse_args(argv)
    routing = Routing.load(args.routing)
    store = REPO / "build" / "ab_store"
    print("NOTE: random weights; the versions differ only in top-k, which shows who answered.\n")
    build_versions(store, routing.model)
    server = TorchServe(store, REPO / "build" / "ab_torchserve", models=[f"{routing.model}-1.0.mar",
                                                                         f"{routing.model}-2.0.mar"],
                        overrides=DEVELOPMENT_PROFILE)
    proxy = Router(REPO / "build" / "router", free_port(), "")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 140, 200)).save(buffer, format="JPEG")
    image = buffer.getvalue()
    try:
        server.start()
        proxy.torchserve = server.inference_url
        manage = Management(server.management_url, server.workdir / "key_file.json")
        if routing.shadow:
            manage.register(f"{routing.model}-{routing.shadow}.mar", store=store)  # checks its recorded SHA-256
        default = manage.set_default(routing.model, routing.variants[0].version)
        print(f"default version set explicitly: {default} (verified)")
        for name, versions in manage.summary().items():
            print(f"  {name}: " + ", ".join(f"{v['version']}{' (default)' if v['default'] else ''} {v['ready']} worker"
                                            for v in versions))
        proxy.start(routing)
        url = f"{proxy.url}/predictions/{routing.model}"
        print(f"\nrouter on {proxy.url} (nginx -> HAProxy {proxy.haproxy.url}) -> TorchServe {server.inference_url}; "
              f"routing {args.routing.name}: " + ", ".join(f"{v.version} {v.weight:g}%" for v in routing.variants)
              + (f", shadow {routing.shadow}" if routing.shadow else ""))
        split = send(url, server, [f"user-{i}" for i in range(args.keys)], image)
        print(f"{args.keys} users: " + ", ".join(f"{k} {n / args.keys:.1%}" for k, n in sorted(split.items())))
        again = send(url, server, [f"user-{i}" for i in range(args.keys)], image)
        print(f"same users again: {'same split' if again == split else 'DIFFERENT: ' + str(again)}")

        fifty = Routing(routing.model,
                        [type(routing.variants[0])(v.version, 100 / len(routing.variants)) for v in routing.variants],
                        routing.sticky_header, routing.shadow)
        outcomes, stop, lock = Counter(), threading.Event(), threading.Lock()
        headers = {"Content-Type": "image/jpeg", **server.headers()}

        def load(number):  # a client with its own keep-alive session, sending continuously
            session = requests.Session()
            while not stop.is_set():
                try:
                    user = {"X-User-Id": f"load-{number}-{time.time_ns()}"}
                    response = session.post(url, data=image, headers={**headers, **user}, timeout=60)
                    outcome = "ok" if response.ok else f"HTTP {response.status_code}"
                except requests.RequestException as error:
                    outcome = type(error).__name__
                with lock:
                    outcomes[outcome] += 1

        loaders = [threading.Thread(target=load, args=(n,)) for n in range(4)]
        for loader in loaders:
            loader.start()
        time.sleep(1)
        result = proxy.apply(fifty)  # HAProxy's runtime API: no reload, no connection closed
        time.sleep(2)
        stop.set()
        for loader in loaders:
            loader.join()
        failed = sum(n for k, n in outcomes.items() if k != "ok")
        print(f"weights changed live to an even split ({result['moved']} of 1000 buckets moved, nothing reloaded) "
              "while 4 "
              f"keep-alive clients sent {sum(outcomes.values())} requests: {failed} failed")
        split = send(url, server, [f"new-user-{i}" for i in range(args.keys)], image)
        print("new users: "
              + ", ".join(f"{k} {n / args.keys:.1%}" for k, n in sorted(split.items())))
        time.sleep(1)
        served = served_by_version(requests.get(f"{server.metrics_url}/metrics", timeout=10).text, routing.model)
        print("\n" + format_table(variant_report(proxy.access_log), served))
        print(f"\nlog: {proxy.access_log}   kubernetes: tsvision route kubernetes {args.routing}")
    finally:
        proxy.stop()
        server.stop()
        print("router (nginx, HAProxy) and TorchServe stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
