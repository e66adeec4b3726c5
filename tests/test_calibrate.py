"""The calibrated link: the pure fit, the profile in a sweep file, bad profiles, and the CLI against a
really shaped link (two Ray nodes in network namespaces), which it must recover within 5%."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from raybench import netem
from raybench.spec import config as cfg
from raybench.spec.profile import overhead_at, read_profile
from raybench.worker.comm.fit import fit_line, fit_link
from raybench.worker.comm.link import Link, allreduce_seconds

from conftest import ROOT

SIZES = [2**10 * 4**i for i in range(9)]  # 1 KiB ... 64 MiB


def synthetic(bw: float | None, lat: float, over: float, trips: float, workers: list[int]) -> dict:
    """What the fit's model says the all-reduce takes: the medians a perfect measurement would give."""
    return {p: {n: allreduce_seconds(n, p, Link(bw, lat, overhead_at(over, trips, lat, p))) for n in SIZES}
            for p in workers}


@pytest.mark.parametrize("bw, lat, over, trips, workers", [
    (100.0, 20.0, 0.45, 1.0, [2]),
    (987.5, 0.7, 0.12, 1.3, [2, 3, 4]),
    (10.0, 5.0, 0.0, 0.0, [2, 8]),
])
def test_the_fit_recovers_known_parameters_exactly(bw, lat, over, trips, workers):
    fit = fit_link(synthetic(bw, lat, over, trips, workers), lat, over)
    assert math.isclose(fit.link.bandwidth_mbps, bw, rel_tol=1e-9)
    assert fit.link.latency_ms == lat and fit.link.overhead_ms == over
    assert math.isclose(fit.handshake_trips, trips, rel_tol=1e-9, abs_tol=1e-9) and not fit.h_assumed
    for p in workers:  # the trial's link reproduces every measured time
        assert math.isclose(fit.lines[p].intercept_s, (over + 2 * (p - 1) * (1 + trips) * lat) / 1e3, rel_tol=1e-9)
        assert max(abs(r) for r in fit.lines[p].residuals_s) < 1e-9
        assert math.isclose(allreduce_seconds(2**20, p, fit.link_at(p)),
                            allreduce_seconds(2**20, p, Link(bw, lat, overhead_at(over, trips, lat, p))), rel_tol=1e-9)


def test_the_fit_reads_an_unlimited_link_and_assumes_the_handshake_where_latency_is_too_small_to_see():
    fit = fit_link({2: {n: 3e-4 for n in SIZES}}, latency_ms=0.01, overhead_ms=0.3)
    assert fit.link.bandwidth_mbps is None and fit.h_assumed and fit.handshake_trips == 1.0


def test_the_intercept_comes_from_the_latency_bound_sizes():
    """Mid-size messages that cost more than the line (TCP windows still opening) do not lift the intercept."""
    t = {n: 0.040 + n * 8 / 100e6 for n in SIZES}
    t[2**16] += 0.010
    t[2**18] += 0.012
    line = fit_line(list(t), list(t.values()))
    assert math.isclose(line.intercept_s, 0.040, rel_tol=1e-3)
    with pytest.raises(ValueError, match="two distinct message sizes"):
        fit_line([1024, 1024], [0.1, 0.2])


PROFILE = """\
bandwidth_mbps: 98.5
latency_ms: 20.25
overhead_ms: 0.5
handshake_trips: 1.0
provenance: {tool: test}
"""


def sweep_text(network: str) -> str:
    return f"name: prof\nworkers: [2, 4]\nalgorithm: [allreduce, fp16]\nnetwork: {network}\n"


def write_sweep(tmp_path, network="{profile: links/lab.yaml}", profile=PROFILE):
    (tmp_path / "links").mkdir(exist_ok=True)
    (tmp_path / "links" / "lab.yaml").write_text(profile)
    f = tmp_path / "prof.yaml"
    f.write_text(sweep_text(network))
    return f


def test_a_sweep_file_with_a_profile_expands_into_trials_carrying_its_numbers(tmp_path):
    spec = cfg.load(str(write_sweep(tmp_path)))  # relative to the sweep file, not to the working directory
    trials = cfg.expand(spec)
    assert len(trials) == 4
    for t in trials:
        assert (t.bandwidth_mbps, t.latency_ms, t.link_profile) == (98.5, 20.25, "lab")
        assert t.link_overhead_ms == pytest.approx(0.5 + 2 * (t.workers - 1) * 20.25)  # handshake: a trip per step
        assert "_link-lab_" in t.trial_id and "_bw" not in t.trial_id
    assert len({t.trial_id for t in trials}) == 4
    plain = cfg.expand(cfg.parse({"name": "prof", "workers": [2], "network": {"bandwidth_mbps": 98.5,
                                                                              "latency_ms": 20.25}}))
    assert plain[0].trial_id not in {t.trial_id for t in trials} and plain[0].link_overhead_ms == 0.0
    small = cfg.smoke(trials)  # 4 workers become 2: the handshake of 2 workers, not of 4
    assert {t.workers for t in small} == {2} and len(small) == 2
    assert all(t.link_overhead_ms == pytest.approx(0.5 + 2 * 20.25) for t in small)


