"""The container files are wired as DESIGN §8 says (no Docker engine runs here, so they are read,
not run): docker-compose.yaml against the Compose specification's schema and against each other
(services, health checks, volumes, the imports folder shared by the app and the SFTP server), the
Dockerfile and .dockerignore."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from ruamel.yaml import YAML  # check-jsonschema's YAML reader (PyYAML is not installed)

from app.db import asyncpg_dsn
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"

# What `.env` would hold; the compose file must not need anything else.
ENV = {"POSTGRES_PASSWORD": "db-secret", "SFTP_PASSWORD": "sftp-secret"}

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, and $$ for a literal $."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        value = env.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset else str(value)
        if op in (":?", "?"):
            if unset:
                raise KeyError(f"{name}: {arg}")
            return str(value)
        return value or ""

    return _VARIABLE.sub(one, value)


def interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def raw_compose() -> dict[str, Any]:
    loaded = YAML(typ="safe", pure=True).load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = interpolated(raw_compose(), ENV)
    assert isinstance(result, dict)
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> set[tuple[str, str]]:
    """(source, target) of each volume, short (`src:dst[:mode]`) or long syntax; bind mount
    sources normalised to `./name`."""
    found = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        if not source.startswith(("/", ".")) and "/" in source:
            source = f"./{source}"
        found.add((source.rstrip("/"), target.rstrip("/")))
    return found


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), " ".join(args.split())))
    return instructions


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile() if keyword == name]


# -- the schema ---------------------------------------------------------------------------------


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    result = check_compose_schema(COMPOSE)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok -- validation done"


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    # The same check must fail when the file is wrong, or its passing above means nothing.
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: service_happy"))
    assert broken.read_text() != COMPOSE.read_text()

    result = check_compose_schema(broken)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "service_happy" in result.stdout


# -- the wiring ---------------------------------------------------------------------------------


def test_the_services_and_the_named_volume(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"db", "app", "sftp"}
    assert set(compose["volumes"]) == {"pgdata"}


def test_db_is_postgres_17_health_checked_with_its_data_in_the_named_volume(compose: dict[str, Any]) -> None:
    db = compose["services"]["db"]
    env = environment(db)

    assert db["image"] == "postgres:17"
    assert mounts(db) == {("pgdata", "/var/lib/postgresql/data")}
    assert env["POSTGRES_PASSWORD"] == ENV["POSTGRES_PASSWORD"]
    test = db["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    command = " ".join(test[1:]).split()
    assert command[0] == "pg_isready"
    assert (command[command.index("-U") + 1], command[command.index("-d") + 1]) == (
        env["POSTGRES_USER"],
        env["POSTGRES_DB"],
    )
    assert db["restart"] in ("always", "unless-stopped")


def test_the_compose_file_needs_the_database_password(compose: dict[str, Any]) -> None:
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolated(raw_compose(), {"SFTP_PASSWORD": "x"})
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolated(raw_compose(), {"SFTP_PASSWORD": "x", "POSTGRES_PASSWORD": ""})


def test_app_is_built_here_and_starts_once_db_is_healthy(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]

    assert app["build"] in (".", {"context": "."})
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert app["restart"] in ("always", "unless-stopped")


def test_app_reaches_db_by_its_service_name(compose: dict[str, Any]) -> None:
    db_env = environment(compose["services"]["db"])
    url = environment(compose["services"]["app"])["DATABASE_URL"]
    parts = urlsplit(url)

    assert parts.scheme in ("postgres", "postgresql")
    assert (parts.hostname, parts.port or 5432) == ("db", 5432)
    assert (parts.username, parts.password, parts.path) == (
        db_env["POSTGRES_USER"],
        ENV["POSTGRES_PASSWORD"],
        "/" + db_env["POSTGRES_DB"],
    )
    assert asyncpg_dsn(url) == url  # the app takes it as it is


def test_app_mounts_imports_exports_and_logs_where_it_reads_and_writes_them(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    env = environment(app)
    workdir = instruction("WORKDIR")[-1]

    assert {
        ("./imports", "/app/imports"),
        ("./exports", "/app/exports"),
        ("./logs", "/app/logs"),
    } <= mounts(app)
    # The folders the app uses (its settings, relative to the image's WORKDIR) are the mounted ones.
    for folder in ("imports", "exports", "logs"):
        used = env.get(f"{folder.upper()}_DIR", folder)
        assert str(Path(workdir) / used) == f"/app/{folder}"


def test_app_serves_health_on_all_interfaces_inside_the_container(compose: dict[str, Any]) -> None:
    # The app's own default is loopback, which a published port cannot reach.
    assert environment(compose["services"]["app"])["HEALTH_HOST"] == "0.0.0.0"
    assert Settings(_env_file=None).health_host == "127.0.0.1"


def test_app_is_health_checked_on_healthz_at_its_health_port(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    port = int(environment(app).get("HEALTH_PORT", "8080"))
    test = app["healthcheck"]["test"]

    assert test[0] in ("CMD", "CMD-SHELL")
    urls = re.findall(r"https?://(?:127\.0\.0\.1|localhost):(\d+)/healthz\b", " ".join(test[1:]))
    assert urls == [str(port)]
    assert port != 0
    # a published port, if any, is the health port inside the container
    assert [str(p).rsplit(":", 1)[-1] for p in app.get("ports", [])] in ([], [str(port)])


def test_sftp_uploads_land_in_the_imports_folder_as_the_app_user(compose: dict[str, Any]) -> None:
    sftp = compose["services"]["sftp"]
    # atmoz/sftp: user:password:uid:gid:folder, the folder under the user's chroot /home/user
    user, password, uid, gid, folder = str(sftp["command"]).split(":")
    app_uid = re.findall(r"useradd\b.*--uid (\d+)", " ".join(instruction("RUN")))

    assert sftp["image"].split(":")[0] == "atmoz/sftp"
    assert (user, password) == ("loadbay", ENV["SFTP_PASSWORD"])
    assert mounts(sftp) == {("./imports", f"/home/{user}/{folder}")}
    # the app's own imports folder is the same host folder
    assert ("./imports", "/app/imports") in mounts(compose["services"]["app"])
    # same uid as the app's user: the app can move what the SFTP user uploaded
    assert app_uid == [uid]
    assert gid == uid


# -- the image ----------------------------------------------------------------------------------


def test_dockerignore_keeps_secrets_data_logs_and_the_local_venv_out() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]

    assert {".env", "data/", "logs/", "imports/", "exports/", ".venv"} <= set(patterns)
    # nothing re-includes them
    assert [p for p in patterns if p.startswith("!")] == ["!.env.example"]


def test_dockerfile_installs_from_the_lock_and_runs_the_watcher_as_a_non_root_user() -> None:
    steps = dockerfile()
    keywords = [keyword for keyword, _ in steps]
    runs = instruction("RUN")
    pipfile = tomllib.loads((ROOT / "Pipfile").read_text())

    base = instruction("FROM")
    assert len(base) == 1 and re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", base[0])
    assert base[0].split(":")[1].startswith(pipfile["requires"]["python_version"] + "-")

    # the lock is copied, then installed with `pipenv sync` (exactly the lock, no re-locking)
    copy_lock = keywords.index("COPY")
    assert set(steps[copy_lock][1].split()[:-1]) == {"Pipfile", "Pipfile.lock"}
    sync = [i for i, (k, args) in enumerate(steps) if k == "RUN" and "pipenv sync" in args]
    assert len(sync) == 1 and copy_lock < sync[0]
    assert "--dev" not in steps[sync[0]][1]
    assert not any(re.search(r"pipenv (install|lock|update)\b", run) for run in runs)
    env = " ".join(instruction("ENV"))
    assert "PIPENV_VENV_IN_PROJECT=1" in env
    assert re.search(r'PATH="/app/\.venv/bin:\$\{PATH\}"', env)  # `python` is the venv's
    assert instruction("WORKDIR") == ["/app"]

    # a non-root user, created in the image, is the one the container runs as
    users = instruction("USER")
    assert len(users) == 1 and users[0] not in ("root", "0")
    created = re.findall(r"useradd\b[^&]*?\s([a-z_][a-z0-9_-]*)\s*(?:&&|$)", " ".join(runs))
    assert created == [users[0]]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in ("RUN", "COPY"))

    health = instruction("HEALTHCHECK")
    assert len(health) == 1
    options, _, command = health[0].partition(" CMD ")
    assert re.findall(r"http://127\.0\.0\.1:(\d+)/healthz", command) == instruction("EXPOSE") == ["8080"]
    assert json.loads(command)[0] == "python"
    assert "--timeout=" in options

    assert [json.loads(cmd) for cmd in instruction("CMD")] == [["python", "main.py", "--watch"]]


def test_the_image_has_the_odbc_driver_manager_and_the_sql_server_driver_for_pull() -> None:
    runs = " ".join(instruction("RUN"))
    install = re.search(r"ACCEPT_EULA=Y apt-get install -y --no-install-recommends ([^&]+)", runs)
    assert install is not None
    assert set(install.group(1).split()) == {"unixodbc", "msodbcsql18"}
    assert "packages.microsoft.com/config/debian/${VERSION_ID}/packages-microsoft-prod.deb" in runs
    assert instruction("FROM") == ["python:3.11-slim-bookworm"]
    # the driver the image installs is the one the README's connection strings name
    assert "Driver={ODBC Driver 18 for SQL Server}" in (ROOT / "README.md").read_text()
    # it is installed before the dependencies, so pyodbc finds libodbc when the image runs
    steps = [args for keyword, args in dockerfile() if keyword == "RUN"]
    assert next(i for i, r in enumerate(steps) if "msodbcsql18" in r) < next(
        i for i, r in enumerate(steps) if "pipenv sync" in r
    )
