"""DockerConfig: rompy's fields, rules and messages, and the command a container runs.

Validation needs no engine. The command tests that run a container are marked
``docker`` and use the busybox test image; the ones that must fail before the
engine is contacted point ``docker_host`` at an address where nothing answers.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import tether
from tether import BackendUnavailableError, ConfigError, DockerConfig, Job, Resources, RunState

from .services import BUILT_IMAGE, IMPORTED_IMAGE

#: Nothing listens here: a test that reaches the engine gets BackendUnavailableError.
NO_ENGINE = "tcp://127.0.0.1:1"

# rompy's examples/configs/docker_backend.yml, with its volume host path a parameter.
ROMPY_DOCKER_YML = """\
# Docker Backend Configuration
# Configuration for executing models in Docker containers

type: docker
image: "python:3.9-slim"
timeout: 7200 # 2 hours
cpu: 4
memory: "2g"
executable: 'bash -c "echo ''Hello from Docker!''"'
mpiexec: ""
volumes:
    - "{host}:/tmp:rw"
env_vars:
    MODEL_THREADS: "4"
    DATA_DIR: "/app/data"
remove_container: true
user: "root"
"""


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A build context holding a Dockerfile and docker/Dockerfile."""
    folder = tmp_path / "ctx"
    (folder / "docker").mkdir(parents=True)
    (folder / "Dockerfile").write_text("FROM scratch\n")
    (folder / "docker" / "Dockerfile").write_text("FROM scratch\n")
    return folder


# -- image or dockerfile -------------------------------------------------------------


def test_image_or_dockerfile_is_required() -> None:
    with pytest.raises(ValidationError, match="Either 'image' or 'dockerfile' must be provided"):
        DockerConfig()


def test_image_and_dockerfile_together_are_rejected(context: Path) -> None:
    with pytest.raises(ValidationError, match="Cannot specify both 'image' and 'dockerfile'"):
        DockerConfig(image="swan:latest", dockerfile=Path("Dockerfile"), build_context=context)


def test_an_image_alone_needs_no_build_context() -> None:
    config = DockerConfig(image="swan:latest")
    assert (config.type, config.image, config.dockerfile, config.build_context) == (
        "docker",
        "swan:latest",
        None,
        None,
    )


# -- resources -----------------------------------------------------------------------


@pytest.mark.parametrize("cpu", [1, 128])
def test_cpu_limits_are_accepted(cpu: int) -> None:
    assert DockerConfig(image="x", cpu=cpu).cpu == cpu


