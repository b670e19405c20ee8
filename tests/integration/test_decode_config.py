"""ARGUS_DECODE=gpu on a host where it cannot run: the daemon exits 78 with one clear line."""

from __future__ import annotations

from pathlib import Path

from argus_embedder import errors
from tests.integration.test_cli import run_cli


def test_gpu_decode_without_a_gpu_exits_78(database_url: str, tiny_siglip_dir: Path) -> None:
    result = run_cli(
        ["run", "--burst"],
        {
            "ARGUS_DATABASE_URL": database_url,
            "ARGUS_MODEL": str(tiny_siglip_dir),
            "ARGUS_DEVICE": "cpu",
            "ARGUS_DECODE": "gpu",
            "ARGUS_METRICS_PORT": "0",
        },
    )
    assert result.returncode == errors.EXIT_CONFIG, result.stderr[-2000:]
    assert "ARGUS_DECODE=gpu but the model runs on cpu" in result.stderr
    assert "Traceback" not in result.stderr
