"""The deployment files (Dockerfile, .dockerignore, fly.toml) agree with the app, and the
image's install steps work from scratch: copied and installed the way the Dockerfile says,
the server starts, answers /healthz and exits 0 on SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from chat import create_app
from chat.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
FLY_TOML = ROOT / "fly.toml"
RUN_COMMAND = "python app.py"
SECRETS = frozenset(
    {
        "SECRET_KEY",
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "REDIS_URL",
    }
)
RUNTIME_IMPORTS = "import chat, aiohttp, confluent_kafka, redis, msgspec"
START_DEADLINE_S = 40.0


# --- reading the Dockerfile -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, in order, without comments."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops these, also inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    instructions = []
    for line in joined:
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def instructions(keyword: str) -> list[str]:
    """The arguments of every instruction with this keyword."""
    return [i.args for i in dockerfile() if i.keyword == keyword]


def env_pairs(args: str) -> dict[str, str]:
    """The variables one ENV instruction sets (`ENV A=1 B=2`, or the legacy `ENV A 1`)."""
    words = shlex.split(args)
    if "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def image_env() -> dict[str, str]:
    """Every variable the image's ENV instructions set."""
    env: dict[str, str] = {}
    for args in instructions("ENV"):
        env.update(env_pairs(args))
    return env


def exec_form(args: str) -> list[str]:
    """A CMD/RUN argument list: the JSON exec form, else the shell form."""
    if args.startswith("["):
        command: list[str] = json.loads(args)
        return command
    return ["/bin/sh", "-c", args]


def image_cmd() -> list[str]:
    """The command the container runs (the last CMD wins)."""
    cmds = instructions("CMD")
    assert cmds, "the Dockerfile has no CMD"
    return exec_form(cmds[-1])


def healthcheck_cmd() -> list[str]:
    """The HEALTHCHECK's command, without its options."""
    checks = instructions("HEALTHCHECK")
    assert len(checks) == 1, "the Dockerfile needs exactly one HEALTHCHECK"
    _options, sep, command = checks[0].partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {checks[0]!r}"
    return exec_form(command.strip())


def exposed_ports() -> set[int]:
    """The ports EXPOSE names."""
    return {int(port.split("/")[0]) for args in instructions("EXPOSE") for port in args.split()}


def copy_args(args: str) -> tuple[list[str], str]:
    """A COPY instruction's sources and destination, its --flags dropped."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    words = [w for w in words if not w.startswith("--")]
    assert len(words) >= 2, f"COPY needs a source and a destination: {args!r}"
    return words[:-1], words[-1]


# --- reading fly.toml, the README and the app -----------------------------------------------


def fly() -> dict[str, Any]:
    """fly.toml, parsed."""
    with FLY_TOML.open("rb") as f:
        return tomllib.load(f)


def fly_env() -> dict[str, str]:
    """fly.toml's [env]."""
    env: dict[str, str] = fly().get("env", {})
    return env


