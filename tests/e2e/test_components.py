"""The daemon runs the bucket origin and the DNS server from its own configuration: a zone
answers over UDP and TCP and takes change batches through the admin API; objects uploaded with
boto3 are served as a website through an edge route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import boto3
import dns.message
import dns.query
import dns.rdatatype
from botocore.config import Config as BotoConfig

from tests.e2e.harness import HOST, admin_port, free_port, listener_port, proxy_config, running_daemon


def component_config(tmp: Path) -> dict[str, Any]:
    s3, web = free_port(), free_port()
    config = proxy_config(web, admin={"token": "t0ken"})
    config["pools"]["site"] = {"targets": [f"{HOST}:{web}"]}
    config["routes"] = [{"name": "site", "match": {"host": "site.localhost"},
                         "forward": "site"}]
    config["buckets"] = {
        "root": str(tmp / "buckets"), "port": s3, "website_port": web,
        "users": {"u": {"access_key_id": "AKIDEXAMPLE1", "secret_access_key": "s3cr3t",
                        "admin": True}},
        "buckets": {"site": {"owner": "u", "public_read": True, "website": {
            "index_document": "index.html", "hosts": ["site.localhost"]}}}}
    config["dns"] = {
        "listeners": [{"address": HOST, "port": free_port()}],
        "public_addresses": [HOST],
        "zones": [{"name": "example.test", "records": [
            {"name": "@", "type": "A", "alias": {"listener": "web"}},
            {"name": "api", "type": "A", "values": ["192.0.2.1"]}]}]}
    return config


def query(port: int, name: str, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, dns.rdatatype.A)
    if tcp:
        return dns.query.tcp(q, HOST, port=port, timeout=3)
    return dns.query.udp(q, HOST, port=port, timeout=3)


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in msg.answer for r in rrset)


async def test_dns_answers_and_takes_changes(tmp_path: Path) -> None:
    config = component_config(tmp_path)
    port = config["dns"]["listeners"][0]["port"]
    async with running_daemon(config):
        loop = __import__("asyncio").get_running_loop()
        apex = await loop.run_in_executor(None, query, port, "example.test.")
        assert addresses(apex) == [HOST]          # alias to the listener's address
        assert apex.flags & dns.flags.AA
        api = await loop.run_in_executor(None, lambda: query(port, "api.example.test.", True))
        assert addresses(api) == ["192.0.2.1"]
        url = f"http://{HOST}:{admin_port(config)}/api/dns/zones/example.test/changes"
        change = {"changes": [{"action": "UPSERT", "record": {
            "name": "api", "type": "A", "ttl_s": 60, "values": ["192.0.2.7"]}}]}
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer t0ken"}) as s:
            async with s.post(url, json=change) as resp:
                assert resp.status == 200, await resp.text()
            bad = {"changes": [{"action": "CREATE", "record": {
                "name": "api", "type": "A", "values": ["192.0.2.8"]}}]}
            async with s.post(url, json=bad) as resp:  # exists already: all or nothing
                assert resp.status == 400
        api = await loop.run_in_executor(None, query, port, "api.example.test.")
        assert addresses(api) == ["192.0.2.7"]


async def test_bucket_website_through_the_edge(tmp_path: Path) -> None:
    config = component_config(tmp_path)
    async with running_daemon(config):
        s3 = boto3.client("s3", endpoint_url=f"http://{HOST}:{config['buckets']['port']}",
                          aws_access_key_id="AKIDEXAMPLE1", aws_secret_access_key="s3cr3t",
                          region_name="us-east-1",
                          config=BotoConfig(s3={"addressing_style": "path"}))
        loop = __import__("asyncio").get_running_loop()
        await loop.run_in_executor(None, lambda: s3.put_object(
            Bucket="site", Key="index.html", Body=b"<h1>hi</h1>", ContentType="text/html"))
        async with aiohttp.ClientSession() as session:
            edge = f"http://{HOST}:{listener_port(config)}/"
            async with session.get(edge, headers={"Host": "site.localhost"}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/html")
                assert await resp.read() == b"<h1>hi</h1>"
                assert resp.headers["ETag"] == '"' + __import__("hashlib").md5(
                    b"<h1>hi</h1>").hexdigest() + '"'
            async with session.get(edge + "nothing", headers={"Host": "site.localhost"}) as r:
                assert r.status == 403   # not listable: S3 answers 403 for a missing key
        assert (tmp_path / "buckets" / "site" / "index.html").read_bytes() == b"<h1>hi</h1>"
