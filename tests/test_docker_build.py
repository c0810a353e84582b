"""Images built from a Dockerfile: once per distinct context, through the engine's API.

The helpers that pick and hash the context are checked on their own first (no
engine). The builds then run for real (marked ``docker``, asyncio only): a FROM
scratch image holding this machine's static busybox, which installs its applets
with a RUN step so the container has a shell.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import tarfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import tether
from tether import DockerConfig, DockerRunHandle, Job, RunState, SubmitError
from tether.backends.docker._build import context_digest, context_files, context_tar, image_tag

from .services import missing

BUSYBOX = Path("/bin/busybox")
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG FLAVOUR=plain
LABEL org.tether-test.flavour=$FLAVOUR
ENV FLAVOUR=$FLAVOUR
COPY . /ctx
"""
#: Docker's reference grammar for repository:tag (lowercase path components).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REFERENCE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*:\w[\w.-]{{0,127}}$")


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def digest(context: Path, dockerfile: str = "Dockerfile", **build_args: str) -> str:
    files = context_files(context, Path(dockerfile))
    return context_digest(context, Path(dockerfile), build_args, files)


# -- which files are sent ------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A context with a .dockerignore of every kind of pattern docker reads."""
    root = tmp_path / "tree"
    write(
        root,
        {
            "Dockerfile": "FROM scratch\n",
            ".dockerignore": "# comment\n\n*.log\n!keep.log\ndata/\n!data/keep.txt\n"
            "**/*.tmp\ndocs/*.md\n/build\n",
            "a.log": "",
            "keep.log": "",
            "src/a.log": "",  # *.log is anchored at the root: a nested .log stays
            "src/main.py": "",
            "src/pkg/c.tmp": "",
            "c.tmp": "",
            "data/x.bin": "",
            "data/keep.txt": "",
            "data/sub/y.bin": "",
            "docs/a.md": "",
            "docs/sub/b.md": "",
            "build/out.o": "",
            "sp ace.txt": "",
        },
    )
    return root


def test_context_files_honour_dockerignore(tree: Path) -> None:
    # The list docker's own CLI sends for this tree (checked with DOCKER_BUILDKIT=0):
    # folders too, even those none of whose files are sent.
    assert context_files(tree, Path("Dockerfile")) == [
        ".dockerignore",
        "Dockerfile",
        "data/keep.txt",
        "docs",
        "docs/sub",
        "docs/sub/b.md",
        "keep.log",
        "sp ace.txt",
        "src",
        "src/a.log",
        "src/main.py",
        "src/pkg",
    ]


def test_context_files_without_dockerignore_are_every_file(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "", "a/b/c.txt": "", ".hidden": ""})
    assert context_files(tmp_path, Path("Dockerfile")) == [
        ".hidden",
        "Dockerfile",
        "a",
        "a/b",
        "a/b/c.txt",
    ]


def test_dockerfile_and_dockerignore_are_always_sent(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "docker/Dockerfile": "",
            "docker/other": "",
            ".dockerignore": "*\n.dockerignore\ndocker/\n",
            "app.py": "",
        },
    )
    assert context_files(tmp_path, Path("docker/Dockerfile")) == [
        ".dockerignore",
        "docker/Dockerfile",
    ]


def test_links_are_sent_as_links(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "", "real/file.txt": "", "target.txt": ""})
    (tmp_path / "link.txt").symlink_to("target.txt")
    (tmp_path / "dirlink").symlink_to("real")
    files = context_files(tmp_path, Path("Dockerfile"))
    assert files == ["Dockerfile", "dirlink", "link.txt", "real", "real/file.txt", "target.txt"]
    spool = context_tar(tmp_path, files)
    try:
        with tarfile.open(fileobj=spool) as archive:
            members = {m.name: m for m in archive.getmembers()}
    finally:
        spool.close()
    assert sorted(members) == files
    assert members["dirlink"].issym() and members["dirlink"].linkname == "real"
    assert members["link.txt"].issym() and members["target.txt"].isfile()


def test_context_tar_holds_exactly_the_listed_files(tree: Path) -> None:
    files = context_files(tree, Path("Dockerfile"))
    spool = context_tar(tree, files)
    try:
        data = spool.read()
    finally:
        spool.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = archive.getnames()
        mode = archive.getmember("Dockerfile").mode
    assert names == files
    assert mode == stat.S_IMODE((tree / "Dockerfile").stat().st_mode)


# -- what the tag hashes -------------------------------------------------------------


def test_digest_is_stable_and_follows_content_mode_and_args(tree: Path) -> None:
    first = digest(tree)
    assert digest(tree) == first
    assert re.fullmatch(r"[0-9a-f]{64}", first)

    (tree / "src" / "main.py").write_text("print('hi')\n")
    edited = digest(tree)
    assert edited != first

    (tree / "src" / "main.py").chmod(0o755)
    executable = digest(tree)
    assert executable != edited

    with_args = digest(tree, FLAVOUR="salty")
    assert with_args != executable
    assert digest(tree, FLAVOUR="sweet") != with_args
    assert digest(tree, FLAVOUR="salty") == with_args