@pytest.mark.parametrize(
    ("cpu", "message"),
    [(0, "greater than or equal to 1"), (129, "less than or equal to 128")],
)
def test_cpu_outside_1_to_128_is_rejected(cpu: int, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DockerConfig(image="x", cpu=cpu)


@pytest.mark.parametrize("memory", ["512m", "2g", "1024m", "6m"])
def test_memory_sizes_are_accepted(memory: str) -> None:
    assert DockerConfig(image="x", memory=memory).memory == memory


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ("2 gigs", r"memory '2 gigs' is not a size"),
        ("-1", r"memory '-1' is not a size"),
        ("1k", r"memory '1k' is below Docker's minimum of 6m"),
    ],
)
def test_bad_memory_is_rejected(memory: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DockerConfig(image="x", memory=memory)


# -- volumes -------------------------------------------------------------------------


def test_volume_without_colon_is_rejected() -> None:
    with pytest.raises(ValidationError, match="Volume mount must contain ':'"):
        DockerConfig(image="x", volumes=["/data"])


def test_volume_with_missing_host_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    with pytest.raises(ValidationError, match=re.escape(f"'{missing}' does not exist")):
        DockerConfig(image="x", volumes=[f"{missing}:/data"])


def test_volume_options_must_be_mount_options(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"option 'rx' is not a mount option \(valid: ro, rw"):
        DockerConfig(image="x", volumes=[f"{tmp_path}:/data:rx"])


@pytest.mark.parametrize(
    ("options", "normalised"),
    [
        ("Z", "rw,Z"),
        ("z", "rw,z"),
        ("ro,Z", "ro,Z"),
        ("rshared", "rw,rshared"),
        ("ro,rslave,z", "ro,rslave,z"),
        ("rw,nocopy", "rw,nocopy"),
        ("cached", "rw,cached"),
    ],
)
def test_volume_options_the_engine_accepts_are_accepted(
    tmp_path: Path, options: str, normalised: str
) -> None:
    """rompy's tests mount with SELinux labels and propagation options, as ``docker -v``."""
    config = DockerConfig(image="x", volumes=[f"{tmp_path}:/data:{options}"])
    assert config.volumes == [f"{tmp_path}:/data:{normalised}"]


@pytest.mark.parametrize("options", ["ro,rw", "z,Z", "shared,private", "ro,"])
def test_contradicting_or_empty_volume_options_are_refused(tmp_path: Path, options: str) -> None:
    with pytest.raises(ValidationError, match=r"contradict each other|is not a mount option"):
        DockerConfig(image="x", volumes=[f"{tmp_path}:/data:{options}"])


def test_image_and_dockerfile_together_is_the_error_whatever_files_exist(tmp_path: Path) -> None:
    """rompy's message, even when the dockerfile or its context does not exist."""
    for extra in ({}, {"build_context": str(tmp_path / "missing")}):
        with pytest.raises(ValidationError, match="Cannot specify both 'image' and 'dockerfile'"):
            DockerConfig(image="x", dockerfile="Nope.dockerfile", **extra)


def test_volume_container_path_must_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="absolute container path"):
        DockerConfig(image="x", volumes=[f"{tmp_path}:data"])


def test_volumes_get_an_absolute_host_path_and_default_mode_rw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "home" / "scratch").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = DockerConfig(image="x", volumes=["in:/data", "~/scratch:/scratch:ro"])
    root = tmp_path.resolve()
    assert config.volumes == [f"{root}/in:/data:rw", f"{root}/home/scratch:/scratch:ro"]


# -- build context and dockerfile ----------------------------------------------------


def test_build_context_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValidationError, match=re.escape(f"'{missing}' does not exist")):
        DockerConfig(dockerfile=Path("Dockerfile"), build_context=missing)


def test_build_context_must_be_a_directory(context: Path) -> None:
    afile = context / "Dockerfile"
    with pytest.raises(ValidationError, match=re.escape(f"'{afile}' is not a directory")):
        DockerConfig(dockerfile=Path("Dockerfile"), build_context=afile)


def test_dockerfile_is_found_relative_to_the_context(context: Path) -> None:
    config = DockerConfig(dockerfile=Path("docker/Dockerfile"), build_context=context)
    assert config.dockerfile == Path("docker/Dockerfile")
    assert config.build_context == context.resolve()


def test_dockerfile_missing_from_the_context_is_rejected(context: Path) -> None:
    with pytest.raises(ValidationError, match="'Containerfile' not found in build context"):
        DockerConfig(dockerfile=Path("Containerfile"), build_context=context)


def test_dockerfile_given_as_an_absolute_path_is_rejected(context: Path) -> None:
    absolute = context / "Dockerfile"
    with pytest.raises(ValidationError, match="must be given relative to build_context"):
        DockerConfig(dockerfile=absolute, build_context=context)


def test_dockerfile_outside_the_context_is_rejected(context: Path) -> None:
    (context.parent / "Dockerfile").write_text("FROM scratch\n")  # exists, but outside
    with pytest.raises(ValidationError, match=re.escape("'../Dockerfile' lies outside")):
        DockerConfig(dockerfile=Path("../Dockerfile"), build_context=context)