def test_the_sweep_cli_takes_a_profile(tmp_path, cifar_dir):
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", str(write_sweep(tmp_path)), "--dry-run",
                           "--smoke", "--data", str(cifar_dir), "--results", str(tmp_path / "results")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resnet20v1_w2_cpu_link-lab_fp16_s0" in proc.stdout


BAD = [  # (profile file text or None for no file, sweep's network, what the message must hold)
    (None, None, ["lab.yaml", "profile file not found"]),
    ("- 1\n- 2\n", None, ["lab.yaml", "must be a mapping", "bandwidth_mbps, latency_ms, overhead_ms", "list"]),
    ("", None, ["lab.yaml", "an empty file"]),
    (PROFILE.replace("98.5", "fast"), None,
     ["lab.yaml", "field 'bandwidth_mbps'", "'fast'", "greater than 0, or 'unlimited'"]),
    (PROFILE.replace("98.5", "0"), None, ["field 'bandwidth_mbps'", "value 0 "]),
    (PROFILE.replace("20.25", "-3"), None, ["lab.yaml", "field 'latency_ms'", "value -3", "0 or more"]),
    (PROFILE.replace("0.5", "true"), None, ["field 'overhead_ms'", "value True", "0 or more"]),
    (PROFILE.replace("handshake_trips: 1.0", "handshake_trips: -1"), None, ["field 'handshake_trips'", "-1"]),
    (PROFILE.replace("overhead_ms: 0.5\n", ""), None, ["lab.yaml", "field 'overhead_ms'", "required but missing"]),
    (PROFILE + "jitter_ms: 3\n", None, ["field 'jitter_ms'", "unknown key", "allowed: bandwidth_mbps"]),
    (PROFILE.replace("{tool: test}", "yes"), None, ["field 'provenance'", "a mapping"]),
    (PROFILE + "x: &a 1\ny: *a\n", None, ["lab.yaml", "aliases"]),
    (PROFILE, "{profile: links/lab.yaml, bandwidth_mbps: [100]}",
     ["field 'network.profile'", "network.bandwidth_mbps [100.0] cannot be combined with a profile"]),
    (PROFILE, "{profile: links/lab.yaml, latency_ms: 5}", ["network.latency_ms [5.0] cannot be combined"]),
    (PROFILE, "{profile: 7}", ["field 'network.profile'", "value 7", "valid string"]),
]


@pytest.mark.parametrize("profile, network, words", BAD, ids=range(len(BAD)))
def test_a_bad_profile_is_named(tmp_path, profile, network, words):
    f = write_sweep(tmp_path, network or "{profile: links/lab.yaml}", profile or "")
    if profile is None:
        (tmp_path / "links" / "lab.yaml").unlink()
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(str(f))
    assert str(f) in str(e.value)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_bad_profile_stops_the_sweep_cli_before_ray(tmp_path):
    f = write_sweep(tmp_path, profile=PROFILE.replace("20.25", "-3"))
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", str(f), "--dry-run"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "field 'latency_ms': value -3 is not allowed" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "ray" not in proc.stderr.lower().replace("raybench", "")


# the shaped link: rate and one-way delay as the pair configures them both ways
RATE_MBIT, DELAY_MS = 100.0, 20.0


@pytest.mark.skipif(netem.available() is not None, reason=f"no shaped link here: {netem.available()}")
def test_calibration_recovers_the_shaped_links_bandwidth_and_latency(tmp_path):
    out = tmp_path / "link.yaml"
    with netem.ShapedPair(RATE_MBIT, DELAY_MS) as pair:
        run = pair.run_in_head([sys.executable, "-m", "raybench.calibrate", "--address", pair.address,
                                "--sizes", "1K,4K,16K,64K,256K,1M,2M,4M", "--repeats", "5", "--buckets", "2",
                                "--bucket-bytes", "256K", "--out", str(out)], timeout=600, cwd=ROOT)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert not set(pair.namespaces) & set(netem.our_namespaces())
    prof = read_profile(out)
    print(f"shaped {RATE_MBIT:g} Mbit/s, {DELAY_MS:g} ms -> fitted {prof.bandwidth_mbps} Mbit/s, "
          f"{prof.latency_ms} ms, overhead {prof.overhead_ms} ms, handshake trips {prof.handshake_trips}")
    assert abs(prof.bandwidth_mbps / RATE_MBIT - 1) <= 0.05, prof
    assert abs(prof.latency_ms / DELAY_MS - 1) <= 0.05, prof
    assert 0.5 <= prof.handshake_trips <= 1.5, prof  # gloo: one receiver-ready notification per chunk sent
    assert [f["workers"] for f in read_yaml(out)["provenance"]["fits"]] == [2]


def read_yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())
