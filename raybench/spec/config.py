"""The sweep file: typed, validated once, expanded into one TrialSpec per grid point.

Everything a trial needs travels in its TrialSpec; nothing downstream re-reads the YAML. Errors
name the file, the field, the value and what is allowed (``ConfigError``), before Ray starts.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from raybench.models import ARCHS, model_name
from raybench.spec import yamlfile
from raybench.spec.profile import LinkProfile, ProfileError, read_profile
from raybench.spec.virtual import CIFAR10_TRAIN_IMAGES, largest_divisor
from raybench.spec.yamlfile import shown
from raybench.worker.comm import ALGORITHMS

SWEEPS_DIR = Path(__file__).resolve().parent.parent.parent / "sweeps"
UNLIMITED = "unlimited"
MAX_PROBLEMS = 10  # an error message lists at most this many problems of a sweep file

# --smoke: what a smoke run shrinks every trial to.
SMOKE_TRAIN_IMAGES = 512
SMOKE_TEST_IMAGES = 256
SMOKE_EPOCHS = 2
SMOKE_MAX_WORKERS = 2  # real workers; with max_processes set, processes (the workers stay, as virtual ones)


class ConfigError(ValueError):
    """Bad input: the message names where, what was given and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


PosInt = Annotated[int, Field(strict=True, ge=1)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _listify(v: Any) -> Any:
    """A scalar in a grid field means a one-point grid."""
    return v if isinstance(v, list) else [v]


def _unique(v: list[Any]) -> list[Any]:
    dups = sorted({str(x) for x in v if v.count(x) > 1})
    if dups:
        raise ValueError(f"{', '.join(dups)} listed more than once; every grid value must be unique")
    return v


def _gpu_share(v: Any) -> Any:
    """gpus_per_worker: a share of one GPU (0 < v <= 1: workers share it, over gloo) or whole GPUs."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < float("inf")
    if not ok or (v > 1 and v != int(v)):
        raise ValueError("allowed: a share of one GPU greater than 0 and at most 1 (0.5: two workers share a "
                         "GPU), or a whole number of GPUs (1, 2, ...)")
    return float(v)


def _bandwidth(v: Any) -> Any:
    if v == UNLIMITED:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
        raise ValueError("allowed: a number of Mbit/s greater than 0, or 'unlimited'")
    return float(v)


def _one_of(values: tuple[Any, ...]) -> str:
    """'20, 32, 44 or 56', as pydantic words a Literal's choices."""
    shown = [repr(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _fits_arch(v: Any, info: ValidationInfo) -> Any:
    """A depth or version must be one that model.arch has (arch is validated first: it comes first)."""
    arch = info.data.get("arch")
    if arch not in ARCHS:
        return v  # the arch itself is wrong; that error is reported
    which = "depths" if info.field_name == "depth" else "versions"
    allowed = getattr(ARCHS[arch], which)
    if v not in allowed:
        hint = "" if arch == "resnet" else f" with arch {arch!r}"
        others = [a for a, entry in ARCHS.items() if v in getattr(entry, which)]
        elsewhere = f"; {v!r} is a {info.field_name} of arch {others[0]!r}" if others else ""
        raise ValueError(f"allowed{hint}: {_one_of(allowed)}{elsewhere}")
    return v


class ModelGrid(_Strict):
    arch: Literal[tuple(ARCHS)] = "resnet"  # type: ignore[valid-type]
    depth: Annotated[list[Annotated[int, Field(strict=True), AfterValidator(_fits_arch)]], Field(min_length=1)] = [20]
    version: Annotated[list[Annotated[str, AfterValidator(_fits_arch)]], Field(min_length=1)] = ["v1"]

    _grid = field_validator("depth", "version", mode="before")(_listify)
    _uniq = field_validator("depth", "version")(_unique)

    @model_validator(mode="before")
    @classmethod
    def _arch_defaults(cls, data: Any) -> Any:
        """An omitted depth or version defaults to the arch's first (resnet: 20, v1; resnet9: 9, v1)."""
        arch = data.get("arch", "resnet") if isinstance(data, dict) else None
        if isinstance(arch, str) and arch in ARCHS:
            data = {"depth": [ARCHS[arch].depths[0]], "version": [ARCHS[arch].versions[0]]} | data
        return data


Bandwidth = Annotated[float | str, BeforeValidator(_bandwidth)]


class NetworkGrid(_Strict):
    bandwidth_mbps: Annotated[list[Bandwidth], Field(min_length=1)] = [UNLIMITED]
    latency_ms: Annotated[list[NonNegFloat], Field(min_length=1)] = [0.0]
    profile: Annotated[str, Field(strict=True, min_length=1)] | None = None  # a calibrated link (spec.profile)

    _grid = field_validator("bandwidth_mbps", "latency_ms", mode="before")(_listify)
    _uniq = field_validator("bandwidth_mbps", "latency_ms")(_unique)

    @field_validator("profile")
    @classmethod
    def _alone(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A profile sets bandwidth, latency and overhead: the grid's own lists must be absent (or the default)."""
        for field, default in (("bandwidth_mbps", [UNLIMITED]), ("latency_ms", [0.0])):
            given = info.data.get(field, default)
            if v is not None and given != default:
                raise ValueError(f"network.{field} {shown(given)} cannot be combined with a profile, which sets "
                                 f"bandwidth, latency and overhead; remove network.{field} or network.profile")
        return v


class Schedule(_Strict):
    """MLBench closed-division SGD schedule; lr scales with the global batch (see schedule.py)."""

    batch_per_worker: PosInt = 128
    lr_per_256: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.1
    warmup_epochs: Annotated[int, Field(strict=True, ge=0)] = 5
    milestones: list[PosInt] = [82, 109]
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    epochs: PosInt = 164
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True
    weight_decay: NonNegFloat = 1e-4

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("must be strictly increasing")
        return v


class Goal(_Strict):
    target_top1: Annotated[float, Field(gt=0, le=1)] = 0.80
    time_budget_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = 7200.0
    stop_at_target: bool = False


class PowerSGDOptions(_Strict):
    """torch's PowerSGD: rank of the approximation, plain all-reduce steps before it starts."""

    rank: PosInt = 2
    start_iter: Annotated[int, Field(strict=True, ge=2)] = 10  # torch needs >= 2 with warm start/error feedback
    warm_start: bool = True
    min_compression_rate: Annotated[float, Field(gt=0)] = 2.0


class LocalSGDOptions(_Strict):
    """Post-local SGD: synchronous for warmup_steps, then parameters averaged every period steps."""

    warmup_steps: Annotated[int, Field(strict=True, ge=0)] = 100
    period: PosInt = 8


class DataSubset(_Strict):
    """How much of CIFAR-10 a trial uses (None = all of it): for quick runs and tests."""

    train_images: PosInt | None = None
    test_images: PosInt | None = None


class SweepSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
    model: ModelGrid = ModelGrid()
    workers: Annotated[list[PosInt], Field(min_length=1)] = [1]
    max_processes: PosInt | None = None  # [virtual] above this, workers run as virtual workers; null: never
    hardware: Annotated[list[Literal["cpu", "gpu"]], Field(min_length=1)] = ["cpu"]
    cpus_per_worker: PosInt = 1
    gpus_per_worker: Annotated[float, BeforeValidator(_gpu_share)] = 1.0  # hardware gpu only
    accelerator_type: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    precision: Annotated[list[Literal["fp32", "bf16"]], Field(min_length=1)] = ["fp32"]
    network: NetworkGrid = NetworkGrid()
    algorithm: Annotated[list[Literal[tuple(ALGORITHMS)]], Field(min_length=1)] = ["allreduce"]  # type: ignore
    powersgd: PowerSGDOptions = PowerSGDOptions()
    localsgd: LocalSGDOptions = LocalSGDOptions()
    schedule: Schedule = Schedule()
    goal: Goal = Goal()
    seed: Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(min_length=1)] = [0]
    data: DataSubset = DataSubset()

    _grid = field_validator("workers", "hardware", "algorithm", "seed", "precision", mode="before")(_listify)
    _uniq = field_validator("workers", "hardware", "algorithm", "seed", "precision")(_unique)


class TrialSpec(_Strict):
    """One grid point: everything a trial needs, JSON-serialisable (it is the Tune config)."""

    sweep: str
    trial_id: str
    arch: str
    depth: int
    version: str
    workers: int
    processes: int | None = None  # [virtual] processes running the workers (a divisor); None: one per worker
    hardware: str
    cpus_per_worker: int
    gpus_per_worker: float = 1.0  # GPUs per worker on a gpu trial; below 1, workers share a GPU (gloo)
    accelerator_type: str | None = None
    precision: str = "fp32"
    bandwidth_mbps: float | None  # None = unlimited
    latency_ms: float
    link_overhead_ms: float = 0.0  # fixed cost per collective, from a calibrated profile (network.profile)
    link_profile: str | None = None  # the profile's name (its file's stem), in the trial id; None: the grid's link
    link_handshake_trips: float = 0.0  # the profile's handshake trips per ring step (in link_overhead_ms)
    algorithm: str
    powersgd: PowerSGDOptions = PowerSGDOptions()
    localsgd: LocalSGDOptions = LocalSGDOptions()
    seed: int
    schedule: Schedule
    goal: Goal
    data: DataSubset

    @property
    def model_name(self) -> str:
        """resnet20_v1; an arch with a single depth and version is its own name (resnet9)."""
        return model_name(self.arch, self.depth, self.version)

    @property
    def global_batch(self) -> int:
        return self.schedule.batch_per_worker * self.workers

    @property
    def procs(self) -> int:  # [virtual] the processes (Ray Train workers) that run the trial
        return self.processes or self.workers

    @property
    def virtual(self) -> int:  # [virtual] virtual workers per process: 1 for a real run
        return self.workers // self.procs

    @property
    def train_images(self) -> int:  # the training set's size
        return self.data.train_images or CIFAR10_TRAIN_IMAGES


def _trial_id(arch: str, depth: int, version: str, workers: int, hardware: str, bw: float | None, lat: float,
              algorithm: str, seed: int, precision: str = "fp32", profile: str | None = None) -> str:
    bw_s = "inf" if bw is None else f"{bw:g}"
    model = model_name(arch, depth, version, sep="")
    prec = "" if precision == "fp32" else f"_{precision}"
    link = f"link-{profile}" if profile else f"bw{bw_s}_lat{lat:g}"
    return f"{model}_w{workers}_{hardware}{prec}_{link}_{algorithm}_s{seed}"


def _profile(spec: SweepSpec, source: str) -> LinkProfile | None:
    if spec.network.profile is None:
        return None
    try:
        return read_profile(spec.network.profile)
    except ProfileError as e:
        raise ConfigError(f"{source}: field 'network.profile': {e}") from None


def expand(spec: SweepSpec) -> list[TrialSpec]:
    """The grid: every combination of the list-valued fields is one trial, in a stable order. With
    ``network.profile``, every trial takes the profile's bandwidth, latency and overhead."""
    prof = _profile(spec, spec.name)
    bandwidths = [prof.bandwidth_mbps or UNLIMITED] if prof else spec.network.bandwidth_mbps
    latencies = [prof.latency_ms] if prof else spec.network.latency_ms
    trials = []
    for depth, version, workers, hardware, precision, bw, lat, algorithm, seed in itertools.product(
        spec.model.depth, spec.model.version, spec.workers, spec.hardware, spec.precision,
        bandwidths, latencies, spec.algorithm, spec.seed,
    ):
        bw_value = None if bw == UNLIMITED else float(bw)
        trials.append(TrialSpec(
            sweep=spec.name,
            trial_id=_trial_id(spec.model.arch, depth, version, workers, hardware, bw_value, lat, algorithm, seed,
                               precision, prof and prof.name),
            link_overhead_ms=prof.overhead_at(workers) if prof else 0.0, link_profile=prof and prof.name,
            link_handshake_trips=prof.handshake_trips if prof else 0.0,
            arch=spec.model.arch, depth=depth, version=version, workers=workers, hardware=hardware,
            processes=None if spec.max_processes is None else largest_divisor(workers, spec.max_processes),
            cpus_per_worker=spec.cpus_per_worker, gpus_per_worker=spec.gpus_per_worker,
            accelerator_type=spec.accelerator_type, precision=precision,
            bandwidth_mbps=bw_value, latency_ms=float(lat),
            algorithm=algorithm, powersgd=spec.powersgd, localsgd=spec.localsgd, seed=seed, schedule=spec.schedule,
            goal=spec.goal, data=spec.data,
        ))
    return trials


def smoke(trials: list[TrialSpec]) -> list[TrialSpec]:
    """--smoke: at most 2 CPU workers (more are clamped to 2; with ``max_processes``, the workers stay
    and run on at most 2 processes, every trial's batch shrunk so the most workers' step fits 512
    images, at least 1), a few hundred images, at most 2 epochs, PowerSGD and local SGD from step 2."""
    out: dict[str, TrialSpec] = {}
    most = max([t.workers for t in trials if t.processes is not None] or [1])  # [virtual] one batch for all
    for t in trials:
        emulate = t.processes is not None  # [virtual]
        workers = t.workers if emulate else min(t.workers, SMOKE_MAX_WORKERS)
        batch = max(1, min(t.schedule.batch_per_worker, 64, SMOKE_TRAIN_IMAGES // (most if emulate else workers)))
        sched = t.schedule.model_copy(update={
            "epochs": min(t.schedule.epochs, SMOKE_EPOCHS),
            "warmup_epochs": min(t.schedule.warmup_epochs, 1),
            "batch_per_worker": batch,
        })
        train = max(min(t.data.train_images or SMOKE_TRAIN_IMAGES, SMOKE_TRAIN_IMAGES), workers * batch)
        data = DataSubset(train_images=train,
                          test_images=min(t.data.test_images or SMOKE_TEST_IMAGES, SMOKE_TEST_IMAGES))
        trial_id = _trial_id(t.arch, t.depth, t.version, workers, "cpu", t.bandwidth_mbps, t.latency_ms, t.algorithm,
                             t.seed, t.precision, t.link_profile)
        # a profile's handshake trips are per ring step: fewer workers, fewer steps
        overhead = t.link_overhead_ms - 2 * (t.workers - workers) * t.link_handshake_trips * t.latency_ms
        powersgd = t.powersgd.model_copy(update={"start_iter": min(t.powersgd.start_iter, 2)})
        localsgd = t.localsgd.model_copy(update={"warmup_steps": min(t.localsgd.warmup_steps, 2),
                                                 "period": min(t.localsgd.period, 2)})
        out.setdefault(trial_id, t.model_copy(update={
            "workers": workers, "hardware": "cpu", "cpus_per_worker": 1, "accelerator_type": None,
            "processes": largest_divisor(workers, min(t.processes, SMOKE_MAX_WORKERS)) if emulate else None,
            "schedule": sched, "data": data, "link_overhead_ms": overhead,
            "powersgd": powersgd, "localsgd": localsgd, "trial_id": trial_id}))
    return list(out.values())


def _describe(err: dict[str, Any]) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    given = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"field {loc!r}: unknown key (value {shown(given)}); remove it or fix its spelling"
    if err["type"] == "missing":
        return f"field {loc!r}: required but missing"
    allowed = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        allowed = f"allowed: {ctx['expected']}"
    return f"field {loc!r}: value {shown(given)} is not allowed ({allowed})"


def resolve(name_or_path: str) -> Path:
    """A sweep name (a file in sweeps/) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"sweep file {str(p)!r} not found")
        return p
    candidate = SWEEPS_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(f.stem for f in SWEEPS_DIR.glob("*.yaml"))
    raise ConfigError(f"sweep {name_or_path!r} not found: give a YAML path or one of {', '.join(known)}")


def load(name_or_path: str) -> SweepSpec:
    """Read and validate a sweep file (safe YAML, no aliases, no key twice; nothing in it is executed)."""
    path = resolve(name_or_path)
    raw = yamlfile.read_file(path, ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got "
                          f"{'an empty file' if raw is None else type(raw).__name__}")
    spec = parse(raw, source=str(path))
    if spec.network.profile is None:
        return spec
    # a relative profile path is relative to the sweep file; checked now, before Ray starts
    where = (path.parent / spec.network.profile).resolve()
    spec = spec.model_copy(update={"network": spec.network.model_copy(update={"profile": str(where)})})
    _profile(spec, str(path))
    return spec


def parse(raw: dict[str, Any], source: str = "<sweep>") -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        problems = "; ".join(_describe(err) for err in errors[:MAX_PROBLEMS])
        more = f"; and {len(errors) - MAX_PROBLEMS:,} more" if len(errors) > MAX_PROBLEMS else ""
        raise ConfigError(f"{source}: {problems}{more}") from None
