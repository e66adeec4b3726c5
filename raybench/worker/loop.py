"""The per-worker loop: synchronous data-parallel SGD with PyTorch DDP, one row reported per epoch.

Plain PyTorch, no Ray: ``driver.train.train_worker`` hands this module a trial, a data set and a
``report`` callable. Each epoch: train on this rank's shard, agree on the epoch's times (the
slowest rank's), evaluate the rank-average model (``evaluation``) on this rank's share of the
test set, sum the counts over ranks, report the row with a checkpoint of exactly that model.
``epoch_seconds`` covers the training steps only (data, forward, backward with communication,
optimizer), not evaluation or checkpointing. During training, batch-norm statistics stay per
worker (``forward_sync_buffers=False``), as in MLBench's reference.

A process may run several virtual workers in turn (``Worker.virtual``, ``worker.virtual``): each
step then goes forward and backward over each one's micro-batch before the one optimizer step,
and evaluation averages over all of them; with one (the default) it is the plain loop. The rows of
such a run are ``emulated``: their time columns (and the time budget) are the replay of the
epoch's own trace at the trial's workers (``raybench.emulation``), worked out on rank 0.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import torch
import torch.distributed as dist

from raybench import emulation, replay, traces
from raybench.results import SOURCE_EMULATED, SOURCE_MEASURED, EpochRow
from raybench.spec.config import TrialSpec
from raybench.worker import checkpoint
from raybench.worker import data as cifar
from raybench.worker.comm.link import Link
from raybench.worker.evaluation import consensus_model, evaluate
from raybench.worker.setup import Setup, Worker, device_name, prepare

Report = Callable[[EpochRow, Path | None, pa.Table | None], None]  # row, checkpoint folder, trace (rank 0)
Clock = Callable[[], float]


def _over_ranks(values: list[float], worker: Worker, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> list[float]:
    """``values`` reduced over ranks (sum, or max for times); every rank gets the same list."""
    t = torch.tensor(values, dtype=torch.float64, device=worker.device)  # NCCL reduces device tensors only
    if worker.world > 1:
        dist.all_reduce(t, op=op)
    return t.tolist()


def _emulated_times(trace: pa.Table | None, s: Setup, epoch: int, measured: float) -> list[float]:
    """An emulated epoch's time columns (epoch, comm, delay, hold seconds) at the trial's workers,
    from the epoch's trace on rank 0, sent to every rank."""
    values = [0.0] * 4
    if trace is not None:
        t = s.trial
        link = Link(t.bandwidth_mbps, t.latency_ms, t.link_overhead_ms)
        (e,) = emulation.epoch_times(replay.steps(trace), s.worker.virtual, link, t.workers, {epoch: measured})
        values = [e.epoch_seconds, e.comm_seconds, e.simulated_delay_seconds, e.simulated_hold_seconds]
    return _over_ranks(values, s.worker)  # only rank 0's are non-zero


