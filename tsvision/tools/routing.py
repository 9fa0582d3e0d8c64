"""One declarative routing file -> an A/B router (nginx in front, HAProxy splitting), or Kubernetes manifests.

    tsvision route haproxy ROUTING.yaml --listen 127.0.0.1:8091 --torchserve http://127.0.0.1:8080 --prefix DIR
    tsvision route nginx ROUTING.yaml --listen 127.0.0.1:8090 --router 127.0.0.1:8091 --torchserve http://127.0.0.1:8080 --prefix DIR
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

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from tsvision.tools.command import (CommandError, UsageError, describe, entry_point, existing_file, host_port,
                                    parser as command_parser)


@dataclass(frozen=True)
class Variant:
    version: str
    weight: float


@dataclass(frozen=True)
class Routing:
    model: str
    variants: List[Variant]
    sticky_header: Optional[str] = None
    shadow: Optional[str] = None

    @classmethod
    def load(cls, path: Path) -> "Routing":
        return cls.from_mapping(yaml.safe_load(Path(path).read_text()))

    @classmethod
    def from_mapping(cls, data: dict) -> "Routing":
        if not isinstance(data, dict):
            raise ValueError("the routing file must be a mapping with model, variants, and optionally sticky_header, shadow")
        unknown = set(data) - {"model", "variants", "sticky_header", "shadow"}
        if unknown:
            raise ValueError(f"unknown routing keys {sorted(unknown)}")
        model = str(data.get("model") or "")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-.]*", model):
            raise ValueError(f"model must be a TorchServe model name, got {model!r}")
        variants = [Variant(str(v["version"]), float(v["weight"])) for v in data.get("variants") or []]
        if not variants:
            raise ValueError("at least one variant is needed")
        versions = [v.version for v in variants]
        if len(set(versions)) != len(versions):
            raise ValueError(f"a version appears twice among the variants: {versions}")
        if any(v.weight < 0 for v in variants) or abs(sum(v.weight for v in variants) - 100) > 1e-6:
            raise ValueError(f"variant weights must not be negative and must sum to 100, got {[v.weight for v in variants]}")
        shadow = str(data["shadow"]) if data.get("shadow") is not None else None
        if shadow in versions:
            raise ValueError(f"the shadow version {shadow} is also a variant; a shadow only receives copies")
        header = data.get("sticky_header")
        if header is not None and not re.fullmatch(r"[A-Za-z0-9-]+", str(header)):
            raise ValueError(f"sticky_header must be an HTTP header name, got {header!r}")
        for version in versions + ([shadow] if shadow else []):
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", version):
                raise ValueError(f"bad version {version!r}")
        return cls(model, variants, header, shadow)

    def weights(self) -> Dict[str, float]:
        return {v.version: v.weight for v in self.variants}

    def with_weights(self, weights: Dict[str, float]) -> "Routing":
        """The same routing with new weights (versions not named keep weight 0; new ones are added)."""
        versions = [v.version for v in self.variants] + [v for v in weights if v not in self.weights()]
        return Routing.from_mapping({"model": self.model, "sticky_header": self.sticky_header, "shadow": self.shadow,
                                     "variants": [{"version": v, "weight": weights.get(v, 0)} for v in versions]})

    def to_mapping(self) -> dict:
        data = {"model": self.model}
        if self.sticky_header:
            data["sticky_header"] = self.sticky_header
        data["variants"] = [{"version": v.version, "weight": v.weight} for v in self.variants]
        if self.shadow:
            data["shadow"] = self.shadow
        return data


# -- the split: 1000 buckets, each naming one version ----------------------------------------

BUCKETS = 1000


def bucket_counts(routing: Routing, buckets: int = BUCKETS) -> Dict[str, int]:
    """Buckets per version: the weights scaled to ``buckets`` (largest remainders, ties to the first)."""
    exact = [(v.version, v.weight * buckets / 100) for v in routing.variants]
    counts = {version: int(share) for version, share in exact}
    left = buckets - sum(counts.values())
    for version, share in sorted(exact, key=lambda item: -(item[1] - int(item[1])))[:left]:
        counts[version] += 1
    return counts


def _rebalance(current: Sequence[str], counts: Dict[str, int]) -> List[str]:
    """Each version keeps as many of its buckets as its new count allows (the lowest-numbered);
    only the buckets it gives up, and those of versions that left, go to versions that grow."""
    table: List[Optional[str]] = [None] * len(current)
    kept = {version: 0 for version in counts}
    for bucket, version in enumerate(current):
        if version in counts and kept[version] < counts[version]:
            table[bucket] = version
            kept[version] += 1
    free = iter(b for b, version in enumerate(table) if version is None)
    for version, count in counts.items():
        for _ in range(count - kept[version]):
            table[next(free)] = version
    return table  # type: ignore[return-value]


def keeps_growing_variants(before: Sequence[str], after: Sequence[str]) -> bool:
    """True if every version whose bucket count did not shrink still has all of its buckets."""
    for version in set(before):
        if after.count(version) >= before.count(version) and any(
                b == version and a != version for b, a in zip(before, after)):
            return False
    return True


def bucket_table(routing: Routing, current: Optional[Sequence[str]] = None,
                 previous: Optional[Sequence[str]] = None) -> List[str]:
    """The bucket -> version table for ``routing``.

    Without ``current`` the versions take consecutive buckets in the routing file's order. With
    it, only the buckets of shrinking (or removed) versions move, so a key whose version did not
    lose share keeps it. If ``previous`` (the table before ``current``) has exactly the new
    counts, it comes back unchanged: a rollback returns every key to the version it had."""
    counts = bucket_counts(routing, len(current) if current else BUCKETS)
    if current is None:
        return [version for version, count in counts.items() for _ in range(count)]
    if previous is not None and len(previous) == len(current) and all(
            previous.count(v) == n for v, n in counts.items()) and keeps_growing_variants(current, previous):
        return list(previous)
    return _rebalance(current, counts)


def format_bucket_map(table: Sequence[str], routing: Routing) -> str:
    """HAProxy map file (``bucket version`` lines); the comment records the weights it holds."""
    weights = " ".join(f"{v.version}={v.weight:g}" for v in routing.variants)
    return (f"# Generated by tsvision.tools.routing: bucket -> version for {routing.model}; weights {weights}\n"
            "# Changed live through HAProxy's runtime API (tsvision.tools.routing apply); kept across restarts.\n"
            + "".join(f"{bucket} {version}\n" for bucket, version in enumerate(table)))


def parse_bucket_map(text: str) -> Optional[List[str]]:
    """The table from a map file's text (or from ``show map`` output: ``0xADDR bucket version``)."""
    entries = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0].startswith("0x") and len(fields) == 3:
            fields = fields[1:]
        entries[int(fields[0])] = fields[1]
    if not entries or sorted(entries) != list(range(len(entries))):
        return None
    return [entries[b] for b in range(len(entries))]