def test_build_context_defaults_to_the_current_folder(
    context: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(context)
    assert DockerConfig(dockerfile=Path("Dockerfile")).build_context == context.resolve()
    monkeypatch.chdir(context / "docker")
    with pytest.raises(ValidationError, match="'docker/Dockerfile' not found in build context"):
        DockerConfig(dockerfile=Path("docker/Dockerfile"))


def test_relative_build_context_is_made_absolute(
    context: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(context.parent)
    config = DockerConfig(dockerfile=Path("Dockerfile"), build_context=Path("ctx"))
    assert config.build_context == context.resolve()


# -- user, labels, engine address, mount point ---------------------------------------


def test_user_defaults_to_root_and_takes_uid_and_group() -> None:
    assert DockerConfig(image="x").user == "root"
    assert DockerConfig(image="x", user="1000:1000").user == "1000:1000"
    with pytest.raises(ValidationError, match="user 'a b' is not a user name or uid"):
        DockerConfig(image="x", user="a b")


def test_labels_may_not_use_tethers_prefix() -> None:
    assert DockerConfig(image="x", labels={"project": "swan"}).labels == {"project": "swan"}
    with pytest.raises(
        ValidationError, match=re.escape("'tether.run_id' uses the reserved prefix")
    ):
        DockerConfig(image="x", labels={"project": "swan", "tether.run_id": "forged"})


def test_docker_host_needs_a_scheme() -> None:
    assert DockerConfig(image="x", docker_host="tcp://h:2375").docker_host == "tcp://h:2375"
    with pytest.raises(ValidationError, match="'localhost:2375' needs a scheme"):
        DockerConfig(image="x", docker_host="localhost:2375")


@pytest.mark.parametrize("mount_point", ["tether/run", "/", "//"])
def test_mount_point_must_be_absolute_and_not_root(mount_point: str) -> None:
    with pytest.raises(ValidationError, match="must be an absolute container path other than"):
        DockerConfig(image="x", mount_point=mount_point)


def test_mount_point_loses_its_trailing_slash() -> None:
    assert DockerConfig(image="x").mount_point == "/tether/run"
    assert DockerConfig(image="x", mount_point="/work/").mount_point == "/work"


# -- saved records -------------------------------------------------------------------


def test_record_round_trips_after_the_volume_host_path_is_gone(tmp_path: Path) -> None:
    host = tmp_path / "scratch"
    host.mkdir()
    config = DockerConfig(image="swan:latest", volumes=[f"{host}:/scratch:ro"], cpu=2)
    record = json.loads(json.dumps(config.to_record()))
    host.rmdir()
    with pytest.raises(ValidationError, match="does not exist"):
        DockerConfig.model_validate(record)  # a fresh config still checks the host
    assert DockerConfig.from_record(record) == config


def test_record_round_trips_after_the_build_context_is_gone(context: Path) -> None:
    config = DockerConfig(
        dockerfile=Path("docker/Dockerfile"), build_context=context, build_args={"V": "1"}
    )
    record = json.loads(json.dumps(config.to_record()))
    shutil.rmtree(context)
    with pytest.raises(ValidationError, match="does not exist"):
        DockerConfig.model_validate(record)
    restored = DockerConfig.from_record(record)
    assert restored == config
    assert restored.build_context == context.resolve()


# -- config files --------------------------------------------------------------------


def test_load_config_reads_rompys_example_without_its_empty_mpiexec(tmp_path: Path) -> None:
    host = tmp_path / "scratch"
    host.mkdir()
    text = ROMPY_DOCKER_YML.format(host=host).replace('mpiexec: ""\n', "")
    path = tmp_path / "docker_backend.yml"
    path.write_text(text)
    config = tether.load_config(path)
    assert isinstance(config, DockerConfig)
    assert (config.image, config.timeout, config.cpu, config.memory, config.user) == (
        "python:3.9-slim",
        7200,
        4,
        "2g",
        "root",
    )
    assert config.executable == "bash -c \"echo 'Hello from Docker!'\""
    assert config.volumes == [f"{host.resolve()}:/tmp:rw"]
    assert config.resolved_env() == {"MODEL_THREADS": "4", "DATA_DIR": "/app/data"}
    assert config.mpiexec is None and config.remove_container is True


def test_load_config_reads_rompys_example_verbatim(tmp_path: Path) -> None:
    host = tmp_path / "scratch"
    host.mkdir()
    path = tmp_path / "docker_backend.yml"
    path.write_text(ROMPY_DOCKER_YML.format(host=host))
    config = tether.load_config(path)
    assert isinstance(config, DockerConfig)
    assert not config.mpiexec  # empty: no launcher in front of the command


def test_load_config_reads_a_dockerfile_config(context: Path) -> None:
    path = context.parent / "build.yml"
    path.write_text(
        "type: docker\n"
        f"build_context: {context}\n"
        "dockerfile: docker/Dockerfile\n"
        "build_args:\n"
        "  VERSION: '1.0'\n"
        "mpiexec: mpirun\n"
    )
    config = tether.load_config(path)
    assert isinstance(config, DockerConfig)
    assert config.dockerfile == Path("docker/Dockerfile")
    assert config.build_context == context.resolve()
    assert (config.build_args, config.mpiexec) == ({"VERSION": "1.0"}, "mpirun")


def test_load_config_errors_name_the_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "type: docker\n"
        "image: swan:latest\n"
        "cpu: 0\n"
        "memory: 2 gigs\n"
        "volumes:\n"
        f"  - {tmp_path}/missing:/data\n"
        "labels:\n"
        "  tether.run_id: forged\n"
    )
    with pytest.raises(ConfigError) as info:
        tether.load_config(bad)
    lines = str(info.value).splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{bad}:3", "cpu"],
        [f"{bad}:4", "memory"],
        [f"{bad}:5", "volumes"],
        [f"{bad}:7", "labels"],
    ]
    assert f"'{tmp_path}/missing' does not exist" in lines[2]