def test_digest_ignores_excluded_files_and_follows_link_targets(tree: Path) -> None:
    before = digest(tree)
    (tree / "a.log").write_text("more log\n")
    (tree / "data" / "sub" / "y.bin").write_text("big\n")
    (tree / "build" / "new.o").write_text("")
    assert digest(tree) == before

    (tree / "link").symlink_to("src/main.py")
    linked = digest(tree)
    assert linked != before
    (tree / "link").unlink()
    (tree / "link").symlink_to("keep.log")
    assert digest(tree) != linked


def test_digest_names_the_dockerfile(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "FROM scratch\n", "Dockerfile.dev": "FROM scratch\n"})
    assert digest(tmp_path, "Dockerfile") != digest(tmp_path, "Dockerfile.dev")


def test_a_named_pipe_in_the_context_does_not_hang_the_digest(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "FROM scratch\n"})
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(digest(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=5)
    hung = worker.is_alive()
    if hung:  # let the blocked open() return, so no thread is left behind
        with contextlib.suppress(OSError):
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
    assert not hung and len(results) == 1


# -- the tag -------------------------------------------------------------------------


def test_image_tag_is_a_lowercase_slug_of_the_context_and_the_digest() -> None:
    sha = "0123456789abcdef" * 4
    assert (
        image_tag(Path("/src/My Model_V2.0"), sha)
        == "tether-build/my-model-v2-0:0123456789abcdef0123"
    )
    assert image_tag(Path("/"), sha) == "tether-build/context:0123456789abcdef0123"
    assert image_tag(Path("/src/--ÜBER--"), sha) == "tether-build/ber:0123456789abcdef0123"
    long = image_tag(Path("/src/" + "x" * 100), sha)
    assert long == f"tether-build/{'x' * 40}:0123456789abcdef0123"
    for name in ("My Model_V2.0", "/", "--ÜBER--", "x" * 100):
        assert REFERENCE.match(image_tag(Path("/src") / name, sha)), name


def test_image_tag_cut_at_40_characters_is_a_valid_reference() -> None:
    tag = image_tag(Path("/src/" + "a" * 39 + "-b"), "0" * 64)
    assert REFERENCE.match(tag), tag


# -- real builds ---------------------------------------------------------------------


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A build context: busybox, the Dockerfile above and a model input file."""
    if not BUSYBOX.is_file():
        missing(f"{BUSYBOX} is missing; run bash scripts/docker-engine.sh")
    folder = tmp_path / "ctx"
    folder.mkdir()
    shutil.copy2(BUSYBOX, folder / "busybox")
    # The comment makes the tag this test's own: concurrent runs share the engine.
    write(folder, {"Dockerfile": f"# {folder}\n{DOCKERFILE}", "model.cfg": "steps = 1\n"})
    return folder


@pytest_asyncio.fixture
async def built(docker_engine: Any, context: Path) -> AsyncIterator[list[str]]:
    """Tags this test built; they, and any image built from its context, go at the end."""
    import aiodocker

    tags: list[str] = []
    yield tags
    labelled = await docker_engine.images.list(
        filters={"label": [f"tether.build_context={context.resolve()}"]}
    )
    for image in labelled:
        tags.extend(image.get("RepoTags") or [image["Id"]])
    for tag in dict.fromkeys(tags):
        with contextlib.suppress(aiodocker.DockerError):
            await docker_engine.images.delete(tag, force=True)


@pytest.fixture
def build_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every build the engine is asked for."""
    from aiodocker.images import DockerImages

    calls: list[dict[str, Any]] = []
    real = DockerImages.build

    async def counting(self: DockerImages, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await real(self, **kwargs)

    monkeypatch.setattr(DockerImages, "build", counting)
    return calls


def config_for(context: Path, tmp_path: Path, **fields: Any) -> DockerConfig:
    return DockerConfig(
        dockerfile=Path(fields.pop("dockerfile", "Dockerfile")),
        build_context=context,
        runs_dir=tmp_path / "runs",
        **fields,
    )


async def run(config: DockerConfig, command: str, built: list[str]) -> tuple[DockerRunHandle, str]:
    handle = await config.create().submit(Job(name="build-test", command=command))
    built.append(handle.image)
    result = await handle.wait(timeout=60)
    assert result.state is RunState.SUCCEEDED, result.error
    return handle, await result.read_stdout()


@pytest.mark.docker
@pytest.mark.asyncio
async def test_submit_builds_the_image_and_runs_in_it(
    docker_engine: Any, context: Path, built: list[str], tmp_path: Path
) -> None:
    handle, out = await run(config_for(context, tmp_path), "echo built", built)
    assert out == "built\n"
    assert re.fullmatch(r"tether-build/ctx:[0-9a-f]{20}", handle.image)
    info = await docker_engine.images.inspect(handle.image)
    assert info["Config"]["Labels"]["tether.build_context"] == str(context.resolve())
    # The tag is saved with the run, so a re-attached handle names the same image.
    again = await tether.load_handle(handle.run_dir / "handle.json")
    assert isinstance(again, DockerRunHandle) and again.image == handle.image


@pytest.mark.docker
@pytest.mark.asyncio
async def test_an_unchanged_context_is_not_rebuilt(
    docker_engine: Any,
    context: Path,
    built: list[str],
    build_calls: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    first, _ = await run(config_for(context, tmp_path), "true", built)
    assert len(build_calls) == 1
    before = await docker_engine.images.inspect(first.image)
    # A fresh config, as another process would make from the same file.
    second, out = await run(config_for(context, tmp_path), "cat /ctx/model.cfg", built)
    after = await docker_engine.images.inspect(second.image)
    assert second.image == first.image and out == "steps = 1\n"
    assert (after["Id"], after["Created"]) == (before["Id"], before["Created"])
    assert len(build_calls) == 1  # found by its tag: the engine was not asked to build


@pytest.mark.docker
@pytest.mark.asyncio
async def test_a_changed_file_gives_a_new_image(
    docker_engine: Any,
    context: Path,
    built: list[str],
    build_calls: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    config = config_for(context, tmp_path)
    first, _ = await run(config, "true", built)
    (context / "model.cfg").write_text("steps = 2\n")
    second, out = await run(config, "cat /ctx/model.cfg", built)
    assert second.image != first.image and second.image.startswith("tether-build/ctx:")
    assert out == "steps = 2\n"
    assert len(build_calls) == 2
    await docker_engine.images.inspect(first.image)  # the older image is left alone


@pytest.mark.docker
@pytest.mark.asyncio
async def test_dockerignored_files_are_not_sent_and_do_not_rebuild(
    context: Path, built: list[str], build_calls: list[dict[str, Any]], tmp_path: Path
) -> None:
    write(
        context,
        {
            ".dockerignore": "*.log\nscratch/\n!scratch/keep.txt\n",
            "run.log": "old\n",
            "scratch/big.bin": "old\n",
            "scratch/keep.txt": "kept\n",
            "sub/nested.log": "nested\n",
        },
    )
    config = config_for(context, tmp_path)
    first, listing = await run(config, "cd /ctx && find . -type f | sort", built)
    assert listing.split() == [
        "./.dockerignore",
        "./Dockerfile",
        "./busybox",
        "./model.cfg",
        "./scratch/keep.txt",
        "./sub/nested.log",
    ]
    (context / "run.log").write_text("new\n")
    (context / "scratch" / "big.bin").write_text("new\n")
    second, _ = await run(config, "true", built)
    assert second.image == first.image
    assert len(build_calls) == 1


@pytest.mark.docker
@pytest.mark.asyncio
async def test_a_dockerfile_in_an_ignored_folder_still_builds(
    context: Path, built: list[str], tmp_path: Path
) -> None:
    (context / "docker").mkdir()
    (context / "Dockerfile").rename(context / "docker" / "Dockerfile")
    (context / ".dockerignore").write_text("docker/\n")
    config = config_for(context, tmp_path, dockerfile="docker/Dockerfile")
    _, listing = await run(config, "ls -A /ctx", built)
    assert listing.split() == [".dockerignore", "busybox", "docker", "model.cfg"]


@pytest.mark.docker
@pytest.mark.asyncio
async def test_build_args_change_the_tag_and_reach_the_image(
    docker_engine: Any, context: Path, built: list[str], tmp_path: Path
) -> None:
    plain, plain_out = await run(config_for(context, tmp_path), "echo $FLAVOUR", built)
    salty_config = config_for(context, tmp_path, build_args={"FLAVOUR": "salty"})
    salty, salty_out = await run(salty_config, "echo $FLAVOUR", built)
    assert (plain_out, salty_out) == ("plain\n", "salty\n")
    assert salty.image != plain.image
    info = await docker_engine.images.inspect(salty.image)
    assert info["Config"]["Labels"]["org.tether-test.flavour"] == "salty"
    assert "FLAVOUR=salty" in info["Config"]["Env"]


@pytest.mark.docker
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("dockerfile", "reason"),
    [
        ("FROM scratch\nCOPY missing.txt /x\n", "missing.txt"),
        ("FROM scratch\nBOGUS thing\n", "unknown instruction"),
    ],
    ids=["missing-file", "parse-error"],
)
async def test_a_failing_build_is_a_submit_error_and_leaves_no_run_folder(
    context: Path, built: list[str], tmp_path: Path, dockerfile: str, reason: str
) -> None:
    (context / "Dockerfile").write_text(dockerfile)
    config = config_for(context, tmp_path)
    with pytest.raises(SubmitError) as info:
        await config.create().submit(Job(command="true"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Building the image from 'Dockerfile' in '{context.resolve()}'")
    assert reason in message
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


@pytest.mark.docker
@pytest.mark.asyncio
async def test_folders_without_sent_files_reach_the_build_context(
    context: Path, built: list[str], tmp_path: Path
) -> None:
    (context / "output").mkdir()
    write(context, {".dockerignore": "*.tmp\n**/*.tmp\n", "cache/a.tmp": ""})
    _, listing = await run(config_for(context, tmp_path), "cd /ctx && find . -type d", built)
    assert {"./output", "./cache"} <= set(listing.split())