def _host_port(address: str) -> str:
    return re.sub(r"^https?://", "", address.rstrip("/"))


def render_haproxy(routing: Routing, listen: str, torchserve: str, map_file: Path, socket: Path) -> str:
    """An HAProxy configuration that sends ``/predictions/<model>`` to the version its bucket names.

    The bucket is ``xxh32(sticky header) mod 1000`` (a random bucket without the header); the
    bucket map (``map_file``) is changed at run time through the admin ``socket``, so new weights
    never reload anything. The chosen version goes into the path (``/predictions/<model>/<version>``)
    and into the response's ``X-Model-Version``. ``GET /_ab/route`` answers the version and bucket
    of the request's key without any inference (for checks); nothing else is routed.
    """
    model = routing.model
    if routing.sticky_header:
        header = routing.sticky_header
        bucket = (f"    acl keyed req.fhdr({header}) -m len gt 0\n"
                  f"    http-request set-var(txn.bucket) req.fhdr({header}),xxh32,mod({BUCKETS}) if keyed\n"
                  f"    http-request set-var(txn.bucket) rand({BUCKETS}) unless keyed\n")
    else:
        bucket = f"    http-request set-var(txn.bucket) rand({BUCKETS})\n"
    return f"""# Generated by tsvision route from the routing file; do not edit by hand.
# The weights are not here: they are the bucket map {map_file}, changed live (tsvision.tools.routing apply).
global
    stats socket {socket} mode 600 level admin
    stats timeout 30s
    nbthread 1
    maxconn 4096

defaults
    mode http
    option dontlognull
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    # Longer than nginx's upstream keepalive_timeout (60s): the front always closes an idle
    # connection first, so it never writes a request on a connection being closed here.
    timeout http-keep-alive 300s
    timeout http-request 60s

frontend ab_router
    bind {listen}
    http-request return status 404 content-type application/json string '{{"code": 404, "type": "NotFound", "message": "only /predictions/{model} is routed here"}}' unless {{ path /predictions/{model} }} || {{ path /_ab/route }}
    http-request return status 401 content-type application/json string '{{"code": 401, "type": "Unauthorized", "message": "send the inference token: Authorization: Bearer KEY (key_file.json)"}}' hdr WWW-Authenticate 'Bearer realm="tsvision"' if {{ path /predictions/{model} }} !{{ req.hdr(Authorization) -m reg '^Bearer [^ ]+$' }}
{bucket}    http-request set-var(txn.version) var(txn.bucket),map_int({map_file})
    http-request return status 200 content-type text/plain lf-string "%[var(txn.version)]" hdr X-Model-Version "%[var(txn.version)]" hdr X-AB-Bucket "%[var(txn.bucket)]" if {{ path /_ab/route }}
    http-request set-path /predictions/{model}/%[var(txn.version)]
    http-after-response set-header X-Model-Version %[var(txn.version)] if {{ var(txn.version) -m found }}
    default_backend torchserve

backend torchserve
    http-reuse safe
    server torchserve {_host_port(torchserve)}
"""