def train_epoch(s: Setup, epoch: int, budget_left: float | None = None,
                clock: Clock = time.perf_counter) -> dict[str, float]:
    """One epoch over this rank's shard (its virtual workers' shards). Returns this rank's sums and
    the epoch's wall time.

    With ``budget_left`` (seconds), the epoch stops after the step during which the budget ran
    out on the slowest rank's clock (``cut`` in the result): one max-all-reduce of one float per
    step, so callers pass it only for epochs in which the budget can run out.
    """
    # ---------------------------------------------------------------- this epoch's shard and streams
    trial, worker, ds, ddp, opt, sched = s.trial, s.worker, s.ds, s.ddp, s.opt, s.sched
    ddp.train()
    bs = trial.schedule.batch_per_worker
    streams = s.vw.streams(len(ds.train_y), trial.seed, epoch, worker.device)  # [virtual] one per worker run here
    loss_sum = torch.zeros((), device=worker.device)
    correct = torch.zeros((), device=worker.device, dtype=torch.long)
    s.comm.take_stats()
    cuda = worker.device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    autocast = torch.autocast(worker.device.type, dtype=torch.bfloat16, enabled=trial.precision == "bf16")

    # ---------------------------------------------------------------- timed: the training steps only
    if worker.world > 1:
        dist.barrier()
    if cuda:  # one clock for every column: the host's, with the device drained at both ends
        torch.cuda.synchronize(worker.device)
    t0 = clock()
    done, cut, lr = 0, False, opt.param_groups[0]["lr"]
    for step in range(len(streams[0][0]) // bs):
        if budget_left is not None and step > 0 and _over_ranks([clock() - t0], worker, dist.ReduceOp.MAX)[0] \
                >= budget_left:
            cut = True  # every rank got the same answer from the same number
            break
        s.comm.begin_step()  # [trace] the step starts: data, forward, backward, optimizer
        opt.zero_grad(set_to_none=True)
        step_loss, step_correct = s.vw.forward_backward(  # [virtual] on a CPU the trace times each micro-batch
            ddp, ds, streams, step, bs, autocast, fmt, mark=None if cuda else s.comm.micro_done)
        s.comm.end_backward()  # [trace] after the last micro-batch's backward
        opt.step()
        s.comm.after_step(ddp.module)  # [comm] close the step's timing; local SGD averages here
        lr = opt.param_groups[0]["lr"]  # the lr this step used, before the schedule moves on
        sched.step()
        loss_sum += step_loss
        correct += step_correct
        done += 1
    if cuda:
        torch.cuda.synchronize(worker.device)
    seconds = clock() - t0

    comm = s.comm.take_stats()
    return {"seconds": seconds, "images": done * bs * len(streams), "loss_sum": float(loss_sum),
            "correct": int(correct),
            "comm_seconds": comm.comm_seconds, "simulated_delay_seconds": comm.simulated_delay_seconds,
            "simulated_hold_seconds": comm.simulated_hold_seconds, "cut": cut, "lr": lr,
            "trace": s.comm.take_trace(time.perf_counter())}


def _gather_trace(trace: list, worker: Worker, epoch: int) -> pa.Table | None:
    """Every rank's step records of the epoch, as one trace table on rank 0 (None elsewhere)."""
    every = [trace] if worker.world == 1 else [None] * worker.world
    if worker.world > 1:
        dist.gather_object(trace, every if worker.rank == 0 else None, dst=0)
    return traces.to_table(epoch, every) if worker.rank == 0 else None


def _rank_state(s: Setup) -> dict:
    """What this rank alone holds and an exact restart needs (see ``checkpoint``)."""
    own = {"buffers": {n: b for n, b in s.ddp.module.named_buffers()}, "comm": s.comm.state_dict(),
           "torch_rng": torch.get_rng_state(), "virtual": s.vw.state_dict()}  # [virtual] their buffers
    if s.trial.algorithm == "localsgd":  # weights and momentum drift apart between averaging events
        own |= {"model": s.ddp.module.state_dict(), "optimizer": s.opt.state_dict()}
    return checkpoint.to_cpu(own)


def _save(s: Setup, evaluated: torch.nn.Module, folder: Path | None, epoch: int, train_seconds: float) -> None:
    """Every rank sends its own state to rank 0, which writes the checkpoint into ``folder``."""
    mine = _rank_state(s)
    ranks = [mine] if s.worker.world == 1 else [None] * s.worker.world
    if s.worker.world > 1:
        dist.gather_object(mine, ranks if s.worker.rank == 0 else None, dst=0)
    if folder is not None:
        checkpoint.save(folder, model=evaluated.state_dict(), optimizer=s.opt.state_dict(),
                        scheduler=s.sched.state_dict(), trial=s.trial, epoch=epoch, train_seconds=train_seconds,
                        ranks=ranks)


def run(trial: TrialSpec, worker: Worker, ds: cifar.Cifar10, run_id: str, report: Report,
        restore: Path | None = None, clock: Clock = time.perf_counter) -> None:
    """Train the trial on this worker, calling ``report(row, checkpoint_dir)`` after every epoch
    (the checkpoint folder on rank 0, None elsewhere). Every decision (budget, target) is taken
    from numbers all ranks agree on, so all ranks leave the loop at the same step."""
    s = prepare(trial, worker, ds, restore)
    name = device_name(worker.device)
    budget, last_epoch_seconds, train_seconds = trial.goal.time_budget_s, None, s.train_seconds
    emulated = worker.virtual > 1  # [virtual] times replayed at trial.workers; the budget is checked per epoch

    for epoch in range(s.start_epoch, trial.schedule.epochs + 1):
        # ---------------------------------------------------------------- train; agree on the times
        budget_left = None
        if budget is not None and not emulated and (last_epoch_seconds is None
                                                    or train_seconds + 1.5 * last_epoch_seconds >= budget):
            budget_left = budget - train_seconds
        tr = train_epoch(s, epoch, budget_left, clock)
        epoch_seconds, comm_seconds, delay_seconds, hold_seconds = _over_ranks(
            [tr["seconds"], tr["comm_seconds"], tr["simulated_delay_seconds"], tr["simulated_hold_seconds"]], worker,
            dist.ReduceOp.MAX)
        trace = _gather_trace(tr["trace"], worker, epoch)
        if emulated:  # [virtual]
            epoch_seconds, comm_seconds, delay_seconds, hold_seconds = _emulated_times(trace, s, epoch, epoch_seconds)
        last_epoch_seconds = epoch_seconds
        train_seconds += epoch_seconds

        # ---------------------------------------------------------------- evaluate the one model
        t_eval = clock()
        evaluated = consensus_model(s.ddp.module, worker.world, average_weights=trial.algorithm == "localsgd",
                                    local=s.vw.buffers)  # [virtual] the average over every virtual worker
        test_loss, test_correct, test_n = evaluate(evaluated, s.ds, worker.rank, worker.world, worker.device)
        loss_sum, correct, images, te_loss, te_correct, te_n = _over_ranks(
            [tr["loss_sum"], tr["correct"], tr["images"], test_loss, test_correct, test_n], worker)
        (eval_seconds,) = _over_ranks([clock() - t_eval], worker, dist.ReduceOp.MAX)

        # ---------------------------------------------------------------- the row and the checkpoint
        row = EpochRow(
            sweep=trial.sweep, run_id=run_id, trial_id=trial.trial_id, model=trial.model_name,
            source=SOURCE_EMULATED if emulated else SOURCE_MEASURED,
            predicted_from=trial.trial_id if emulated else None,  # [virtual] the trace its times come from
            depth=trial.depth, version=trial.version, algorithm=trial.algorithm,
            hardware=trial.hardware, device_name=name, workers=trial.workers,
            cpus_per_worker=trial.cpus_per_worker, precision=trial.precision,
            bandwidth_mbps=trial.bandwidth_mbps, latency_ms=trial.latency_ms,
            batch_per_worker=trial.schedule.batch_per_worker, global_batch=trial.global_batch, lr=tr["lr"],
            seed=trial.seed, epoch=epoch, train_seconds=train_seconds, epoch_seconds=epoch_seconds,
            eval_seconds=eval_seconds, compute_seconds=max(0.0, epoch_seconds - comm_seconds),
            comm_seconds=comm_seconds, simulated_delay_seconds=delay_seconds, simulated_hold_seconds=hold_seconds,
            images_per_second=images / epoch_seconds, train_loss=loss_sum / images,
            train_top1=correct / images, test_loss=te_loss / te_n, test_top1=te_correct / te_n,
            budget_cut=tr["cut"], timestamp=datetime.now(UTC),
        )
        with checkpoint.scratch() as tmp:
            folder = Path(tmp) if worker.rank == 0 else None
            _save(s, evaluated, folder, epoch, train_seconds)
            report(row, folder, trace)
        if tr["cut"] or (budget is not None and train_seconds >= budget):
            break  # the time budget is spent
        if trial.goal.stop_at_target and row.test_top1 >= trial.goal.target_top1:
            break
