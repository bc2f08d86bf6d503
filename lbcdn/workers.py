"""`lbcdn serve --workers N`: one control process and N data-plane worker processes.

The control process owns the configuration, the admin API and the demo backends; it validates
every configuration before any worker sees it, pushes it to the workers over a socket pair (one
JSON message a line), restarts a worker that dies, and forwards SIGTERM/SIGINT so the workers
drain. A worker whose control process dies (kill -9, a crash) exits at once, with status 1,
cutting its connections: the daemon is never left half alive, its supervisor restarts it
whole. Workers run the data plane only (lbcdn.daemon.Daemon in "worker" role): each binds every
listener with SO_REUSEPORT, so the kernel spreads connections across them and a restarting
worker never leaves a port unserved while the others live. SO_REUSEPORT would as readily let a
second lbcdn (or two listeners naming one address two ways) share a port without a word, so the
control process first claims every listener's port itself, without it (`claim_ports`).

Messages, control -> worker: {"op": "config", "yaml": TEXT} (first message: start with it) and
{"op": "reload", "yaml": TEXT, "id": N}, {"op": "targets", "pool": NAME, "targets": [...]}
(the pool's target snapshot: host, port, weight, state, reason; health checks run in the control
process), {"op": "ticket_keys", "keys": [PREVIOUS, CURRENT, NEXT]} (TLS session-ticket keys, hex;
also in the "config" message as "ticket_keys"; lbcdn.tlstickets),
{"op": "weights", "route": NAME, "weights": {POOL: WEIGHT}, "generation": N} (a
weighted forward's weights set through the admin API; the control process checks them against
its own copy of the routes first, and sends them again to a (re)started worker; N is the id of
the reload whose routes they belong to, 0 for the first configuration, and a worker running
another generation ignores them: weights sent to a starting worker must not override the
routes of a reload it applied meanwhile). Worker -> control: {"op": "drained", "pool", "target"} (a draining target has nothing
in flight here), {"op": "stats", "pools": {POOL: {TARGET: {...}}}, "queues": {POOL:
{"failed_open", "queued"}}, "listeners": {LISTENER: OPEN_CONNECTIONS}} (live per-target,
per-pool and per-listener numbers, every second; the admin API adds them up over the
workers), {"op": "ready"} and {"op": "reloaded", "id": N, "error": null | TEXT}.
ACME (lbcdn.acme.manager runs in the control process): control -> worker {"op": "acme", "id": N,
"view": {...}} (challenge answers and certificate files to serve; also in the first "config"
message), worker -> control {"op": "acme-applied", "id": N}; the manager tells the CA to look
once every live worker applied it. On-demand certificates: worker -> control {"op":
"acme-demand", "id": N, "listener", "name"} (a handshake waits for it), control -> worker
{"op": "acme-demanded", "id": N, "error": null | TEXT}, sent after the new certificate was
published to every worker.
Edge-cache invalidations: control -> worker {"op": "invalidate", "id": N, "invalidation": {id,
paths, tags, soft, hosts}}, worker -> control {"op": "invalidated", "id": N, "purged": COUNT};
the admin API answers once every live worker applied it (the control process first applies it
to the shared store's files).
The shared cache (lbcdn.cache.shared): the "config" message names its directory ("cache": {"dir",
"owned"}: owned, a tmpfs directory the control process made and removes at stop); worker ->
control {"op": "cache-lead", "id": N, "key": KEY, "timeout_s": S} (answered {"op": "cache-led",
"id": N, "result": "lead"} at once, or when the leader's lead ends: "stored" | "failed" |
"alone", with "status": the origin's error) and {"op": "cache-done", "key": KEY, "outcome":
..., "name": FILE | null, "status": null | N} (a lead
ended; FILE: an entry stored, which the control process indexes, evicting for it, and the
other workers get {"op": "cache-drop", "key": KEY}: their memory copies are older).

Metrics: the control process sets PROMETHEUS_MULTIPROC_DIR (a fresh directory) before
prometheus-client is imported anywhere; workers write their samples there and flush their
per-request accumulators every second, and /metrics (in the control process) aggregates them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from lbcdn import ratelimit
from lbcdn.acme.manager import AcmeManager
from lbcdn.cache.disk import DiskStore
from lbcdn.cache.invalidation import Invalidation, apply
from lbcdn.cache.shared import ALONE, LEAD, LeadClient, Leads, Shared, SharedStore, limits
from lbcdn.config.load import load_config_text
from lbcdn.config.schema import Config
from lbcdn.edge.config import ListenerConfig
from lbcdn.control import ControlPlane, config_dir
from lbcdn.upstream.targets import TargetsControl
from lbcdn.routing import Router
from lbcdn.routing.weighted import WeightedForward
from lbcdn.dns.engine import Engine
from lbcdn.fdlimit import raise_nofile
from lbcdn.logs import setup_logging
from lbcdn.tasks import spawn
from lbcdn.tlstickets import Rotator, TicketKeys, set_keys

log = logging.getLogger("lbcdn.workers")

RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
SHM = "/dev/shm"
# how long a worker whose control process died may take to exit before it is cut short
ORPHAN_EXIT_S = 3.0


def claim_ports(listeners: Iterable[ListenerConfig]) -> None:
    """Raise OSError if a listener's address and port is taken: by any other socket listening
    there, or by another of `listeners` that names the same address otherwise (`localhost`
    and `127.0.0.1`). Each is bound and listened on without SO_REUSEPORT, all at once, then
    closed before the workers bind them with it."""
    socks: list[socket.socket] = []
    try:
        for listener in listeners:
            for family, kind, proto, _, addr in socket.getaddrinfo(
                    listener.address or None, listener.port, type=socket.SOCK_STREAM,
                    flags=socket.AI_PASSIVE):
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the workers
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(addr)
                    sock.listen(1)
                except OSError as exc:
                    raise OSError(exc.errno, f"listener {listener.name!r} cannot bind "
                                             f"{listener.address}:{listener.port}: "
                                             f"{exc.strerror}") from None
    finally:
        for sock in socks:
            sock.close()


class Worker:
    """The control process's handle on one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready = asyncio.Event()
        self.restarts = 0
        self.started_at = 0.0
        self.acks: dict[int, asyncio.Future[str | None]] = {}
        # the worker's live per-target numbers ({"op": "stats"}, every second)
        self.stats: dict[str, dict[str, dict[str, Any]]] = {}
        # and per pool: {"failed_open": bool, "queued": int}
        self.queues: dict[str, dict[str, Any]] = {}
        # and per listener: its open client connections
        self.connections: dict[str, int] = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def send(self, message: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(message).encode() + b"\n")