def render_nginx(routing: Routing, listen: str, torchserve: str, prefix: Path, user: Optional[str] = None,
                 router: str = "127.0.0.1:8091") -> str:
    """An nginx.conf in front of the HAProxy ``router``: 401 without a bearer token, the JSON access
    log, the shadow copy. It holds no weights, so a weight change never reloads it.

    ``/predictions/<model>`` goes to the router over keep-alive connections; the router picks the
    version and answers with ``X-Model-Version``, which the access log records as the variant
    (with status, latency, the key and the handler's ``X-Top-Label``). Only the model's prediction
    path is exposed. The shadow gets a copy of every request straight from nginx (``mirror``).
    """
    upstream = _host_port(torchserve)
    header_variable = "$http_" + routing.sticky_header.lower().replace("-", "_") if routing.sticky_header else '""'
    mirror = ""
    shadow_location = ""
    if routing.shadow:
        mirror = "            mirror /_shadow;\n            mirror_request_body on;\n"
        shadow_location = f"""
        location = /_shadow {{
            internal;
            proxy_pass http://torchserve/predictions/{routing.model}/{routing.shadow};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Shadow-Copy "1";
        }}
"""
    temp = "\n".join(f"    {kind}_temp_path {prefix}/tmp/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# Generated by tsvision route from the routing file; do not edit by hand.
# No weights here: the router ({router}, HAProxy) holds them and changes them without a reload.
{f'user {user};' if user else ''}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}

