"""The link model against hand-computed values (Thakur et al.'s ring all-reduce)."""
import pytest

from raybench.worker.comm.link import Link, allreduce_seconds

MB = 1_000_000


def test_one_worker_never_communicates():
    assert allreduce_seconds(10 * MB, 1, Link(1.0, 100.0)) == 0.0


def test_unlimited_link_costs_nothing():
    assert allreduce_seconds(10 * MB, 8, Link(None, 0.0)) == 0.0


def test_bandwidth_term():
    # 2 workers, 1 MB at 10 Mbit/s: 2*(1)/2 * 8e6 bits / 1e7 bit/s = 0.8 s
    assert allreduce_seconds(1 * MB, 2, Link(10.0, 0.0)) == pytest.approx(0.8)
    # 4 workers: 2*3/4 * 8e6 / 1e8 = 0.12 s
    assert allreduce_seconds(1 * MB, 4, Link(100.0, 0.0)) == pytest.approx(0.12)


def test_latency_term():
    # 8 workers, 10 ms: 2*7*0.01 = 0.14 s whatever the size (unlimited bandwidth)
    assert allreduce_seconds(123 * MB, 8, Link(None, 10.0)) == pytest.approx(0.14)


def test_both_terms_add():
    # 2 workers, 1.08 MB (ResNet-20's fp32 gradients) at 100 Mbit/s and 1 ms
    assert allreduce_seconds(1_078_888, 2, Link(100.0, 1.0)) == pytest.approx(0.002 + 1_078_888 * 8 / 1e8)


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        allreduce_seconds(1, 0, Link())
    with pytest.raises(ValueError):
        allreduce_seconds(-1, 2, Link())