class Supervisor:
    """The control process: also the admin API's view of the daemon (AdminState)."""

    def __init__(self, config: Config, config_path: str, config_text: str, workers: int,
                 log_level: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.config_text = config_text
        self.log_level = log_level
        self.workers = [Worker(i) for i in range(workers)]
        # pools' targets and health checks run here; workers get {"op": "targets"} snapshots
        self.targets = TargetsControl(
            self._publish_targets, state_dir=config.admin.state_dir, stats=self._target_stats,
            data_planes=lambda: max(1, sum(w.ready.is_set() for w in self.workers)))
        self.control = ControlPlane(self, config_dir(config_path), self.targets,
                                    publish_acme=self._publish_acme)
        self.acme_view: dict[str, Any] = {"http01": {}, "alpn": {}, "certs": {}}
        # TLS session-ticket keys: made and rotated here, the same in every worker
        self.tickets = Rotator(config.tls_session_tickets, self._publish_ticket_keys)
        # the routes as the workers run them: where the admin API's weights are checked and kept
        self.router = Router(config.routes, config.default_route)
        self.generation = 0   # the id of the reload self.router comes from
        self.reloads = 0
        self._draining = False
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._next_ack = 0
        self._purges: dict[tuple[int, int], asyncio.Future[int]] = {}
        self._monitor: asyncio.Task[None] | None = None
        # the workers' shared cache (lbcdn.cache.shared): its directory, whether we made it
        # (tmpfs, removed at stop), its manager (index, eviction, invalidations) and leads
        self.cache_dir: str | None = None
        self.cache_owned = False
        self.cache_store: DiskStore | None = None
        self.leads = Leads()

    @property
    def draining(self) -> bool:
        return self._draining

    def targets_control(self) -> TargetsControl | None:
        return self.targets

    def acme_manager(self) -> AcmeManager | None:
        return self.control.acme

    async def _publish_acme(self, view: dict[str, Any]) -> None:
        """Every live worker installs `view` (lbcdn.acme.manager) before this returns; a
        worker starting later gets it with its configuration."""
        self.acme_view = view
        loop = asyncio.get_running_loop()
        self._next_ack += 1
        waits = []
        for worker in self.workers:
            if not worker.ready.is_set():
                continue
            future: asyncio.Future[str | None] = loop.create_future()
            worker.acks[self._next_ack] = future
            worker.send({"op": "acme", "id": self._next_ack, "view": view})
            waits.append(future)
        if waits:
            await asyncio.wait(waits, timeout=10)

    async def _demand(self, worker: Worker, message: dict[str, Any]) -> None:
        error = await self.control.acme_demand(message["listener"], message["name"])
        worker.send({"op": "acme-demanded", "id": message["id"], "error": error})

    def weighted_forward(self, route: str) -> WeightedForward | None:
        return self.router.weighted(route)

    def set_weights(self, route: str, weights: dict[str, int]) -> None:
        forward = self.router.weighted(route)
        if forward is None:
            raise LookupError(f"route {route!r} has no weighted forward")
        forward.set_weights(weights)   # checks them (ValueError) before any worker sees them
        for worker in self.workers:
            self._send_weights(worker, forward)

    def _send_weights(self, worker: Worker, forward: WeightedForward) -> None:
        worker.send({"op": "weights", "route": forward.route,
                     "weights": dict(zip(forward.pools, forward.weights)),
                     "generation": self.generation})

    def _publish_targets(self, pool: str, snapshot: list[dict[str, Any]]) -> None:
        for worker in self.workers:
            worker.send({"op": "targets", "pool": pool, "targets": snapshot})

    def _publish_ticket_keys(self, keys: TicketKeys) -> None:
        for worker in self.workers:
            worker.send({"op": "ticket_keys", "keys": keys.to_wire()})

    def _target_stats(self, pool: str) -> dict[str, dict[str, Any]]:
        """Every worker's numbers for `pool`, added up. Counts are summed; latency and error
        rate (each worker's over its last stats window) are averaged weighted by each worker's
        request rate in that window, so a worker that served one request does not count as
        much as one that served thousands. Every target of the pool has a row (zeros until
        the workers report)."""
        control = self.targets.pools.get(pool)
        out: dict[str, dict[str, Any]] = {
            key: _zero_stats() for key in (control.targets if control is not None else ())}
        for worker in self.workers:
            for key, row in worker.stats.get(pool, {}).items():
                acc = out.setdefault(key, _zero_stats())
                for k in _SUMMED:
                    acc[k] += row.get(k) or 0
                acc["ejected"] = acc["ejected"] or bool(row.get("ejected"))
                rate = row.get("requests_per_s") or 0.0
                if row.get("latency_s") is not None:
                    acc["_lat"].append((row["latency_s"], rate))
                acc["_err"].append((row.get("error_rate") or 0.0, rate))
        for acc in out.values():
            acc["latency_s"] = _weighted_mean(acc.pop("_lat"))
            acc["error_rate"] = _weighted_mean(acc.pop("_err")) or 0.0
        return out

    def _runtime_pools(self) -> list[dict[str, Any]]:
        """/api/runtime's pools, as a single process shows them (Pool.details()): the control
        plane's target states joined with the workers' numbers added up."""
        out = []
        for pool in self.targets.describe():
            name = pool["name"]
            queues = [w.queues[name] for w in self.workers if name in w.queues]
            out.append({
                "name": name, "algorithm": pool["algorithm"],
                "failed_open": any(q.get("failed_open") for q in queues),
                "queued": sum(int(q.get("queued") or 0) for q in queues),
                "targets": [{k: row.get(k) for k in _RUNTIME_TARGET_KEYS}
                            for row in pool["targets"]]})
        return out

    def dns_engine(self) -> Engine | None:
        return self.control.dns.engine if self.control.dns is not None else None

    def describe(self) -> dict[str, object]:
        return {
            "workers": [{"index": w.index, "pid": w.pid, "ready": w.ready.is_set(),
                         "restarts": w.restarts} for w in self.workers],
            "listeners": [{"name": l.name, "address": l.address, "port": l.port,
                           "open_connections": sum(w.connections.get(l.name, 0)
                                                   for w in self.workers),
                           "protocol": "https" if l.tls else "http"}
                          for l in self.config.listeners],
            "routes": [r.name for r in self.config.routes] + [self.config.default_route.name],
            "pools": self._runtime_pools(),
            "reloads": self.reloads,
            "cache": self._describe_cache(),
            **self.control.describe(),
        }

    # -- start / stop ---------------------------------------------------------------------
    async def start(self) -> None:
        claim_ports(self.config.listeners)
        await self._open_cache()
        await self.control.start(self.config)
        # before the workers: each one gets every pool's snapshot when it is ready
        await self.targets.start(self.config.pools)
        self.tickets.start()
        for worker in self.workers:
            await self._spawn(worker)
        deadline = time.monotonic() + 30
        while not all(w.ready.is_set() for w in self.workers):
            for worker in self.workers:
                assert worker.proc is not None
                if worker.proc.poll() is not None:  # it logged why (a port in use, say)
                    raise OSError(f"worker {worker.index} exited while starting")
            if time.monotonic() > deadline:
                raise OSError("workers did not start within 30 s")
            await asyncio.sleep(0.02)
        self._monitor = spawn(self._watch(), "workers-monitor")
        self.control.run_acme()
        log.info("%d workers serving", len(self.workers))

    async def _open_cache(self) -> None:
        storage = self.config.cache.storage
        self.cache_owned = storage.disk_path is None
        self.cache_dir = storage.disk_path or tempfile.mkdtemp(
            prefix="lbcdn-cache-", dir=SHM if os.path.isdir(SHM) else None)
        max_bytes, max_object = limits(storage)
        # indexes what a disk_path holds already (as the disk tier does at start)
        self.cache_store = await asyncio.to_thread(DiskStore, self.cache_dir, max_bytes,
                                                   max_object, not self.cache_owned)

    def _cache_done(self, worker: Worker, message: dict[str, Any]) -> None:
        key, name = message["key"], message["name"]
        if name is not None:
            # before the waiters hear of it: a copy they take from the new file must stay
            for other in self.workers:
                if other is not worker:
                    other.send({"op": "cache-drop", "key": key})
            spawn(self._adopt(name), "cache-adopt")
        for index, ident in self.leads.done(key, worker.index):
            self.workers[index].send({"op": "cache-led", "id": ident,
                                      "result": message["outcome"],
                                      "status": message.get("status")})

    def _describe_cache(self) -> dict[str, object]:
        """The workers' shared store as its manager sees it, and the keys being fetched."""
        store = self.cache_store
        if store is None:
            return {}
        return {"shared": {"path": self.cache_dir, "objects": len(store), "bytes": store.bytes,
                           "max_bytes": store.max_bytes, "evictions": store.evictions,
                           "leads": len(self.leads)}}

    def _go_alone(self, waiting: list[tuple[int, int]]) -> None:
        for index, ident in waiting:
            self.workers[index].send({"op": "cache-led", "id": ident, "result": ALONE})

    async def _adopt(self, name: str) -> None:
        store = self.cache_store
        if store is not None:
            await asyncio.to_thread(store.adopt, name)

    async def _spawn(self, worker: Worker) -> None:
        ours, theirs = socket.socketpair()
        args = [sys.executable, "-m", "lbcdn", "worker", "--control-fd", str(theirs.fileno()),
                "--index", str(worker.index)]
        if self.log_level:
            args += ["--log-level", self.log_level]
        try:
            worker.proc = subprocess.Popen(args, pass_fds=[theirs.fileno()])
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.started_at = time.monotonic()
        worker.ready.clear()
        try:
            worker.reader, worker.writer = await asyncio.open_connection(sock=ours)
        except OSError:  # the worker would wait for a channel that never comes
            ours.close()
            worker.proc.kill()
            worker.proc.wait()
            raise
        worker.send({"op": "config", "yaml": self.config_text, "source": self.config_path,
                     "acme": self.acme_view,
                     "ticket_keys": self.tickets.keys.to_wire(),
                     "cache": {"dir": self.cache_dir, "owned": self.cache_owned}})
        spawn(self._listen(worker, worker.reader), f"worker-{worker.index}-channel")

    async def _listen(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        async for message in messages(reader):  # ends when the worker is gone (_watch restarts)
            if message["op"] == "ready":
                worker.ready.set()
                # the view may have changed since its "config" message
                worker.send({"op": "acme", "id": 0, "view": self.acme_view})
                for name, pool in self.targets.pools.items():  # a (re)started worker
                    worker.send({"op": "targets", "pool": name, "targets": pool.snapshot()})
                for actions in self.router.actions.values():
                    if actions.weighted is not None:
                        self._send_weights(worker, actions.weighted)
            elif message["op"] == "drained":
                self.targets.drained(message["pool"], message["target"], worker.index)
            elif message["op"] == "stats":
                worker.stats = message["pools"]
                worker.queues = message.get("queues", {})
                worker.connections = message.get("listeners", {})
            elif message["op"] in ("reloaded", "acme-applied"):
                future = worker.acks.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message.get("error"))
            elif message["op"] == "acme-demand":
                spawn(self._demand(worker, message), "acme-demand")
            elif message["op"] == "cache-lead":
                if self.leads.lead(message["key"], worker.index, message["id"],
                                   time.monotonic(), float(message["timeout_s"])):
                    worker.send({"op": "cache-led", "id": message["id"], "result": LEAD})
            elif message["op"] == "cache-done":
                self._cache_done(worker, message)
            elif message["op"] == "invalidated":
                purge = self._purges.pop((worker.index, message["id"]), None)
                if purge is not None and not purge.done():
                    purge.set_result(int(message["purged"]))

    async def _watch(self) -> None:
        """Restart workers that die, with a growing pause when they keep dying."""
        while not self._draining:
            await asyncio.sleep(0.2)
            self._go_alone(self.leads.expire(time.monotonic()))
            for worker in self.workers:
                proc = worker.proc
                if proc is None or proc.poll() is None or self._draining:
                    continue
                log.error("worker %d (pid %d) exited with %s; restarting", worker.index,
                          proc.pid, proc.returncode)
                worker.ready.clear()
                # nothing in flight there any more
                worker.stats, worker.queues, worker.connections = {}, {}, {}
                _mark_dead(proc.pid)
                for future in worker.acks.values():
                    if not future.done():
                        future.set_result("worker died")
                worker.acks.clear()
                self._go_alone(self.leads.gone(worker.index))  # they fetch themselves
                recent = time.monotonic() - worker.started_at < 10
                delay = RESTART_BACKOFF_S[min(worker.restarts, len(RESTART_BACKOFF_S) - 1)]
                worker.restarts += 1
                if recent:
                    await asyncio.sleep(delay)
                await self._respawn(worker)

    async def _respawn(self, worker: Worker) -> None:
        """Start `worker` again; a start that fails (descriptors or memory short, EMFILE,
        EAGAIN) is tried again with the growing pause until it works or the daemon drains,
        rather than ending the monitor and with it every later restart."""
        while not self._draining:
            try:
                await self._spawn(worker)
                return
            except OSError as exc:
                delay = RESTART_BACKOFF_S[min(worker.restarts, len(RESTART_BACKOFF_S) - 1)]
                worker.restarts += 1
                log.error("could not restart worker %d: %s; trying again in %.1f s",
                          worker.index, exc, delay)
                await asyncio.sleep(delay)

    def request_stop(self) -> None:
        if self._stop.is_set():
            for worker in self.workers:  # second signal: workers cut their drain short
                _signal(worker, signal.SIGTERM)
        self._stop.set()

    async def run_until_stopped(self) -> None:
        await self._stop.wait()
        await self.stop()

    async def stop(self) -> None:
        self._draining = True
        for worker in self.workers:
            _signal(worker, signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown.drain_timeout_s + 5
        for worker in self.workers:
            proc = worker.proc
            while proc is not None and proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if self._monitor is not None:
            self._monitor.cancel()
        self.tickets.stop()
        await self.targets.stop()
        await self.control.stop()
        if self.cache_owned and self.cache_dir is not None:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        log.info("stopped")

    # -- reload ---------------------------------------------------------------------------
    async def reload(self) -> None:
        """Validate the file, then have every worker apply it. Raises ConfigError when the
        file is invalid (nothing changes) or RuntimeError naming workers that refused."""
        async with self._reload_lock:
            with open(self.config_path, encoding="utf-8") as f:
                text = f.read()
            config = load_config_text(text, self.config_path)
            # new ports only: our workers hold the others (and may move one to a new address)
            ours = {l.port for l in self.config.listeners}
            claim_ports(l for l in config.listeners if l.port not in ours)
            loop = asyncio.get_running_loop()
            self._next_ack += 1
            reload_id = self._next_ack   # an invalidation may take the next id meanwhile
            waits = []
            for worker in self.workers:
                future: asyncio.Future[str | None] = loop.create_future()
                worker.acks[reload_id] = future
                worker.send({"op": "reload", "yaml": text, "id": reload_id,
                             "source": self.config_path})
                waits.append(future)
            async with asyncio.timeout(30):
                errors = [e for e in await asyncio.gather(*waits) if e]
            if errors:
                raise RuntimeError("; ".join(sorted(set(errors))))
            await self.control.apply(config)
            await self.targets.apply(config.pools)
            self.tickets.apply(config.tls_session_tickets)
            # later restarts start from the new configuration (and its weights)
            self.config, self.config_text = config, text
            self.router = Router(config.routes, config.default_route)
            self.generation = reload_id
            self.reloads += 1
            if self.log_level is None:
                setup_logging(config.logging.level)
            log.info("configuration reloaded from %s", self.config_path)

    def request_reload(self) -> None:
        spawn(self._reload_logged(), "reload")

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception as exc:
            log.error("reload failed: %s", exc)

    async def invalidate_cache(self, inv: Invalidation) -> int:
        """The shared store's files, then every worker's memory copies; the objects affected
        (the most any one store had: the copies are of the same objects). A worker that dies
        meanwhile restarts with an empty memory tier, so it is not waited for."""
        loop = asyncio.get_running_loop()
        store = self.cache_store
        shared = await asyncio.to_thread(apply, inv, [store]) if store is not None else 0
        self._next_ack += 1
        ack = self._next_ack
        waits = []
        body = {"id": inv.id, "paths": list(inv.paths), "tags": list(inv.tags),
                "soft": inv.soft, "hosts": list(inv.hosts)}
        for worker in self.workers:
            future: asyncio.Future[int] = loop.create_future()
            self._purges[(worker.index, ack)] = future
            worker.send({"op": "invalidate", "id": ack, "invalidation": body})
            waits.append(future)
        done, _ = await asyncio.wait(waits, timeout=10)
        for worker in self.workers:
            self._purges.pop((worker.index, ack), None)
        return max([shared] + [f.result() for f in done])

    def reopen_logs(self) -> None:
        for worker in self.workers:
            _signal(worker, signal.SIGUSR1)


# per-target numbers the workers report that add up across workers
_SUMMED = ("in_flight", "requests", "errors", "requests_per_s", "open_connections",
           "idle_connections")
# a target in /api/runtime, in the order lbcdn.upstream.pool.Target.describe() gives
_RUNTIME_TARGET_KEYS = ("target", "host", "port", "weight", "state", "reason", "classic",
                        "ejected", "in_flight", "open_connections", "idle_connections",
                        "requests", "errors", "error_rate", "latency_s", "requests_per_s")


def _zero_stats() -> dict[str, Any]:
    return {"ejected": False, "in_flight": 0, "requests": 0, "errors": 0,
            "requests_per_s": 0.0, "open_connections": 0, "idle_connections": 0, "_lat": [],
            "_err": []}


def _weighted_mean(values: list[tuple[float, float]]) -> float | None:
    """The mean of (value, weight) pairs; unweighted when every weight is 0; None if empty."""
    if not values:
        return None
    total = sum(w for _, w in values)
    if total <= 0:
        return sum(v for v, _ in values) / len(values)
    return sum(v * w for v, w in values) / total


async def messages(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON messages of a control channel, one a line, until the other side is gone."""
    while True:
        try:
            line = await reader.readline()
        except ConnectionError:
            return
        if not line:
            return
        yield json.loads(line)


def _signal(worker: Worker, sig: signal.Signals) -> None:
    if worker.proc is not None and worker.proc.poll() is None:
        worker.proc.send_signal(sig)


def _mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


async def _control_main(config_path: str, workers: int, log_level: str | None) -> int:
    with open(config_path, encoding="utf-8") as f:
        text = f.read()
    config = load_config_text(text, config_path)
    from lbcdn.daemon import run_process
    return await run_process(Supervisor(config, config_path, text, workers, log_level))


def serve_workers(config_path: str, workers: int, log_level: str | None) -> int:
    """Run the control process (until SIGTERM/SIGINT) with `workers` data-plane workers,
    from the configuration file `config_path` (validated already). Logging is set up already
    (lbcdn.cli)."""
    raise_nofile()  # before any socket; the workers inherit it
    import uvloop
    return uvloop.run(_control_main(config_path, workers, log_level))


# -- the worker side ------------------------------------------------------------------------
async def _worker_main(control_fd: int, index: int, log_level: str | None) -> int:
    from lbcdn import metrics
    from lbcdn.daemon import Daemon
    from lbcdn.upstream.targets import stats_of
    sock = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    line = await reader.readline()
    if not line:
        return 1  # the control process went away before we started
    first = json.loads(line)
    config = load_config_text(first["yaml"], first["source"])
    set_keys(TicketKeys.from_wire(first["ticket_keys"]))  # before any listener accepts
    daemon = Daemon(config, None, log_level, role="worker")
    daemon.acme_view = first["acme"]

    def send(message: dict[str, Any]) -> None:
        writer.write(json.dumps(message).encode() + b"\n")
    cache = first["cache"]
    leads = LeadClient(send)
    daemon.cache_shared = Shared(
        SharedStore(cache["dir"], limits(config.cache.storage)[1], not cache["owned"]), leads)
    demands: dict[int, asyncio.Future[str | None]] = {}
    demand_ids = itertools.count(1)

    async def demand(listener: str, name: str) -> str | None:
        """An on-demand certificate, from the control process (its answer comes once the
        certificate is installed here)."""
        ident = next(demand_ids)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        demands[ident] = future
        writer.write(json.dumps({"op": "acme-demand", "id": ident, "listener": listener,
                                 "name": name}).encode() + b"\n")
        try:
            return await future
        finally:
            demands.pop(ident, None)
    daemon.acme_demand = demand
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGUSR1, daemon.reopen_logs)
    try:
        await daemon.start()
    except OSError as exc:
        log.error("worker %d could not start: %s", index, exc)
        return 1
    writer.write(b'{"op": "ready"}\n')

    def drained(pool: str, target: str) -> None:
        writer.write(json.dumps({"op": "drained", "pool": pool, "target": target}).encode()
                     + b"\n")
    daemon.on_drained = drained
    orphaned = False  # the control process died under us

    generation = 0   # the reload id of the configuration running here (see "weights")

    async def channel() -> None:
        nonlocal orphaned, generation
        async for message in messages(reader):
            if message["op"] == "reload":
                error: str | None = None
                try:
                    await daemon.apply(load_config_text(message["yaml"], message["source"]))
                    generation = message["id"]
                except Exception as exc:
                    error = f"worker {index}: {exc}"
                writer.write(json.dumps({"op": "reloaded", "id": message["id"],
                                         "error": error}).encode() + b"\n")
            elif message["op"] == "acme":
                daemon.apply_acme(message["view"])
                writer.write(json.dumps({"op": "acme-applied", "id": message["id"]}).encode()
                             + b"\n")
            elif message["op"] == "acme-demanded":
                waiting = demands.get(message["id"])
                if waiting is not None and not waiting.done():
                    waiting.set_result(message["error"])
            elif message["op"] == "cache-led":
                leads.answered(message["id"], message["result"], message.get("status"))
            elif message["op"] == "cache-drop":
                daemon.drop_cached(message["key"].encode("latin-1"))
            elif message["op"] == "ticket_keys":
                set_keys(TicketKeys.from_wire(message["keys"]))
            elif message["op"] == "targets":
                daemon.apply_targets(message["pool"], message["targets"])
            elif message["op"] == "weights" and message["generation"] == generation:
                try:
                    daemon.set_weights(message["route"], message["weights"])
                except (LookupError, ValueError) as exc:  # a reload here got there first
                    log.warning("worker %d: weights not applied: %s", index, exc)
            elif message["op"] == "invalidate":
                i = message["invalidation"]
                purged = await daemon.invalidate_cache(Invalidation(
                    i["id"], tuple(i["paths"]), tuple(i["tags"]), bool(i["soft"]),
                    tuple(i["hosts"]), None, time.time()))
                writer.write(json.dumps({"op": "invalidated", "id": message["id"],
                                         "purged": purged}).encode() + b"\n")
        # The channel ends only when the control process is gone (killed, crashed: a normal
        # stop waits for us to exit first). Nobody would restart us, reload us or run the
        # health checks any more, and our ports would keep a restarted daemon from starting:
        # exit at once, so that whatever supervises the daemon restarts it whole.
        log.error("worker %d: the control process is gone: closing listeners and "
                  "connections, exiting", index)
        orphaned = True
        for listener in daemon.listeners:
            listener.stop_accepting()
        daemon.request_stop()
        daemon.request_stop()  # as a second SIGTERM: cut the connections, no drain
        # a backstop: listeners retired by a reload still drain up to their deadline
        loop.call_later(ORPHAN_EXIT_S, os._exit, 1)

    async def flush_metrics() -> None:
        while True:
            await asyncio.sleep(1.0)
            metrics.flush()
            daemon.update_gauges()
            writer.write(json.dumps({"op": "stats", "pools": {
                name: stats_of(daemon.pools.values(), name) for name in daemon.pools},
                "queues": {name: {"failed_open": pool.failed_open, "queued": len(pool.queue)}
                           for name, pool in daemon.pools.items()},
                "listeners": {listener.name: len(listener.connections)
                              for listener in daemon.listeners}}
            ).encode() + b"\n")

    tasks = [spawn(channel(), "control-channel"), spawn(flush_metrics(), "metrics-flush")]
    await daemon.run_until_stopped()
    for task in tasks:
        task.cancel()
    if orphaned:
        # nobody will read the metrics any more, nor remove their directory: the first
        # worker out does (one still stopping writes to files it has open, or not at all)
        for variable in ("PROMETHEUS_MULTIPROC_DIR", ratelimit.ENV):
            directory = os.environ.get(variable)
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
        if cache["owned"]:
            shutil.rmtree(cache["dir"], ignore_errors=True)
        return 1
    metrics.flush()
    return 0


def run_worker(control_fd: int, index: int, log_level: str | None) -> int:
    setup_logging(log_level or "info")
    import uvloop
    return uvloop.run(_worker_main(control_fd, index, log_level))
