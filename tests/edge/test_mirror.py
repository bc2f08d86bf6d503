import random

from lbcdn.edge import mirror as module
from lbcdn.edge.mirror import MAX_BUFFER_BYTES, Mirror, chosen
from lbcdn.routing.config import MirrorConfig
from lbcdn.upstream.config import PoolConfig, TargetConfig
from lbcdn.upstream.pool import Pool
from lbcdn import metrics


def test_chosen_takes_about_the_share_asked() -> None:
    rng = random.Random(7)
    for percent in (0.0, 1.0, 30.0, 99.0):
        n = sum(chosen(MirrorConfig(pool="p", percent=percent), rng) for _ in range(20000))
        assert abs(n / 200 - percent) < 1.0, (percent, n)
    assert all(chosen(MirrorConfig(pool="p"), rng) for _ in range(1000))


def _count(pool: str, outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lbcdn_mirror_requests_total", {"pool": pool, "outcome": outcome})
    return value or 0.0


async def test_a_copy_that_cannot_keep_up_is_dropped_not_waited_for() -> None:
    pool = Pool(PoolConfig(name="mirror-unit", targets=(TargetConfig(host="127.0.0.1",
                                                                     port=9),)))
    mirror = Mirror(pool, chunked=False)
    module._in_flight["mirror-unit"] = 1   # as `start` counts it
    before = _count("mirror-unit", "dropped")
    mirror.body(b"x" * MAX_BUFFER_BYTES)   # not connected: buffered, up to the bound
    assert mirror.pending is not None
    mirror.body(b"x")
    assert mirror.pending is None   # dropped: the real request's body never waits
    assert _count("mirror-unit", "dropped") == before + 1
    assert module._in_flight["mirror-unit"] == 0
    mirror.body(b"more")   # later events of the real request are ignored
    mirror.done()
