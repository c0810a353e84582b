"""``SlurmConfig``: the settings of Slurm runs, checked before anything is submitted."""

from __future__ import annotations

import builtins
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from ..._loading import quote
from ...capabilities import Availability
from ...config import BackendConfig
from ...job import parse_memory

if TYPE_CHECKING:
    from .backend import SlurmBackend
    from .handle import SlurmRunHandle

CAPABILITIES = frozenset(
    {
        "detached",
        "reattach",
        "find",
        "cancel",
        "logs_follow",
        "commands",
        "calls",
        "timeout",
        "gpus",
        "arrays",
        "cluster",
    }
)

_TIME = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]?\d):([0-5]?\d)$")
_MEM = re.compile(r"^(\d+)([KMGT]?)$", re.IGNORECASE)
_WORD = re.compile(r"^[A-Za-z0-9_.:,|&()\[\]*+=@/-]+$")
_OPTION = re.compile(r"^(--[a-z][a-z0-9-]*(?:[= ].*)?|-[A-Za-z](?: .*)?)$")
#: sbatch options tether sets itself for every run: never in extra_sbatch.
_OWN_OPTIONS = frozenset(
    {
        "--job-name",
        "-J",
        "--output",
        "-o",
        "--error",
        "-e",
        "--array",
        "-a",
        "--parsable",
        "--chdir",
        "-D",
        "--wrap",
        "--export",
        "--time",
        "-t",
    }
)


