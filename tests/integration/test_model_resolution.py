"""Which model a command uses, and what it says when that model cannot be loaded here.

Issue 30: after `demo`, a newcomer's `run --burst` (no variable set, offline) spent
~26 s in the hub's retries and ended in a multi-line library error, while `search`
and `serve` already used the demo's model. Every command now asks one function
(common.resolve_model); these tests run the real CLI in child processes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from argus_embedder import errors

HUB_MODEL = "argus-test/tiny-siglip"  # a hub id no hub has: only a local cache can hold it


def closed_port_endpoint() -> str:
    """An HF_ENDPOINT that refuses connections: a port bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def newcomer_env(home: Path, **extra: str) -> dict[str, str]:
    """A fresh home with an empty Hugging Face cache, no ARGUS_* and no offline flag."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ARGUS_", "HF_", "TRANSFORMERS_"))
    }
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), HF_HOME=str(home / "hf"))
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "argus_embedder", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


OFFLINE_WAYS = {
    "HF_HUB_OFFLINE": lambda: {"HF_HUB_OFFLINE": "1"},
    "unreachable HF_ENDPOINT": lambda: {"HF_ENDPOINT": closed_port_endpoint()},
}
COMMANDS = [["run", "--burst"], ["search", "a dog"], ["serve", "--port", "0"]]


@pytest.mark.parametrize("offline", list(OFFLINE_WAYS))
@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_an_unloadable_hub_model_is_one_line_and_exit_78_regression_issue30(
    command: list[str], offline: str, database_url: str, tmp_path: Path
) -> None:
    """Before: `run --burst` printed the metrics line, a CUDA warning and transformers'
    "couldn't connect" error (~26 s of retries with an unreachable HF_ENDPOINT)."""
    env = newcomer_env(tmp_path, ARGUS_DATABASE_URL=database_url, **OFFLINE_WAYS[offline]())
    result = run_cli(env, *command)
    assert result.returncode == errors.EXIT_CONFIG, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("argus-embedder: error: model 'google/siglip2-base-patch16-224'")
    assert "not in the local Hugging Face cache" in line and "ARGUS_MODEL" in line
    reason = "HF_HUB_OFFLINE is set" if offline == "HF_HUB_OFFLINE" else "is unreachable"
    assert reason in line


def test_a_missing_model_directory_is_one_line_and_exit_78(
    database_url: str, tmp_path: Path
) -> None:
    env = newcomer_env(tmp_path, ARGUS_DATABASE_URL=database_url)
    result = run_cli(env, "run", "--burst", "--model", str(tmp_path / "nowhere"))
    assert result.returncode == errors.EXIT_CONFIG, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"argus-embedder: error: model {str(tmp_path / 'nowhere')!r} is not loadable: "
        "no such directory"
    ]


def cache_as_hub_model(model_dir: Path, hf_home: Path, repo_id: str) -> None:
    """Lay a local checkpoint out as huggingface_hub's cache holds a downloaded one."""
    revision = "0" * 40
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(model_dir, repo / "snapshots" / revision)


def test_a_cached_hub_model_loads_offline_when_the_hub_is_unreachable(
    database_url: str, tiny_siglip_dir: Path, tmp_path: Path
) -> None:
    """With the hub out of reach, a model in the cache is used from it at once."""
    cache_as_hub_model(tiny_siglip_dir, tmp_path / "hf", HUB_MODEL)
    env = newcomer_env(
        tmp_path,
        ARGUS_DATABASE_URL=database_url,
        ARGUS_MODEL=HUB_MODEL,
        HF_ENDPOINT=closed_port_endpoint(),
    )
    migrated = run_cli(env, "migrate", "--model", HUB_MODEL)
    assert migrated.returncode == 0, migrated.stderr
    result = run_cli(env, "search", "a dog")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no frames found"
    assert "Traceback" not in result.stderr and "WARNING" not in result.stderr, result.stderr


def test_search_on_a_cpu_machine_prints_nothing_on_stderr_regression_issue30(
    database_url: str, tiny_siglip_dir: Path, tmp_path: Path
) -> None:
    """Before: every CPU `search` (and `serve`) logged "ARGUS_DEVICE=auto found no CUDA
    device; running on CPU": a text query on a CPU is no news. Only the daemon's image
    tower says it, and torch's own probe warnings are silenced unless ARGUS_DEVICE=cuda."""
    env = newcomer_env(tmp_path, ARGUS_DATABASE_URL=database_url, ARGUS_MODEL=str(tiny_siglip_dir))
    env["HF_HUB_OFFLINE"] = "1"
    migrated = run_cli(env, "migrate", "--model", str(tiny_siglip_dir))
    assert migrated.returncode == 0, migrated.stderr
    result = run_cli(env, "search", "a dog")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
