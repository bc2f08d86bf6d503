"""The command line: `lbcdn serve | check-config | healthcheck | dns ds | demo-backend`,
`--version`, `--log-level`.

Rules: this module only parses arguments, loads configuration and hands over; the daemon and
the demo backend live elsewhere and are imported only by the command that needs them, so
`--version` and `check-config` start fast and do not depend on the data plane. Exit codes:
0 success, 1 invalid configuration or failure, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING

from lbcdn import __version__, cpus, native, ratelimit

if TYPE_CHECKING:
    from lbcdn.configkit.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_log_level(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The sub-command copy uses SUPPRESS so that leaving it out keeps a value given before
    # the sub-command instead of overwriting it with None.
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        default=None if top else argparse.SUPPRESS,
                        help="daemon log level (overrides logging.level in the config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbcdn",
        description="Load balancer, CDN edge cache, bucket origin and authoritative DNS.")
    parser.add_argument("--version", action="version",
                        version=f"lbcdn {__version__} (hot path {native.describe()})")
    _add_log_level(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", "-c", required=True, metavar="FILE",
                       help="YAML configuration file")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="data-plane worker processes sharing the listeners (default: "
                            "$LBCDN_WORKERS, else the CPUs this process may use: its CPU "
                            "affinity, capped by the cgroup CPU quota); 1 runs everything in "
                            "one process")
    _add_log_level(serve, top=False)
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate configuration files and exit")
    check.add_argument("files", nargs="+", metavar="FILE", help="YAML configuration file")
    _add_log_level(check, top=False)
    check.set_defaults(func=_check_config)

    health = sub.add_parser(
        "healthcheck", help="ask /healthz of the admin API that FILE configures; exit 0 on "
                            "200 (a container HEALTHCHECK that follows the config's port)")
    health.add_argument("--config", "-c", required=True, metavar="FILE",
                        help="YAML configuration file of the running daemon")
    health.add_argument("--timeout-s", type=float, default=2.0, metavar="SECONDS",
                        help="give up after this long (default: 2)")
    health.set_defaults(func=_healthcheck)

    dns = sub.add_parser("dns", help="DNS tools")
    dns_sub = dns.add_subparsers(dest="dns_command", metavar="DNS_COMMAND", required=True)
    ds = dns_sub.add_parser("ds", help="print the DS and DNSKEY records of a signed zone, "
                                       "for its registrar (read from admin.state_dir)")
    ds.add_argument("zone", help="zone name, e.g. example.com")
    ds.add_argument("--config", "-c", required=True, metavar="FILE",
                    help="YAML configuration file")
    ds.set_defaults(func=_dns_ds)

    worker = sub.add_parser("worker", help="(internal) a data-plane worker of `serve`")
    worker.add_argument("--control-fd", type=int, required=True)
    worker.add_argument("--index", type=int, required=True)
    _add_log_level(worker, top=False)
    worker.set_defaults(func=_worker)

    demo = sub.add_parser("demo-backend",
                          help="run the built-in demo HTTP backend (a load-test target)")
    demo.add_argument("--address", default="127.0.0.1", help="address to bind (default: "
                      "127.0.0.1)")
    demo.add_argument("--port", type=int, required=True, help="port to listen on")
    demo.add_argument("--name", default="demo", help="name shown in responses (default: demo)")
    _add_log_level(demo, top=False)
    demo.set_defaults(func=_demo_backend)
    return parser


def _report(error: ConfigError, file: str) -> None:
    for line in error.lines():
        print(line, file=sys.stderr)
    n = len(error.problems)
    print(f"{file}: invalid ({n} error{'s' if n != 1 else ''})", file=sys.stderr)


def _check_config(args: argparse.Namespace) -> int:
    from lbcdn.config.load import load_config
    from lbcdn.configkit.errors import ConfigError
    status = 0
    for file in args.files:
        try:
            load_config(file)
        except ConfigError as e:
            _report(e, file)
            status = 1
        else:
            print(f"{file}: ok")
    return status


def _dns_ds(args: argparse.Namespace) -> int:
    from lbcdn.config.load import load_config
    from lbcdn.configkit.errors import ConfigError
    from lbcdn.dns.keys import DnssecKeyError, key_rows, load
    from lbcdn.dns.zone import zone_origin
    try:
        config = load_config(args.config)
    except ConfigError as e:
        _report(e, args.config)
        return 1
    try:
        origin = zone_origin(args.zone)
    except ValueError as e:
        print(f"lbcdn dns ds: {e}", file=sys.stderr)
        return 2
    zones = config.dns.zones if config.dns is not None else ()
    if not any(zone_origin(z.name) == origin and z.dnssec.enabled for z in zones):
        print(f"lbcdn dns ds: {args.zone} is not a signed zone of {args.config}",
              file=sys.stderr)
        return 1
    assert config.admin.state_dir is not None  # the config check requires it when signed
    try:
        keys = load(config.admin.state_dir, origin)
    except DnssecKeyError as e:
        print(f"lbcdn dns ds: {e}", file=sys.stderr)
        return 1
    if not keys:
        print(f"lbcdn dns ds: no keys for {args.zone} yet: the daemon makes them when it "
              "starts", file=sys.stderr)
        return 1
    for key in key_rows(origin, keys):
        print(key["ds"])
        print(key["dnskey"])
    return 0


def healthz_address(address: str, port: int) -> tuple[str, int] | None:
    """Where the admin listener bound to (address, port) is reached from its own host: a
    wildcard address through loopback. None when the admin API is off (port 0)."""
    if port == 0:
        return None
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(address, address)
    return host, port


def _healthcheck(args: argparse.Namespace) -> int:
    import http.client
    from lbcdn.config.load import load_config
    from lbcdn.configkit.errors import ConfigError
    try:
        config = load_config(args.config)
    except ConfigError as e:
        _report(e, args.config)
        return 1
    where = healthz_address(config.admin.address, config.admin.port)
    if where is None:
        # Nothing to ask; the daemon is PID 1's only child, so the container ends with it.
        print("lbcdn healthcheck: the admin API is off (admin.port: 0): nothing to ask")
        return 0
    host, port = where
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    # http.client rather than urllib: no proxy from the environment may answer for us.
    conn = http.client.HTTPConnection(host, port, timeout=args.timeout_s)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read(200).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as e:
        print(f"lbcdn healthcheck: {url}: {e or type(e).__name__}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"{url}: {response.status} {body}")
    return 0 if response.status == 200 else 1


def _serve(args: argparse.Namespace) -> int:
    from lbcdn.config.load import load_config
    from lbcdn.configkit.errors import ConfigError
    refusal = native.refusal()
    if refusal is not None:
        print(f"lbcdn serve: {refusal}", file=sys.stderr)
        return 1
    try:
        config = load_config(args.config)
    except ConfigError as e:
        _report(e, args.config)
        return 1
    try:
        workers, why = cpus.workers(args.workers, os.environ.get(cpus.ENV))
    except ValueError as e:
        print(f"lbcdn serve: {e}", file=sys.stderr)
        return 2
    if workers > 1:
        # before prometheus-client is imported: it picks its storage at import time
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lbcdn-metrics-")
        # what the workers share besides metrics: the rate limits' buckets (lbcdn.ratelimit)
        os.environ[ratelimit.ENV] = tempfile.mkdtemp(prefix="lbcdn-shared-")
    from lbcdn.logs import setup_logging
    setup_logging(args.log_level or config.logging.level)
    logging.getLogger("lbcdn.cli").info(
        "%d worker%s (%s)%s", workers, "s" if workers > 1 else "", why,
        "" if workers > 1 else ": everything in one process")
    if workers > 1:
        from lbcdn.workers import serve_workers
        try:
            return serve_workers(args.config, workers, args.log_level)
        finally:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
            shutil.rmtree(os.environ.pop(ratelimit.ENV), ignore_errors=True)
    from lbcdn.daemon import serve
    return int(serve(config, log_level=args.log_level, config_path=args.config))


def _worker(args: argparse.Namespace) -> int:
    from lbcdn.workers import run_worker
    return run_worker(args.control_fd, args.index, args.log_level)


def _demo_backend(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        print(f"lbcdn demo-backend: --port must be 1-65535, got {args.port}", file=sys.stderr)
        return 2
    logging.basicConfig(level=(args.log_level or "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lbcdn.demo.backend import run_demo_backend
    return int(run_demo_backend(args.address, args.port, args.name))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lbcdn` console script and `python -m lbcdn`; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: argparse exits itself
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code