def time_seconds(text: str) -> int:
    """Seconds of a Slurm "[D-]HH:MM:SS" time limit."""
    match = _TIME.match(text.strip())
    if match is None:
        raise ValueError(f"time_limit {quote(text)} is not '[D-]HH:MM:SS' (e.g. '2:00:00')")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def time_text(seconds: float) -> str:
    """``--time`` for a limit of at least ``seconds``, in whole minutes ("[D-]HH:MM:SS")."""
    minutes = max(1, math.ceil(seconds / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:00"
    return f"{days}-{clock}" if days else clock


def slurm_memory(value: str) -> str:
    """A job's ``resources.memory`` ("512m", "2g", bytes) as sbatch's ``--mem`` (megabytes)."""
    return f"{max(1, math.ceil(parse_memory(value) / 1024**2))}M"


def option_name(line: str) -> str:
    """The option an ``extra_sbatch`` line sets: ``--mail-type``, ``-N``."""
    return re.split(r"[= ]", line, maxsplit=1)[0]


_EXAMPLES: list[dict[str, Any]] = [
    {"type": "slurm", "queue": "gpu", "nodes": 2, "time_limit": "2:00:00", "timeout": 7200},
    {
        "type": "slurm",
        "partition": "debug",
        "cpus_per_task": 4,
        "mem": "4G",
        "account": "ocean",
        "exclusive": False,
        "extra_sbatch": ["--mail-type=END"],
    },
]


def _schema_extra(schema: JsonDict) -> None:
    """The examples, and ``queue`` listed as the other name of ``partition``."""
    schema["examples"] = _EXAMPLES  # type: ignore[assignment]
    properties = schema.get("properties")
    if isinstance(properties, dict) and isinstance(properties.get("partition"), dict):
        queue = dict(properties["partition"])  # type: ignore[arg-type]
        queue["description"] = "The partition's other name (rompy's): give one of the two."
        queue["title"] = "Queue"
        properties["queue"] = queue


class SlurmConfig(BackendConfig):
    """Run jobs as Slurm batch jobs (rompy's ``SlurmConfig``): detached, re-attached by job id."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra=_schema_extra,
    )

    type: Literal["slurm"] = Field(
        "slurm", description="Selects this backend in config files.", examples=["slurm"]
    )
    partition: str | None = Field(
        None,
        validation_alias=AliasChoices("partition", "queue"),
        description="Partition (queue) to submit to; 'queue' is accepted as its name too. "
        "None: the cluster's default partition.",
        examples=["debug"],
    )
    nodes: int = Field(1, ge=1, le=100, description="Nodes per run (1-100).", examples=[1])
    ntasks: int | None = Field(
        None, ge=1, description="Tasks (MPI ranks) per run; None: Slurm's default.", examples=[4]
    )
    cpus_per_task: int | None = Field(
        None,
        ge=1,
        description="CPUs per task; a job's resources.cpus wins. None: Slurm's default.",
        examples=[4],
    )
    mem: str | None = Field(
        None,
        description='Memory per node, as sbatch reads it: a number with K, M, G or T ("4G", '
        "\"500M\"); a job's resources.memory wins. None: Slurm's default.",
        examples=["4G"],
    )
    gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs per run (--gpus); a job's resources.gpus wins.",
        examples=[1],
    )
    time_limit: str | None = Field(
        None,
        description="Slurm's time limit '[D-]HH:MM:SS'. None: derived from the run's "
        "timeout (the job's walltime or the base timeout) plus the cancel grace.",
        examples=["2:00:00"],
    )
    account: str | None = Field(None, description="Account to charge.", examples=["ocean"])
    qos: str | None = Field(None, description="Quality of service.", examples=["normal"])
    constraint: str | None = Field(
        None, description="Node features required (--constraint).", examples=["skylake"]
    )
    exclusive: bool = Field(
        False, description="Ask for whole nodes (--exclusive).", examples=[False]
    )
    extra_sbatch: list[str] = Field(
        default_factory=list,
        description="Further sbatch options, one per item, as '--name[=value]' (a leading "
        "'#SBATCH ' is allowed). Options tether sets itself (job name, output, array, "
        "time) are refused.",
        examples=[["--mail-type=END", "--reservation=maint"]],
    )
    shell: bool = Field(
        True,
        description="Run a string command with /bin/sh -c on the node; False splits it into "
        "argv. A list command is always argv.",
        examples=[True],
    )
    python: str | None = Field(
        None,
        min_length=1,
        description="Python on the nodes, for tether's run supervisor and Call jobs; "
        "default: this process's interpreter (the nodes must see it and tether).",
        examples=["/opt/conda/bin/python"],
    )
    runs_dir: Path | None = Field(
        None,
        description="Folder for run folders, on a file system the nodes share; default "
        "$TETHER_HOME/runs (~/.local/state/tether/runs).",
        examples=["/shared/tether-runs"],
    )
    cancel_grace: float = Field(
        10.0,
        ge=0,
        le=600,
        description="Seconds between TERM and KILL when a run is cancelled or times out.",
        examples=[10.0],
    )
    poll_interval: float = Field(
        1.0,
        ge=0.2,
        le=60,
        description="Seconds between queue queries while something changes; the watcher "
        "backs off from here to poll_interval_max while nothing does.",
        examples=[1.0],
    )
    poll_interval_max: float = Field(
        30.0,
        ge=0.2,
        le=600,
        description="Longest pause between queue queries (the back-off's ceiling).",
        examples=[30.0],
    )
    lost_grace: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="Seconds a job may be gone from the queue without its outcome file "
        "(a shared file system can lag) before the run is LOST.",
        examples=[15.0],
    )
    max_submits: int = Field(
        8,
        ge=1,
        le=64,
        description="sbatch processes at once in this process; more submits wait their turn.",
        examples=[8],
    )

    capabilities: ClassVar[frozenset[str]] = CAPABILITIES
    preference: ClassVar[int] = 40  # another machine's queue: after local and docker
    cache_ignore: ClassVar[frozenset[str]] = frozenset(
        {
            "timeout",
            "runs_dir",
            "cancel_grace",
            "partition",
            "account",
            "qos",
            "time_limit",
            "exclusive",
            "poll_interval",
            "poll_interval_max",
            "lost_grace",
            "max_submits",
        }
    )

    @classmethod
    def availability(cls) -> Availability:
        """Usable when sbatch, squeue and scancel are on PATH and slurmctld answers."""
        return controller_availability()

    @classmethod
    def detected_capabilities(cls) -> frozenset[str]:
        """The capabilities, without ``gpus`` on a cluster whose nodes have no GPU (GRES)."""
        try:
            gres = subprocess.run(
                ["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=20, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return cls.capabilities
        return cls.capabilities if "gpu" in gres else cls.capabilities - {"gpus"}

    @model_validator(mode="before")
    @classmethod
    def _queue_or_partition(cls, data: Any) -> Any:
        if isinstance(data, dict) and "queue" in data and "partition" in data:
            queue, partition = data["queue"], data["partition"]
            if queue != partition:
                raise ValueError(
                    f"queue {quote(queue)} and partition {quote(partition)} are the same Slurm "
                    "setting (queue is its other name): keep one"
                )
            data = {k: v for k, v in data.items() if k != "queue"}
        return data

    @field_validator("partition", "account", "qos", "constraint")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        if value is not None and not _WORD.match(value):
            raise ValueError(
                f"{quote(value)} is not a Slurm name: use letters, digits and . _ - , : "
                "(no spaces or newlines)"
            )
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = str(value).strip()
        if not _MEM.match(text):
            raise ValueError(
                f"mem {quote(value)} is not a Slurm size: a number with K, M, G or T "
                "(e.g. '4G', '500M')"
            )
        return text.upper()

    @field_validator("time_limit")
    @classmethod
    def _time_limit(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if time_seconds(value) < 60:
            raise ValueError(f"time_limit {quote(value)} is under a minute, Slurm's smallest")
        return value.strip()

    @field_validator("extra_sbatch")
    @classmethod
    def _extra(cls, lines: list[str]) -> list[str]:
        clean: list[str] = []
        for raw in lines:
            line = raw.strip()
            if line.startswith("#SBATCH"):
                line = line[len("#SBATCH") :].strip()
            if "\n" in raw or "\r" in raw or not _OPTION.match(line):
                raise ValueError(
                    f"extra_sbatch line {quote(raw)} is not an sbatch option: write "
                    "'--name=value' (or '--flag', or '-X value'), one per line"
                )
            if option_name(line) in _OWN_OPTIONS:
                raise ValueError(
                    f"extra_sbatch line {quote(raw)} sets {option_name(line)}, which tether "
                    "sets itself for every run: use the config's fields (time_limit) or "
                    "drop the line"
                )
            clean.append(line)
        return clean

    @model_validator(mode="after")
    def _poll_range(self) -> SlurmConfig:
        if self.poll_interval_max < self.poll_interval:
            raise ValueError(
                f"poll_interval_max ({self.poll_interval_max:g}) is below poll_interval "
                f"({self.poll_interval:g}): raise it or lower poll_interval"
            )
        return self

    def create(self) -> SlurmBackend:
        """Return a :class:`SlurmBackend` with these settings."""
        from .backend import SlurmBackend

        return SlurmBackend(self)

    @classmethod
    def handle_class(cls) -> builtins.type[SlurmRunHandle]:
        """Saved Slurm runs load into :class:`SlurmRunHandle`."""
        from .handle import SlurmRunHandle

        return SlurmRunHandle


def controller_availability(partition: str | None = None) -> Availability:
    """Whether the Slurm commands are here and the controller (and ``partition``) answer."""
    for tool in ("sbatch", "squeue", "scancel"):
        if shutil.which(tool) is None:
            return Availability(False, f"{tool} not found on PATH (is this a Slurm login node?)")
    try:
        ping = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Availability(False, f"slurmctld not responding (scontrol ping: {exc})")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = (ping.stdout.strip() or ping.stderr.strip()).splitlines()
        return Availability(
            False, f"slurmctld not responding ({said[-1] if said else 'no answer'})"
        )
    if partition is not None:
        try:
            listed = subprocess.run(
                ["sinfo", "-h", "-o", "%R", "-p", partition],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return Availability(True)  # the controller answered; sinfo is only a courtesy
        if listed.returncode == 0 and not listed.stdout.strip():
            return Availability(False, f"partition {partition!r} does not exist on this cluster")
    return Availability(True)