def test_load_config_error_for_a_missing_build_context_has_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(f"type: docker\ndockerfile: Dockerfile\nbuild_context: {tmp_path}/gone\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}:3: build_context: "):
        tether.load_config(bad)


# -- the command a container runs ----------------------------------------------------


async def _stdout(config: DockerConfig, job: Job) -> str:
    handle = await config.create().submit(job)
    result = await handle.wait(timeout=60)
    assert result.state is RunState.SUCCEEDED, result.error
    return await result.read_stdout()


@pytest.mark.docker
@pytest.mark.asyncio
async def test_executable_runs_when_the_job_has_no_command(
    docker_engine: Any, tmp_path: Path
) -> None:
    config = DockerConfig(
        image=IMPORTED_IMAGE, executable="echo from-executable", runs_dir=tmp_path
    )
    assert await _stdout(config, Job()) == "from-executable\n"
    # The job's own command wins over the executable.
    assert await _stdout(config, Job(command="echo from-job")) == "from-job\n"


@pytest.mark.docker
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("shell", "command"),
    [
        (True, ["echo", "a  b"]),
        (False, ["echo", "a  b"]),
        (True, "echo 'a  b'"),
        (False, "echo 'a  b'"),
    ],
    ids=["list", "list-no-shell", "string-shell", "string-split"],
)
async def test_mpiexec_goes_in_front_of_the_command(
    docker_engine: Any, tmp_path: Path, shell: bool, command: str | list[str]
) -> None:
    # busybox has no MPI launcher: echo shows the argv it would have been given.
    config = DockerConfig(
        image=IMPORTED_IMAGE, mpiexec="echo mpiexec -n 4", shell=shell, runs_dir=tmp_path
    )
    assert await _stdout(config, Job(command=command)) == "mpiexec -n 4 echo a  b\n"


@pytest.mark.docker
@pytest.mark.asyncio
async def test_mpiexec_launches_the_executable(docker_engine: Any, tmp_path: Path) -> None:
    config = DockerConfig(
        image=IMPORTED_IMAGE,
        mpiexec="echo mpiexec -n 2",
        executable="/bin/model",
        runs_dir=tmp_path,
    )
    assert await _stdout(config, Job()) == "mpiexec -n 2 /bin/model\n"


