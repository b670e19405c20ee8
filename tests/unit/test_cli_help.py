"""Each command's --help lists only the flags it reads (issue 30: `ingest --help`
listed 13 daemon flags that ingest does not use)."""

from __future__ import annotations

import re

import pytest

from argus_embedder import cli

DB = {"--database-url"}
MODEL = {"--model"}
DEVICE = {"--device", "--batch-size"}
S3 = {"--s3-bucket", "--s3-endpoint-url"}
READ = {"--read-database-url"}
DAEMON = {"--metrics-port", "--metrics-host", "--lease-seconds", "--poll-interval", "--worker-id"}
DAEMON |= {"--reconcile-interval", "--decode-processes", "--decode"}
ROOTS = {"--file-roots"}

# The variables' flags each command reads (its own options aside).
EXPECTED = {
    ("migrate",): DB | MODEL,
    ("run",): DB | MODEL | DEVICE | S3 | DAEMON | ROOTS,
    ("enqueue",): DB,
    ("ingest",): DB,
    ("status",): DB | MODEL | READ,
    ("search",): DB | MODEL | DEVICE | READ,
    ("serve",): DB | MODEL | {"--device"} | S3 | READ | ROOTS,
    ("project", "set"): DB | MODEL,
    ("project", "list"): DB | MODEL,
    ("cancel",): DB,
    ("retry",): DB,
    ("backfill",): DB | MODEL,
    ("prune",): DB | MODEL,
    ("demo",): MODEL | DEVICE | {"--decode"},
    ("bench",): DB | MODEL | DEVICE | {"--decode-processes", "--decode"},
}
VARIABLE_FLAGS = DB | MODEL | DEVICE | S3 | READ | DAEMON | ROOTS


def help_flags(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> set[str]:
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    text = capsys.readouterr().out
    return set(re.findall(r"^ +(--[a-z0-9-]+)", text, re.MULTILINE))


@pytest.mark.parametrize("command", list(EXPECTED), ids=" ".join)
def test_help_lists_the_variables_the_command_reads_regression_issue30(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    listed = help_flags(command, capsys)
    assert listed & VARIABLE_FLAGS == EXPECTED[command]


def test_ingest_help_names_no_daemon_flag(capsys: pytest.CaptureFixture[str]) -> None:
    listed = help_flags(("ingest",), capsys)
    assert listed == {"--log-level", "--project", "--database-url"}


def test_a_flag_the_command_does_not_read_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ingest", "v", "x.jpg", "--metrics-port", "1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --metrics-port" in capsys.readouterr().err


def test_metrics_host_defaults_to_all_interfaces_and_is_settable() -> None:
    from argus_embedder import settings

    assert settings.load({}).metrics_host == "0.0.0.0"
    assert settings.load({"ARGUS_METRICS_HOST": "127.0.0.1"}).metrics_host == "127.0.0.1"
    assert settings.load({}, metrics_host="::1").metrics_host == "::1"


def test_a_flag_before_the_command_is_the_commands_flag() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["--database-url", "postgresql:///a", "--log-level", "DEBUG", "status"]
    )
    assert (args.database_url, args.log_level) == ("postgresql:///a", "DEBUG")
    args = parser.parse_args(["--model", "m1", "search", "text"])
    assert args.model == "m1"  # the command's parser keeps what came before it


def test_a_flag_after_the_command_wins_and_unset_flags_stay_unset() -> None:
    args = cli.build_parser().parse_args(["--model", "m1", "status", "--model", "m2"])
    assert args.model == "m2"
    assert not hasattr(cli.build_parser().parse_args(["status"]), "database_url")  # main: None


def test_a_flag_before_a_command_that_does_not_read_it_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--s3-bucket", "frames", "ingest", "video", "/nowhere"])
    assert stopped.value.code == 2
    assert "`ingest` does not read ARGUS_S3_BUCKET" in capsys.readouterr().err