def seconds(value: int | float | str) -> float:
    """A fly.toml duration (`15`, `"15s"`, `"1m"`, `"500ms"`) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value.strip())
    assert match, f"not a duration: {value!r}"
    number, unit = float(match[1]), match[2] or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name read from it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def deployed_settings() -> tuple[Settings, set[str]]:
    """The settings an instance reads on Fly (image ENV, then fly.toml [env]; no secrets),
    and every variable name the app looked at to build them."""
    env = RecordingEnv({**image_env(), **fly_env()})
    return Settings.from_env(env), env.read


def get_routes() -> set[str]:
    """The paths the app answers GET on; building the app does no I/O."""
    app = create_app(Settings())
    return {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    }


# --- fly.toml and the Dockerfile agree with the app -------------------------------------


def test_fly_internal_port_is_the_image_port_and_the_app_port() -> None:
    internal_port = fly()["http_service"]["internal_port"]
    env = image_env()
    settings, _ = deployed_settings()
    assert int(env["PORT"]) == internal_port
    assert exposed_ports() == {internal_port}
    assert int(fly_env().get("PORT", env["PORT"])) == internal_port
    assert settings.port == internal_port
    assert Settings().port == internal_port, "the app's default port differs from the image's"
    # Fly's proxy reaches the machine on its private IPv4 address, not on loopback; the
    # image alone (docker run -p) must listen there too.
    assert "0.0.0.0" in settings.hosts
    assert Settings.from_env(env).hosts == ["0.0.0.0"]


def test_every_port_fly_scrapes_or_checks_is_the_app_port() -> None:
    config = fly()
    internal_port = config["http_service"]["internal_port"]
    assert config["metrics"]["port"] == internal_port
    for name, check in config.get("checks", {}).items():
        assert check["port"] == internal_port, f"[checks.{name}]"


def test_fly_health_check_is_healthz_and_the_app_serves_it() -> None:
    checks = fly()["http_service"]["checks"]
    assert [check["path"] for check in checks] == ["/healthz"]
    for check in checks:
        assert check.get("method", "GET").upper() == "GET"
        assert {"interval", "timeout", "grace_period"} <= check.keys()
    assert "/healthz" in get_routes()


def test_every_path_fly_requests_is_a_route_of_the_app() -> None:
    config = fly()
    paths = {check["path"] for check in config["http_service"]["checks"]}
    paths |= {check["path"] for check in config.get("checks", {}).values() if "path" in check}
    paths.add(config["metrics"]["path"])
    assert paths <= get_routes(), paths - get_routes()


def test_image_healthcheck_asks_healthz_without_curl() -> None:
    command = healthcheck_cmd()
    assert command[0] == "python", "the slim image has no curl: check with python"
    assert "urllib" in " ".join(command)
    assert "/healthz" in " ".join(command)


def test_image_runs_the_command_the_readme_gives() -> None:
    assert shlex.join(image_cmd()) == RUN_COMMAND
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing (the image copies it, pip needs it)"
    assert RUN_COMMAND in readme.read_text(), f"the README does not say `{RUN_COMMAND}`"


def test_shutdown_fits_in_fly_kill_timeout() -> None:
    config = fly()
    settings, _ = deployed_settings()
    assert config["kill_signal"] == "SIGTERM"
    assert instructions("STOPSIGNAL") == ["SIGTERM"]
    # SHUTDOWN_TIMEOUT for the handlers, then the Kafka flush, before Fly kills the VM.
    assert seconds(config["kill_timeout"]) >= settings.shutdown_timeout + 5


def test_no_secret_is_written_in_fly_toml_or_the_image() -> None:
    for where, env in (("fly.toml [env]", fly_env()), ("Dockerfile ENV", image_env())):
        assert not SECRETS & env.keys(), f"{where} holds {sorted(SECRETS & env.keys())}"
        suspicious = [k for k in env if re.search(r"PASSWORD|SECRET|TOKEN|CREDENTIAL", k)]
        assert not suspicious, f"{where} holds {suspicious}"


def test_fly_env_holds_only_settings_the_app_reads_and_it_accepts_them() -> None:
    # Settings.from_env raises SettingsError on a value the app would refuse at start.
    _, read = deployed_settings()
    assert fly_env().keys() <= read, f"the app never reads {sorted(fly_env().keys() - read)}"
    assert read >= SECRETS, f"the documented secrets are not all settings: {SECRETS - read}"


def test_open_websockets_keep_their_machine_running() -> None:
    service = fly()["http_service"]
    assert service["auto_stop_machines"] in ("off", False)
    assert service["min_machines_running"] >= 2
    assert service["force_https"] is True
    concurrency = service["concurrency"]
    assert concurrency["type"] == "connections"
    assert 0 < concurrency["soft_limit"] <= concurrency["hard_limit"]


def test_image_is_slim_python_that_the_project_supports_and_runs_as_non_root() -> None:
    (base,) = instructions("FROM")
    assert re.fullmatch(r"python:3\.(1[1-9])-slim(-[a-z]+)?", base), base
    users = instructions("USER")
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")


# --- the build context ----------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    """.dockerignore's patterns, in order."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `*` within a path segment, `**` across segments."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps this path (relative to the root) out of the context."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/").removeprefix("./"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_tests_and_git_out_and_what_the_image_copies_in() -> None:
    patterns = dockerignore_patterns()
    for path in (".git", "tests", "tests/conftest.py", "docs", ".venv", "chat/__pycache__"):
        assert ignored(path, patterns), f"{path} would be sent to the builder"
    for args in instructions("COPY"):
        sources, _ = copy_args(args)
        for source in sources:
            source_path = ROOT / source
            assert source_path.exists(), f"COPY {source}: no such file in the repository"
            files = (
                [source_path, *source_path.rglob("*")] if source_path.is_dir() else [source_path]
            )
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" in relative:
                    continue
                assert not ignored(relative, patterns), f"COPY {source}: {relative} is ignored"