@pytest.mark.docker
@pytest.mark.asyncio
async def test_no_command_keeps_the_images_own_cmd(docker_engine: Any, tmp_path: Path) -> None:
    config = DockerConfig(image=BUILT_IMAGE, remove_container=False, runs_dir=tmp_path)
    handle = await config.create().submit(Job())
    try:
        result = await handle.wait(timeout=60)
        assert result.state is RunState.SUCCEEDED, result.error
        info = await docker_engine.containers.container(handle.container_id).show()
        assert info["Config"]["Cmd"] == ["/bin/sh"]  # the image's CMD, left alone
    finally:
        await docker_engine.containers.container(handle.container_id).delete(force=True)


@pytest.mark.asyncio
async def test_mpiexec_without_any_command_fails_before_the_engine(tmp_path: Path) -> None:
    config = DockerConfig(
        image=IMPORTED_IMAGE, mpiexec="mpiexec -n 4", docker_host=NO_ENGINE, runs_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="'job' has no command for mpiexec to launch"):
        await config.create().submit(Job())
    assert list(tmp_path.iterdir()) == []
    # The same config reaches the engine once the job has a command: nothing answers.
    with pytest.raises(BackendUnavailableError):
        await config.create().submit(Job(command="true"))


def test_a_job_asking_for_gpus_gets_device_requests(tmp_path: Path) -> None:
    """resources.gpus becomes the engine's DeviceRequests, as ``docker run --gpus N``."""
    backend = DockerConfig(image=IMPORTED_IMAGE, docker_host=NO_ENGINE).create()
    job = Job(name="gpu-job", command="true", resources=Resources(gpus=2))
    spec = backend._spec(
        job, image=IMPORTED_IMAGE, command=["true"], run_id="r", run_dir=tmp_path, workdir=None
    )
    assert spec["HostConfig"]["DeviceRequests"] == [
        {"Driver": "", "Count": 2, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}
    ]
    plain = backend._spec(
        Job(command="true"),
        image=IMPORTED_IMAGE,
        command=None,
        run_id="r",
        run_dir=tmp_path,
        workdir=None,
    )
    assert "DeviceRequests" not in plain["HostConfig"]


def test_mpiexec_must_split_into_words_and_blank_means_none() -> None:
    assert DockerConfig(image="x", mpiexec="  ").mpiexec is None
    with pytest.raises(ValidationError, match="cannot be split: No closing quotation"):
        DockerConfig(image="x", mpiexec='mpiexec "-n 4')


# -- settings that hand the container the host are refused unless opted in ----------


@pytest.mark.parametrize(
    "spec",
    [
        "/:/host:rw",
        "/:/host:ro",
        "/var/run/docker.sock:/var/run/docker.sock",
        "/run/docker.sock:/sock",
        "/var/run:/hostrun",
        "/run:/hostrun",
        "/var:/hostvar",
    ],
)
def test_mounting_the_host_root_or_docker_socket_is_refused(spec: str) -> None:
    host = spec.partition(":")[0]
    if not Path(host).exists():
        pytest.skip(f"{host} does not exist here")
    with pytest.raises(ValidationError) as info:
        DockerConfig(image=IMPORTED_IMAGE, volumes=[spec])
    message = str(info.value)
    assert "allow_host_access" in message and "Docker socket" in message


def test_host_network_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"network_mode 'host'.*allow_host_access"):
        DockerConfig(image=IMPORTED_IMAGE, network_mode="host")


def test_allow_host_access_opts_in(tmp_path: Path) -> None:
    config = DockerConfig(
        image=IMPORTED_IMAGE, volumes=["/:/host:ro"], network_mode="host", allow_host_access=True
    )
    assert config.volumes == ["/:/host:ro"] and config.network_mode == "host"


def test_a_narrow_folder_and_bridge_network_are_accepted(tmp_path: Path) -> None:
    config = DockerConfig(
        image=IMPORTED_IMAGE, volumes=[f"{tmp_path}:/data"], network_mode="bridge"
    )
    assert config.volumes == [f"{tmp_path}:/data:rw"]