http {{
{temp}
    client_max_body_size 25m;
    log_format ab escape=json '{{"time":"$time_iso8601","variant":"$upstream_http_x_model_version","status":$status,'
                              '"request_time":$request_time,"upstream_time":"$upstream_response_time",'
                              '"top_label":"$upstream_http_x_top_label","key":"$ab_key","uri":"$request_uri"}}';
    access_log {prefix}/access.log ab;

    map {header_variable} $ab_key {{
        "" $request_id;
        default {header_variable};
    }}

    upstream ab_router {{
        server {router};
        keepalive 32;
        keepalive_timeout 60s;  # shorter than the router's (300s): nginx closes idle connections first
    }}

    upstream torchserve {{
        server {upstream};
        keepalive 32;
    }}

    server {{
        listen {listen};
        default_type application/json;

        location = /predictions/{routing.model} {{
            # No token, no entry: 401 here. (TorchServe 0.12 answers a missing or wrong token with
            # 400 InvalidKeyException; a wrong token still reaches it and gets that 400.)
            if ($http_authorization !~ "^Bearer [^ ]+$") {{
                add_header WWW-Authenticate 'Bearer realm="tsvision"' always;
                return 401 '{{"code": 401, "type": "Unauthorized", "message": "send the inference token: Authorization: Bearer KEY (key_file.json)"}}';
            }}
{mirror}            proxy_pass http://ab_router;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 300s;
        }}
{shadow_location}
        location / {{
            return 404 '{{"code": 404, "type": "NotFound", "message": "only /predictions/{routing.model} is routed here"}}';
        }}
    }}
}}
"""


def _slug(version: str) -> str:
    return "v" + re.sub(r"[^a-z0-9]+", "-", version.lower()).strip("-")


def render_kubernetes(routing: Routing, image: str, namespace: str = "default", archive_pattern: str = "{model}-{version}.mar") -> str:
    """Multi-document YAML: one TorchServe Deployment per version, a Service, an Istio
    DestinationRule (a subset per version) and VirtualService (the weights, the shadow as a
    mirror); with exactly two variants also a KServe InferenceService canary."""
    model = routing.model
    name = re.sub(r"[^a-z0-9-]+", "-", model.lower())
    versions = [v.version for v in routing.variants] + ([routing.shadow] if routing.shadow else [])
    documents = []
    for version in versions:
        archive = archive_pattern.format(model=model, version=version)
        documents.append({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{name}-{_slug(version)}", "namespace": namespace, "labels": {"app": name, "version": _slug(version)}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name, "version": _slug(version)}},
                "template": {
                    "metadata": {"labels": {"app": name, "version": _slug(version)}, "annotations": {"tsvision/model-version": version}},
                    "spec": {"containers": [{
                        "name": "torchserve", "image": image,
                        "args": ["torchserve", "--start", "--foreground", "--ncs", "--ts-config", "config.properties",
                                 "--model-store", "model_store", "--models", f"{model}={archive}"],
                        "ports": [{"containerPort": 8080, "name": "http-inference"}],
                        "readinessProbe": {"httpGet": {"path": "/ping", "port": 8080}},
                    }]},
                },
            },
        })
    documents.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                      "spec": {"selector": {"app": name}, "ports": [{"name": "http-inference", "port": 8080, "targetPort": 8080}]}})
    documents.append({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                      "metadata": {"name": name, "namespace": namespace},
                      "spec": {"host": name, "subsets": [{"name": _slug(v), "labels": {"version": _slug(v)}} for v in versions]}})
    route = {
        "route": [{"destination": {"host": name, "subset": _slug(v.version)}, "weight": v.weight,
                   "headers": {"response": {"set": {"X-Model-Version": v.version}}}} for v in routing.variants],
        # TorchServe serves the version by its own name; each pod loads one version as the default.
    }
    if routing.shadow:
        route["mirror"] = {"host": name, "subset": _slug(routing.shadow)}
        route["mirrorPercentage"] = {"value": 100.0}
    documents.append({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                      "metadata": {"name": name, "namespace": namespace},
                      "spec": {"hosts": [name], "http": [route]}})
    if len(routing.variants) == 2:
        stable, canary = routing.variants
        documents.append({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"tsvision/stable-version": stable.version, "tsvision/canary-version": canary.version}},
            "spec": {"predictor": {
                "canaryTrafficPercent": int(round(canary.weight)),
                "model": {"modelFormat": {"name": "pytorch"}, "protocolVersion": "v1",
                          "storageUri": f"pvc://model-store/{name}/{canary.version}"},
            }},
        })
    return yaml.safe_dump_all(documents, sort_keys=False)


@entry_point("tsvision route")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision route", __doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    haproxy = commands.add_parser("haproxy", help="write buckets.map into --prefix and print the HAProxy configuration (the split)")
    haproxy.add_argument("routing", type=existing_file, help="the routing file (YAML)")
    haproxy.add_argument("--listen", type=host_port, default="127.0.0.1:8091", help="address HAProxy listens on")
    haproxy.add_argument("--torchserve", default="http://127.0.0.1:8080", help="TorchServe inference address")
    haproxy.add_argument("--prefix", type=Path, default=Path("build/router/haproxy"), help="folder for the map and the admin socket")
    nginx = commands.add_parser("nginx", help="print the nginx configuration (the front: 401, log, shadow)")
    nginx.add_argument("routing", type=existing_file, help="the routing file (YAML)")
    nginx.add_argument("--listen", type=host_port, default="127.0.0.1:8090", help="address nginx listens on (the clients' address)")
    nginx.add_argument("--router", type=host_port, default="127.0.0.1:8091", help="the HAProxy address (haproxy --listen)")
    nginx.add_argument("--torchserve", default="http://127.0.0.1:8080", help="TorchServe inference address (for the shadow)")
    nginx.add_argument("--prefix", type=Path, default=Path("build/router/nginx"), help="folder for logs, pid and temp files")
    apply = commands.add_parser("apply", help="change a running router's weights live from the routing file (no reload)")
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
        from tsvision.tools.proxy import HAProxy

        prefix = args.prefix.resolve()
        proxy = HAProxy(prefix, int(args.listen.rsplit(":", 1)[1]), args.torchserve)
        prefix.mkdir(parents=True, exist_ok=True)
        table = bucket_table(routing, parse_bucket_map(proxy.map_file.read_text()) if proxy.map_file.exists() else None)
        proxy.map_file.write_text(format_bucket_map(table, routing))
        print(render_haproxy(routing, args.listen, args.torchserve, proxy.map_file, proxy.socket))
    elif args.command == "nginx":
        print(render_nginx(routing, args.listen, args.torchserve, args.prefix.resolve(), router=args.router))
    elif args.command == "apply":
        from tsvision.tools.proxy import HAProxy

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


if __name__ == "__main__":
    sys.exit(main())
