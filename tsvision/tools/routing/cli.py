"""One declarative routing file -> an A/B router (nginx in front, HAProxy splitting), or Kubernetes manifests.

    tsvision route haproxy ROUTING.yaml --listen 127.0.0.1:8091 --torchserve http://127.0.0.1:8080 --prefix DIR
    tsvision route nginx ROUTING.yaml --listen 127.0.0.1:8090 --router 127.0.0.1:8091 \\
        --torchserve http://127.0.0.1:8080 --prefix DIR
    tsvision route apply ROUTING.yaml --prefix DIR      # new weights, live, without a reload
    tsvision route kubernetes ROUTING.yaml --image REGISTRY/tsvision-torchserve:TAG

The weights live in HAProxy's bucket map only (``DIR/buckets.map``): the sticky key hashes into
one of 1000 buckets and the map names each bucket's version. ``apply`` changes the map through
HAProxy's runtime API; neither nginx nor HAProxy is reloaded, so no connection is closed.

The routing file::

    model: classification_onnx    # the TorchServe model name
    sticky_header: X-User-Id      # requests with the same value always reach the same variant;
                                  # without the header the split is random per request
    variants:                     # weights in percent, summing to 100 (0: registered in the
                                  # routing, receives nothing, e.g. after a promotion)
      - {version: "1.0", weight: 90}
      - {version: "2.0", weight: 10}
    shadow: "3.0"                 # optional: gets a copy of every request, its answers discarded
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import yaml

from tsvision.tools.command import CommandError, UsageError, describe, entry_point, existing_file, host_port
from tsvision.tools.command import parser as command_parser
from tsvision.tools.routing.buckets import BUCKETS, bucket_table, format_bucket_map, parse_bucket_map
from tsvision.tools.routing.proxy import HAProxy
from tsvision.tools.routing.routing_file import Routing
from tsvision.tools.routing.templates import render_haproxy, render_kubernetes, render_nginx


@entry_point("tsvision route")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision route", __doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    haproxy = commands.add_parser("haproxy", help="write buckets.map into --prefix and print the HAProxy "
                                                  "configuration (the split)")
    haproxy.add_argument("routing", type=existing_file, help="the routing file (YAML)")
    haproxy.add_argument("--listen", type=host_port, default="127.0.0.1:8091", help="address HAProxy listens on")
    haproxy.add_argument("--torchserve", default="http://127.0.0.1:8080", help="TorchServe inference address")
    haproxy.add_argument("--prefix", type=Path, default=Path("build/router/haproxy"),
                         help="folder for the map and the admin socket")
    nginx = commands.add_parser("nginx", help="print the nginx configuration (the front: 401, log, shadow)")
    nginx.add_argument("routing", type=existing_file, help="the routing file (YAML)")
    nginx.add_argument("--listen", type=host_port, default="127.0.0.1:8090",
                       help="address nginx listens on (the clients' address)")
    nginx.add_argument("--router", type=host_port, default="127.0.0.1:8091",
                       help="the HAProxy address (haproxy --listen)")
    nginx.add_argument("--torchserve", default="http://127.0.0.1:8080",
                       help="TorchServe inference address (for the shadow)")
    nginx.add_argument("--prefix", type=Path, default=Path("build/router/nginx"),
                       help="folder for logs, pid and temp files")
    apply = commands.add_parser("apply",
                                help="change a running router's weights live from the routing file (no reload)")
    apply.add_argument("routing", type=existing_file, help="the routing file (YAML)")
    apply.add_argument("--prefix", type=Path, default=Path("build/router/haproxy"), help="the running HAProxy's folder")
    kube = commands.add_parser("kubernetes", help="write Kubernetes manifests (Istio, KServe)")
    kube.add_argument("routing", type=existing_file, help="the routing file (YAML)")
    kube.add_argument("--image", default="registry.example/tsvision-torchserve:latest", help="the TorchServe image")
    kube.add_argument("--namespace", default="default", help="Kubernetes namespace")
    args = parser.parse_args(argv)
    try:
        routing = Routing.load(args.routing)
    except yaml.YAMLError as error:
        raise UsageError(f"{args.routing} is not YAML: {error}") from error
    except KeyError as error:
        raise UsageError(f"{args.routing}: every variant needs a version and a weight (one has no {error})") from error
    except (ValueError, TypeError) as error:
        raise UsageError(f"{args.routing}: {error}") from error
    if args.command == "haproxy":
        prefix = args.prefix.resolve()
        proxy = HAProxy(prefix, int(args.listen.rsplit(":", 1)[1]), args.torchserve)
        prefix.mkdir(parents=True, exist_ok=True)
        table = bucket_table(routing, parse_bucket_map(proxy.map_file.read_text()) if proxy.map_file.exists() else None)
        proxy.map_file.write_text(format_bucket_map(table, routing))
        print(render_haproxy(routing, args.listen, args.torchserve, proxy.map_file, proxy.socket))
    elif args.command == "nginx":
        print(render_nginx(routing, args.listen, args.torchserve, args.prefix.resolve(), router=args.router))
    elif args.command == "apply":
        if not (args.prefix / "haproxy.cfg").is_file():
            raise UsageError(f"--prefix {args.prefix}: no haproxy.cfg there (the --prefix of a running "
                             "router's tsvision route haproxy)")
        try:
            result = HAProxy.running(args.prefix).apply(routing)
        except (OSError, RuntimeError) as error:
            raise CommandError(f"--prefix {args.prefix}: {describe(error)}") from error
        print(f"{routing.model}: live, {result['moved']} of {BUCKETS} buckets moved; buckets "
              + ", ".join(f"{v} {n}" for v, n in result["buckets"].items()) + " (no reload)")
    else:
        print(render_kubernetes(routing, args.image, args.namespace))
    return 0
