"""The time columns of emulated trials (issue 13), by hand: the straggler rule and the replay of a
virtual workers' trace. Pure: no torch, no Ray."""
from __future__ import annotations

import numpy as np
import pytest

from raybench import emulation, replay, traces
from raybench.worker.comm.link import Link

SLOW = Link(bandwidth_mbps=8.0, latency_ms=0.5)


def test_expected_max_is_the_maximum_of_p_draws_not_the_mean():
    assert emulation.expected_max([1.0, 2.0, 6.0], 1) == pytest.approx(3.0)  # one draw: the mean
    assert emulation.expected_max([1.0, 2.0], 3) == pytest.approx(2 - 1 / 8)  # all three draws 1: (1/2)^3
    samples = np.random.default_rng(0).lognormal(0.0, 0.3, 200)
    by_p = [emulation.expected_max(samples, p) for p in (1, 2, 8, 64, 1024)]
    assert by_p == sorted(by_p) and by_p[0] < by_p[-1] <= samples.max()  # grows with p, never past the slowest
    draws = np.random.default_rng(1).choice(samples, size=(20_000, 8)).max(axis=1)
    assert emulation.expected_max(samples, 8) == pytest.approx(draws.mean(), rel=0.01)
    with pytest.raises(ValueError, match="p >= 1"):
        emulation.expected_max(samples, 0)


def _record(t0: float, handover, real_done, release, backward, end, nbytes=(400_000, 200_000)):
    """A step record whose times are ``t0`` later than the given ones (t0: earlier micro-batches)."""
    shift = [t0 + x for x in handover], [t0 + x for x in real_done], [t0 + x for x in release]
    return {"handover": shift[0], "real_done": shift[1], "release": shift[2], "collectives": [1] * len(nbytes),
            "nbytes": list(nbytes), "backward": t0 + backward, "end": t0 + end, "avg_collectives": 0,
            "avg_nbytes": 0, "avg_real": 0.0}


# One worker's step: a 1.0 s micro-batch (its two buckets handed over at 0.9 and 0.95 s), the real
# collective ending at 1.0 s, backward returning at 1.05 s, the optimizer until 1.2 s.
ONE = dict(handover=[0.9, 0.95], real_done=[1.0, 1.0], release=[1.0, 1.0], backward=1.05, end=1.2)


def _steps(ranks_steps: list[list[dict]]) -> replay.Steps:
    return replay.steps(traces.to_table(1, ranks_steps))


@pytest.mark.parametrize("link", [Link(), SLOW], ids=["unlimited", "slow"])
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("ready", [False, True], ids=["ready-estimated", "ready-measured"])
def test_a_virtual_workers_trace_replays_as_the_real_workers_trace(link, processes, ready):
    """4 real workers, one micro-batch each per step, against 4 virtual workers on 1 (or 2)
    processes, whose steps run 4 (2) micro-batches before the same hand-overs: the same epochs
    (also where the emulated run measured when every process had handed each bucket over)."""
    p, steps = 4, 3
    v = p // processes
    real = _steps([[_record(0.0, **ONE) for _ in range(steps)] for _ in range(p)])

    def emulated_record() -> dict:
        rec = _record((v - 1) * 1.0, **ONE)
        return rec | ({"ready": list(rec["handover"])} if ready else {})

    emulated = _steps([[emulated_record() for _ in range(steps)] for _ in range(processes)])
    outside = 0.02  # the epoch's time outside its steps, in both runs
    real_measured = sum(replay.step_times(real, link, p, link, p).seconds) + outside
    emu_measured = sum(replay.step_times(emulated, link, p, link, p).seconds) + outside
    assert emu_measured == pytest.approx(real_measured + (v - 1) * steps)  # v micro-batches per step

    (want,) = replay.epoch_times(real, link, p, link, p, {1: real_measured})
    (got,) = emulation.epoch_times(emulated, v, link, p, {1: emu_measured})
    assert got.epoch_seconds == pytest.approx(want.epoch_seconds)
    assert got.comm_seconds == pytest.approx(want.comm_seconds)
    assert got.simulated_delay_seconds == pytest.approx(want.simulated_delay_seconds)
    assert got.simulated_hold_seconds == pytest.approx(want.simulated_hold_seconds)
    assert got.steps == steps


def test_each_workers_compute_at_p_is_the_slowest_of_p_draws():
    """Micro-batches of 1 s in three steps of four and 2 s in one: at 16 workers nearly every step
    has a straggler, at 1 worker one step in four."""
    v = 4
    computes = [1.0, 1.0, 1.0, 2.0]
    trace = _steps([[_record((v - 1) * c, handover=[c], real_done=[c], release=[c], backward=c + 0.05,
                             end=c + 0.2, nbytes=(400_000,)) for c in computes]])  # a collective of no time
    m = emulation.micro_batch_seconds(trace, v)
    np.testing.assert_allclose(m[:, 0, :], np.repeat([[c + 0.05 / v] for c in computes], v, axis=1))  # even

    def epoch(p: int) -> float:
        s = emulation.at_scale(trace, v, p)
        return float(sum(replay.step_times(s, Link(), p, Link(), p).seconds))

    # each step: the micro-batch's expected maximum (its 0.05 s after the collective included), then
    # 0.15 s of optimizer
    for p in (1, 4, 16):
        assert epoch(p) == pytest.approx(4 * (emulation.expected_max(m[:, 0], p) + 0.15), rel=1e-9)
    assert epoch(1) < epoch(4) < epoch(16) < 4 * (2.0 + 0.05 / v + 0.15) + 1e-9
    assert epoch(1) == pytest.approx(4 * (np.mean(m) + 0.15))  # one worker: the mean


