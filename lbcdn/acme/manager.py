"""Obtains, stores, renews and publishes ACME certificates; runs once per daemon (in the single
process, or the workers' control process, beside the DNS server).

Rules:
- One job per certificate (CA directory + names); listeners asking for the same one share it.
  At start a stored certificate is used as it is (no re-issuance after a restart); renewal is
  at two thirds of its lifetime (lbcdn.acme.plan); a failure is retried with backoff while the
  old certificate keeps being served, and shows in the log, the metrics and `describe()`.
- Issuing takes the certificate's lock file (lbcdn.acme.store): a replica sharing the state
  directory that finds it taken waits for the holder and picks its certificate up.
- On-demand certificates (`tls.on_demand`): `demand(listener, name)` is asked by a handshake
  for a name without a certificate; the name must pass the allow-list, then the `ask` URL,
  then the listener's rate limit; a refusal is remembered for REFUSAL_TTL_S. A failed
  issuance is not retried until a handshake asks again after that.
- Challenge answers and certificates reach the data plane through `publish` (a JSON-able view:
  HTTP-01 tokens, TLS-ALPN-01 challenge certificates, each listener's certificate files),
  which returns once every data-plane process installed it; only then is the CA told to
  look. DNS-01 records go through the DNS engine's change batches, as the admin API's do, so
  every DNS listener answers them at once; they are removed afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp

from lbcdn.acme.answers import challenge_cert
from lbcdn.acme.client import AcmeClient, AcmeError, Pending, dns01_value, key_pem, load_key, \
    new_key
from lbcdn.acme.config import AcmeConfig, OnDemandConfig
from lbcdn.acme.plan import RateLimit, ari_time, default_challenge, name_allowed, next_attempt
from lbcdn.acme.store import AcmeStore, Stored, cert_id
from lbcdn.dns.changes import Change, ChangeError
from lbcdn.dns.config import RecordSetConfig
from lbcdn.dns.engine import Engine
from lbcdn.metrics import ACME_FAILING, ACME_ISSUANCES, ACME_NOT_AFTER
from lbcdn.tasks import spawn

log = logging.getLogger("lbcdn.acme")

LOCK_WAIT_S = 1.0        # how often a replica waiting for another's issuance looks again
DNS01_TTL_S = 0
REFUSAL_TTL_S = 60.0     # an on-demand name refused (or failed) is not asked for again sooner
ASK_TIMEOUT_S = 5.0
REFUSALS_MAX = 10_000
ARI_RECHECK_S = 6 * 3600.0   # RFC 9773 suggests asking about twice a day


@dataclass(frozen=True)
class Wanted:
    """A certificate the configuration asks for, and the listeners that serve it."""
    cid: str
    config: AcmeConfig
    challenge: str
    listeners: tuple[str, ...]


def wanted(listeners: Sequence[tuple[str, int, Sequence[AcmeConfig]]],
           authoritative: Callable[[str], bool]) -> list[Wanted]:
    """The certificates asked for by (listener name, port, its `tls.acme`) entries."""
    out: dict[str, Wanted] = {}
    for name, port, configs in listeners:
        for ac in configs:
            cid = cert_id(ac.directory, ac.names)
            challenge = ac.challenge or default_challenge(ac.names, authoritative, port)
            seen = out.get(cid)
            out[cid] = Wanted(cid, ac, challenge,
                              (seen.listeners if seen is not None else ()) + (name,))
    return list(out.values())


@dataclass
class Job:
    wanted: Wanted
    stored: Stored | None = None
    failures: int = 0
    last_failure: float | None = None
    last_error: str | None = None
    next_renewal: float | None = None
    issuing: bool = False
    on_demand: bool = False
    suggested: float | None = None   # when the CA's renewal information says to renew
    ari_next: float = 0.0            # when to ask it again
    settled: asyncio.Event = field(default_factory=asyncio.Event)   # on demand: first try done
    force: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


Publish = Callable[[dict[str, Any]], Awaitable[None]]


class AcmeManager:
    def __init__(self, state_dir: str, publish: Publish,
                 dns_engine: Callable[[], Engine | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = AcmeStore(state_dir)
        self.publish = publish
        self.dns_engine = dns_engine
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.http01: dict[str, str] = {}
        self.alpn: dict[str, tuple[str, str]] = {}
        self.dns_lock = asyncio.Lock()
        self.running = False
        # on demand, per listener: its settings, its port, its rate limit
        self.on_demand: dict[str, tuple[OnDemandConfig, int, RateLimit]] = {}
        self.refused: dict[str, tuple[float, str]] = {}   # name -> (until, why)

    # -- lifecycle -----------------------------------------------------------------------
    async def apply(self, wanted_now: Sequence[Wanted],
                    on_demand: dict[str, tuple[OnDemandConfig, int]] | None = None) -> None:
        """Take the certificates wanted now: publish what is stored, stop the jobs no longer
        wanted (their files stay); new jobs start with `run`, once the listeners that answer
        the challenges are up (at once when it already ran)."""
        by_id = {w.cid: w for w in wanted_now}
        on_demand = on_demand or {}
        self.on_demand = {
            name: (od, port, self.on_demand[name][2] if name in self.on_demand and
                   self.on_demand[name][0] == od else RateLimit(od.max_per_minute, 60.0))
            for name, (od, port) in on_demand.items()}
        for cid in list(self.jobs):
            job = self.jobs[cid]
            if job.on_demand and all(
                    self.on_demand.get(lst, (None,))[0] is not None and
                    job.wanted.config.directory == self.on_demand[lst][0].directory
                    for lst in job.wanted.listeners):
                continue  # still asked for on demand
            if cid not in by_id:
                job = self.jobs.pop(cid)
                if job.task is not None:
                    job.task.cancel()
        for cid, w in by_id.items():
            known = self.jobs.get(cid)
            if known is None:
                job = self.jobs[cid] = Job(w, stored=self.store.load(cid))
                self._gauges(job)
            else:
                known.wanted = w
        await self.publish(self.view())
        if self.running:
            self.run()

    def run(self) -> None:
        self.running = True
        for job in self.jobs.values():
            if job.task is None:
                job.task = spawn(self._run(job), f"acme-{job.wanted.cid}")

    async def stop(self) -> None:
        for job in self.jobs.values():
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(j.task for j in self.jobs.values() if j.task is not None),
                             return_exceptions=True)
        self.jobs.clear()

    def view(self) -> dict[str, Any]:
        """What the data plane serves: {"http01": {token: key authorization}, "alpn": {name:
        [cert PEM, key PEM]}, "certs": {listener: [[names], cert file, key file]...}}."""
        certs: dict[str, list[list[Any]]] = {}
        for job in self.jobs.values():
            if job.stored is None:
                continue
            for listener in job.wanted.listeners:
                certs.setdefault(listener, []).append(
                    [list(job.wanted.config.names), job.stored.cert_file, job.stored.key_file])
        return {"http01": dict(self.http01),
                "alpn": {n: list(p) for n, p in self.alpn.items()}, "certs": certs}

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for job in self.jobs.values():
            s = job.stored
            out.append({
                "id": job.wanted.cid, "names": list(job.wanted.config.names),
                "directory": job.wanted.config.directory, "challenge": job.wanted.challenge,
                "listeners": list(job.wanted.listeners),
                "issuer": s.issuer if s else None,
                "not_before": s.not_before if s else None,
                "not_after": s.not_after if s else None,
                "next_renewal": job.next_renewal, "issuing": job.issuing,
                "failures": job.failures, "last_error": job.last_error,
                "on_demand": job.on_demand})
        return out

    def find(self, key: str) -> Job | None:
        """A job by id or by one of its names."""
        for job in self.jobs.values():
            if key == job.wanted.cid or key.lower() in (n.lower() for n in
                                                        job.wanted.config.names):
                return job
        return None

    def force_renew(self, job: Job) -> None:
        job.failures, job.last_failure = 0, None
        job.force.set()

    # -- on demand -------------------------------------------------------------------------
    async def demand(self, listener: str, name: str) -> str | None:
        """A handshake on `listener` asks for `name`, which has no certificate: get one (or
        the stored one) and publish it. None once it is served, else why not."""
        spec = self.on_demand.get(listener)
        if spec is None:
            return f"listener {listener!r} issues no certificates on demand"
        od, port, limit = spec
        name = name.lower().rstrip(".")
        cid = cert_id(od.directory, (name,))
        job = self.jobs.get(cid)
        if job is not None:
            if listener not in job.wanted.listeners:
                job.wanted = Wanted(cid, job.wanted.config, job.wanted.challenge,
                                    job.wanted.listeners + (listener,))
                await self.publish(self.view())
            await job.settled.wait()
            return job.last_error if job.stored is None else None
        now = self.clock()
        refused = self.refused.get(name)
        if refused is not None and refused[0] > now:
            return refused[1]
        why = await self._refusal(od, name)
        stored = self.store.load(cid)
        if why is None and stored is None and not limit.take(now):
            why = (f"on-demand: more than {od.max_per_minute} new certificates a minute on "
                   f"listener {listener!r}; {name} refused for now")
        if why is not None:
            log.warning("acme %s", why)
            self._refuse(name, why)
            return why
        challenge = od.challenge or ("tls-alpn-01" if port == 443 else "http-01")
        config = AcmeConfig(directory=od.directory, names=(name,), email=od.email,
                            challenge=challenge, ca_bundle=od.ca_bundle, eab=od.eab)
        job = self.jobs[cid] = Job(Wanted(cid, config, challenge, (listener,)), stored=stored,
                                   on_demand=True)
        try:
            if stored is None:
                await self._attempt(job, forced=False)
            else:
                self._gauges(job)
                await self.publish(self.view())
        finally:
            job.settled.set()
        if job.stored is None:  # failed: forget it, and refuse it for a while
            del self.jobs[cid]
            reason = job.last_error or "issuance failed"
            self._refuse(name, reason)
            return reason
        job.task = spawn(self._run(job), f"acme-{cid}")   # renewals from now on
        return None

    def _refuse(self, name: str, why: str) -> None:
        """Remember a refusal; a flood of made-up names cannot grow this past REFUSALS_MAX."""
        now = self.clock()
        if len(self.refused) >= REFUSALS_MAX:
            self.refused = {n: r for n, r in self.refused.items() if r[0] > now}
            if len(self.refused) >= REFUSALS_MAX:
                self.refused.clear()
        self.refused[name] = (now + REFUSAL_TTL_S, why)

    async def _refusal(self, od: OnDemandConfig, name: str) -> str | None:
        """Why `name` may not have a certificate: the allow-list, then the `ask` URL."""
        if not name_allowed(name, od.allow):
            return f"on-demand: {name} is not in the allow-list"
        if od.ask is None:
            return None
        url = od.ask + ("&" if "?" in od.ask else "?") + urlencode({"domain": name})
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_S)) as session:
                async with session.get(url, allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        return None
                    return f"on-demand: {od.ask} answered {resp.status} for {name}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return f"on-demand: {od.ask} could not be asked about {name}: " \
                   f"{exc or type(exc).__name__}"

    # -- one certificate -----------------------------------------------------------------
    async def _run(self, job: Job) -> None:
        while True:
            now = self.clock()
            s = job.stored
            if s is not None and now >= job.ari_next:
                await self._renewal_info(job)
            due = next_attempt(now, s.not_before if s else None, s.not_after if s else None,
                               job.failures, job.last_failure,
                               job.wanted.config.retry_initial_s)
            if job.suggested is not None and not job.failures:
                due = min(due, max(job.suggested, now))
            job.next_renewal = due
            forced = False
            wake = min(due, job.ari_next) if s is not None else due
            if wake > now:
                try:
                    await asyncio.wait_for(job.force.wait(), wake - now)
                    forced = True
                except asyncio.TimeoutError:
                    if wake < due:
                        continue   # time to ask the CA's renewal information again
            forced = forced or job.force.is_set()
            job.force.clear()
            await self._attempt(job, forced)

    async def _renewal_info(self, job: Job) -> None:
        """Ask the CA when to renew (ACME Renewal Information), where it offers that; a
        failure leaves the two-thirds rule alone."""
        ac, stored = job.wanted.config, job.stored
        assert stored is not None
        job.ari_next = self.clock() + ARI_RECHECK_S
        job.suggested = None
        try:
            with open(stored.cert_file, "rb") as f:
                pem = f.read()
            async with AcmeClient(ac.directory, new_key(), ca_bundle=ac.ca_bundle) as client:
                window = await client.renewal_info(pem)
        except (AcmeError, OSError, ValueError) as exc:
            log.info("acme %s: no renewal information: %s", ", ".join(ac.names), exc)
            return
        if window is not None:
            job.suggested = ari_time(window[0], window[1], random.random())

    async def _attempt(self, job: Job, forced: bool) -> None:
        cid = job.wanted.cid
        lock = self.store.try_lock(cid)
        if lock is None:  # another replica issues it: wait, then take its certificate
            log.info("acme %s: another process holds the issuing lock; waiting for it", cid)
            job.issuing = True
            while lock is None:
                await asyncio.sleep(LOCK_WAIT_S)
                lock = self.store.try_lock(cid)
            lock.release()
            job.issuing = False
            await self._adopt(job, self.store.load(cid))
            return
        try:
            stored = self.store.load(cid)
            if not forced and stored is not None and (job.stored is None or
                                                      stored.cert_file != job.stored.cert_file):
                # renewed meanwhile by a replica: use it rather than ask the CA again
                if next_attempt(self.clock(), stored.not_before, stored.not_after, 0, None,
                                0) > self.clock():
                    await self._adopt(job, stored)
                    return
            job.issuing = True
            await self._issue(job)
        finally:
            job.issuing = False
            lock.release()

    async def _adopt(self, job: Job, stored: Stored | None) -> None:
        if stored is not None and (job.stored is None or
                                   stored.cert_file != job.stored.cert_file):
            job.stored = stored
            job.failures, job.last_failure, job.last_error = 0, None, None
            self._gauges(job)
            await self.publish(self.view())

    async def _issue(self, job: Job) -> None:
        w = job.wanted
        ac = w.config
        label = ac.names[0]
        try:
            account_pem = await asyncio.to_thread(
                self.store.account_key, ac.directory, lambda: key_pem(new_key()))
            eab = (ac.eab.kid, ac.eab.hmac_key) if ac.eab is not None else None
            cert_key = new_key()
            async with AcmeClient(ac.directory, load_key(account_pem),
                                  ca_bundle=ac.ca_bundle, email=ac.email, eab=eab) as client:
                chain = await client.issue(ac.names, w.challenge, cert_key, _Solver(self))
            generation = f"{int(self.clock())}-{secrets.token_hex(3)}"
            stored = await asyncio.to_thread(self.store.save, w.cid, chain,
                                             key_pem(cert_key), generation)
        except (AcmeError, OSError, ValueError) as exc:
            job.failures += 1
            job.last_failure = self.clock()
            job.last_error = str(exc)
            ACME_ISSUANCES.labels(label, "error").inc()
            ACME_FAILING.labels(label).set(1)
            keeping = " (the current certificate stays in use)" if job.stored else ""
            log.error("acme %s: issuance failed%s: %s", ", ".join(ac.names), keeping, exc)
            return
        log.info("acme %s: certificate issued by %s, valid until %s", ", ".join(ac.names),
                 stored.issuer, time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                              time.gmtime(stored.not_after)))
        ACME_ISSUANCES.labels(label, "ok").inc()
        job.stored = stored
        job.failures, job.last_failure, job.last_error = 0, None, None
        self._gauges(job)
        await self.publish(self.view())

    def _gauges(self, job: Job) -> None:
        label = job.wanted.config.names[0]
        ACME_FAILING.labels(label).set(1 if job.last_error else 0)
        if job.stored is not None:
            ACME_NOT_AFTER.labels(label).set(job.stored.not_after)

    # -- DNS-01 ----------------------------------------------------------------------------
    async def dns_records(self, pending: Sequence[Pending], present: bool) -> None:
        """UPSERT (present) or DELETE the `_acme-challenge` TXT records of `pending` in our
        own zones, one change batch per zone, as the admin API applies them."""
        engine = self.dns_engine()
        by_name: dict[str, list[str]] = {}
        for p in pending:
            by_name.setdefault(f"_acme-challenge.{p.name}.",
                               []).append(f'"{dns01_value(p.key_authorization)}"')
        if engine is None:
            raise AcmeError("dns-01: no DNS server runs here (configure `dns`)")
        async with self.dns_lock:
            batches: dict[str, list[Change]] = {}
            for name, values in by_name.items():
                zone = engine.zone_for(name)
                if zone is None:
                    raise AcmeError(f"dns-01 for {name[16:-1]}: lbcdn serves no zone "
                                    "holding it")
                record = RecordSetConfig(name=name, type="TXT", values=tuple(values),
                                         ttl_s=DNS01_TTL_S)
                batches.setdefault(zone.name, []).append(
                    Change("UPSERT" if present else "DELETE", record))
            for zone_name, changes in batches.items():
                try:
                    engine.apply_changes(zone_name, changes)
                except ChangeError as exc:
                    if present:
                        raise AcmeError(f"dns-01: the zone {zone_name} refused the "
                                        f"challenge record: {exc}") from None
                    log.warning("acme: could not remove dns-01 records: %s", exc)


class _Solver:
    """Puts challenge answers up through the manager and takes them down."""

    def __init__(self, manager: AcmeManager) -> None:
        self.m = manager

    async def present(self, pending: Sequence[Pending]) -> None:
        for p in pending:
            if p.kind == "http-01":
                self.m.http01[p.token] = p.key_authorization
            elif p.kind == "tls-alpn-01":
                self.m.alpn[p.name] = challenge_cert(p.name, p.key_authorization)
        dns = [p for p in pending if p.kind == "dns-01"]
        if dns:
            await self.m.dns_records(dns, present=True)
        if len(dns) < len(pending):
            await self.m.publish(self.m.view())

    async def remove(self, pending: Sequence[Pending]) -> None:
        for p in pending:
            self.m.http01.pop(p.token, None)
            if p.kind == "tls-alpn-01":
                self.m.alpn.pop(p.name, None)
        dns = [p for p in pending if p.kind == "dns-01"]
        if dns:
            await self.m.dns_records(dns, present=False)
        if len(dns) < len(pending):
            await self.m.publish(self.m.view())
