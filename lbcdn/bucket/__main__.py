"""Run the bucket origin alone: `python -m lbcdn.bucket CONFIG.yaml`.

The file holds a `buckets:` section (as in the daemon's config). Prints `READY <s3 port>
<website port or ->` on stdout once listening (tests and benchmarks read it), stops on
SIGTERM/SIGINT. Uses uvloop when available, as the daemon does.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import yaml

from lbcdn.bucket.config import load_buckets_config
from lbcdn.bucket.server import BucketServer


async def _main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    config = load_buckets_config(data.get("buckets") if isinstance(data, dict) else data)
    server = BucketServer(config)
    await server.start()
    print(f"READY {server.port} {server.website_port or '-'}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m lbcdn.bucket CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_main(argv[0]))
    else:
        uvloop.run(_main(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
