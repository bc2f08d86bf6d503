"""A standalone lbcdn DNS server for benchmarks: one zone file, one DnsServer, uvloop.

    python benchmarks/dns_runner.py --zone FILE --origin example.com --port N [--address A]
                                    [--dnssec KEYDIR]

--dnssec signs the zone online (ECDSAP256SHA256), its key kept in KEYDIR as admin.state_dir
would keep it.

Runs until SIGTERM/SIGINT. Prints `ready <port>` on stdout once listening. Used by
scenario_dns.py so that the DNS data plane is measured alone, without the HTTP daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lbcdn.dns.config import DnsConfig, DnssecConfig, ZoneConfig  # noqa: E402
from lbcdn.dns.engine import Engine  # noqa: E402
from lbcdn.dns.runtime import signers_from_config  # noqa: E402
from lbcdn.dns.server import DnsServer  # noqa: E402
from lbcdn.dns.zone import build_zones  # noqa: E402


class AllHealthy:
    def is_healthy(self, check_id: str) -> bool:
        return True


def build_engine(zone_file: str, origin: str, key_dir: str | None = None) -> Engine:
    """The real answer engine serving one RFC 1035 master file (signed with a key dir)."""
    cfg = DnsConfig(zones=(ZoneConfig(name=origin, file=zone_file,
                                      dnssec=DnssecConfig(enabled=key_dir is not None)),))
    return Engine(build_zones(cfg, now=time.time()), AllHealthy(),
                  signers=signers_from_config(cfg, key_dir))


async def serve(args: argparse.Namespace) -> None:
    engine = build_engine(args.zone, args.origin, args.dnssec)
    server = DnsServer(engine, address=args.address, port=args.port,
                       allow_transfer=["127.0.0.0/8"])
    await server.start()
    print(f"ready {server.udp_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    fp = server.fastpath
    print(f"lookups {fp.lookups} misses {fp.misses} keyed_hits {fp.keyed_hits} "
          f"uncacheable {fp.uncacheable} udp_errors {server.stats.udp_errors} "
          f"udp_send_failures {server.stats.udp_send_failures}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zone", required=True)
    p.add_argument("--origin", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--dnssec", metavar="KEYDIR", default=None)
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
