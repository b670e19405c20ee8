"""decode_speedup_over_stock's parts: the frames it times, both sides, and bench --only."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from argus_embedder import errors, settings
from argus_embedder.bench import decode_speed, suite


def test_frames_are_noisy_720p_q90_420_jpegs() -> None:
    frames = decode_speed.noisy_frames(2)
    for data in frames:
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.size) == ("JPEG", (1280, 720))
        assert image.layer[0][1:3] == (2, 2)  # luma sampled 2x2: 4:2:0
        assert 300_000 < len(data) < 600_000  # like real footage at q90, not flat colour
    assert frames[0] != frames[1]


def test_both_sides_run_and_are_compared(tiny_siglip_dir: Path) -> None:
    result = decode_speed.run(tiny_siglip_dir, decode_speed.noisy_frames(2))
    assert result.frames == 2
    assert result.daemon_frames_per_second > 0 and result.stock_frames_per_second > 0
    assert result.speedup == pytest.approx(
        result.daemon_frames_per_second / result.stock_frames_per_second
    )
    assert [len(runs) for runs in result.runs_frames_per_second.values()] == [2, 2]


def test_bench_only_refuses_an_unknown_scenario_before_starting_anything() -> None:
    with pytest.raises(errors.ConfigError, match="no scenario decode_sped"):
        suite.main(settings.load({}), quick=True, only=["decode_sped"])
    assert set(suite.SCENARIOS) >= {"decode_speed", "tiny_pipeline", "model_only"}