def test_micro_batches_timed_one_by_one_give_the_stragglers_their_own_spread():
    """Two virtual workers per process; each step's compute is 0.4 s, split 0.1 + 0.3 in one step
    and 0.3 + 0.1 in the other. Per step, the mean (0.2 s) never varies, so evenly split the
    stragglers would vanish; timed one by one (``micro``), at 4 workers a step waits for a 0.3 s
    micro-batch unless all four draws are 0.1 s. An older trace without ``micro`` splits evenly."""
    v, p = 2, 4

    def record(first: float) -> dict:  # buckets handed over at the end, a collective of no time
        return _record(0.0, handover=[0.4], real_done=[0.4], release=[0.4], backward=0.4, end=0.5,
                       nbytes=(400_000,)) | {"micro": [first]}

    trace = _steps([[record(0.1), record(0.3)]])
    m = emulation.micro_batch_seconds(trace, v)
    np.testing.assert_allclose(m[:, 0, :], [[0.1, 0.3], [0.3, 0.1]])
    straggler = 0.3 * (1 - 0.5 ** p) + 0.1 * 0.5 ** p
    s = emulation.at_scale(trace, v, p)
    np.testing.assert_allclose(s.backward[:, 0], [straggler, straggler])
    np.testing.assert_allclose(s.end[:, 0], [straggler + 0.1] * 2)

    older = trace.__class__(**{**trace.__dict__, "micro": np.full_like(trace.micro, np.nan)})
    np.testing.assert_allclose(emulation.micro_batch_seconds(older, v)[:, 0, :], 0.2)
    np.testing.assert_allclose(emulation.at_scale(older, v, p).backward[:, 0], [0.2, 0.2])


def test_an_emulated_trial_is_replayed_to_other_links_from_its_single_workers_steps(tmp_path):
    """``predict`` and ``sweep --replay`` take an emulated trial's trace as its single workers' steps:
    replayed at its own link, it gives back its rows' times; on a slower link, longer ones."""
    from raybench import results
    from raybench.analysis import prediction

    import rows

    p, v, steps = 4, 4, 3
    spec = rows.trial(workers=[p], max_processes=1, network={"bandwidth_mbps": [1000], "latency_ms": [0.05]},
                      data={"train_images": p * 128 * steps})
    assert (spec.procs, spec.virtual) == (1, v)
    table = traces.to_table(1, [[_record((v - 1) * 1.0, **ONE) for _ in range(steps)]])
    link = Link(1000, 0.05)
    measured = float(sum(replay.step_times(replay.steps(table), link, p, link, p).seconds)) + 0.02
    (e,) = emulation.epoch_times(replay.steps(table), v, link, p, {1: measured})
    epoch = [r | {"source": results.SOURCE_EMULATED, "predicted_from": spec.trial_id}
             for r in rows.epoch_rows(spec, [0.3], epoch_seconds=e.epoch_seconds)]
    rows.write(tmp_path, spec, epoch)
    traces.write(traces.path(tmp_path, spec.trial_id), table)

    (m,), skipped = prediction.measured_trials(tmp_path)
    assert skipped == [] and m.spec.trial_id == spec.trial_id
    _, same = prediction.predict(m, link, p, "run")
    assert same[0]["epoch_seconds"] == pytest.approx(e.epoch_seconds)
    assert same[0]["epoch_seconds"] < measured - 2.9 * steps  # not the emulation's own 4 micro-batches per step
    spec_slow, slow = prediction.predict(m, SLOW, p, "run")
    assert slow[0]["epoch_seconds"] > e.epoch_seconds and slow[0]["source"] == results.SOURCE_PREDICTED
    assert slow[0]["predicted_from"] == spec.trial_id and spec_slow.processes is None


def test_an_emulated_trace_predicts_another_worker_count_with_that_counts_stragglers(tmp_path):
    """4 virtual workers on 1 process; each step's micro-batches take 0.1, 0.1, 0.1 and 0.5 s (timed
    one by one), a collective of no time, then 0.1 s of optimizer. At its own 4 workers a step
    waits for the slowest of 4 draws; predicted at 1 worker, for one draw (the mean, 0.2 s) over 4
    times the steps; not the 4-worker straggler, which the trial's own rows hold."""
    from raybench import results
    from raybench.analysis import prediction

    import rows

    p, v, steps, bs = 4, 4, 3, 128
    spec = rows.trial(workers=[p], max_processes=1, data={"train_images": p * bs * steps})
    record = _record(0.0, handover=[0.8], real_done=[0.8], release=[0.8], backward=0.8, end=0.9,
                     nbytes=(400_000,)) | {"micro": [0.1, 0.2, 0.3]}
    table = traces.to_table(1, [[record] * steps])
    straggler = 0.5 * (1 - 0.75 ** p) + 0.1 * 0.75 ** p
    (e,) = emulation.epoch_times(replay.steps(table), v, Link(), p, {})
    assert e.epoch_seconds == pytest.approx(steps * (straggler + 0.1))  # its own rows: no time outside steps
    epoch = [r | {"source": results.SOURCE_EMULATED, "predicted_from": spec.trial_id}
             for r in rows.epoch_rows(spec, [0.3], epoch_seconds=e.epoch_seconds)]
    rows.write(tmp_path, spec, epoch)
    traces.write(traces.path(tmp_path, spec.trial_id), table)

    (m,), _ = prediction.measured_trials(tmp_path)
    assert prediction.predict(m, Link(), p, "run")[1][0]["epoch_seconds"] == pytest.approx(e.epoch_seconds)
    one = prediction.predict(m, Link(), 1, "run")[1][0]
    assert one["epoch_seconds"] == pytest.approx(p * steps * (0.2 + 0.1))