# --- the image's install steps, from scratch ----------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def docker_copy(sources: list[str], dest: str, workdir: Path) -> None:
    """COPY from the repository into a directory that stands for the image's WORKDIR."""
    target = workdir / dest
    into_directory = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
    for source in sources:
        origin = ROOT / source
        if origin.is_dir():
            # COPY dir/ dest copies the directory's contents into dest.
            shutil.copytree(
                origin, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            destination = target / origin.name if into_directory else target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, destination)


def run_steps(command: str, python: Path) -> list[list[str]]:
    """The pip and python steps of a RUN line, run with the virtualenv's python."""
    steps = []
    for segment in command.split("&&"):
        words = shlex.split(segment)
        if words and words[0] in ("pip", "pip3"):
            steps.append([str(python), "-m", "pip", *words[1:]])
        elif words and words[0] in ("python", "python3"):
            steps.append([str(python), *words[1:]])
        # Other steps (useradd, rm) change nothing the test looks at.
    return steps


def with_venv_python(command: list[str], python: Path) -> list[str]:
    assert command[0] in ("python", "python3"), command
    return [str(python), *command[1:]]


def get_status(url: str) -> int:
    """The HTTP status of a GET; raises OSError while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_image_install_steps_work_in_a_clean_virtualenv_and_the_server_starts(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)

    # The build, step by step: WORKDIR, COPY and the pip/python parts of RUN, with the
    # image's ENV. pip keeps the machine's own configuration (index, mirror, certificates).
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL"))}
    build_env = dict(base_env)
    workdir = tmp_path / "image"
    workdir.mkdir()
    installed = False
    for instruction in dockerfile():
        if instruction.keyword == "ENV":
            build_env.update(env_pairs(instruction.args))
        elif instruction.keyword == "WORKDIR":
            workdir = tmp_path / "image" / instruction.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            docker_copy(*copy_args(instruction.args), workdir)
        elif instruction.keyword == "RUN":
            for step in run_steps(instruction.args, python):
                if "install" in step:
                    installed = True
                    assert not any("[" in word for word in step), "the image installs an extra"
                done = subprocess.run(
                    step, cwd=workdir, env=build_env, capture_output=True, text=True, timeout=300
                )
                assert done.returncode == 0, f"{shlex.join(step)}:\n{done.stdout}\n{done.stderr}"
    assert installed, "no `pip install` in the Dockerfile"

    # The package is installed, not only importable from the copied sources...
    imports = subprocess.run(
        [str(python), "-c", RUNTIME_IMPORTS], cwd=tmp_path, capture_output=True, text=True
    )
    assert imports.returncode == 0, imports.stderr
    # ...with the runtime dependencies only.
    no_test_extra = "import importlib.util as u, sys; sys.exit(u.find_spec('pytest') is not None)"
    assert subprocess.run([str(python), "-c", no_test_extra], cwd=tmp_path).returncode == 0

    # Start it the way the container does: the image's ENV, its CMD, in its WORKDIR.
    port = free_port()
    run_env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        **image_env(),
        "PORT": str(port),
    }
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            with_venv_python(image_cmd(), python),
            cwd=workdir,
            env=run_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        status = None
        while time.monotonic() < deadline:
            assert server.poll() is None, f"the server exited:\n{log_path.read_text()}"
            try:
                status = get_status(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200, f"/healthz did not answer in time:\n{log_path.read_text()}"
        # The page renders: the templates were copied where the app looks for them.
        assert get_status(f"http://127.0.0.1:{port}/") == 200, log_path.read_text()

        # The image's own HEALTHCHECK command agrees.
        check = with_venv_python(healthcheck_cmd(), python)
        assert subprocess.run(check, env=run_env, timeout=30).returncode == 0

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0, log_path.read_text()
        failed = subprocess.run(check, env=run_env, capture_output=True, timeout=30)
        assert failed.returncode != 0, "the HEALTHCHECK passes with no server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
