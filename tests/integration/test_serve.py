"""`serve` over real HTTP, a real PostgreSQL, moto's S3 and the tiny model."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import signal
import socket
import struct
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

import argus_embedder
from argus_embedder import cli, errors, settings
from argus_embedder.commands import search, serve
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg
from tests.integration.test_roles import Login

Response = tuple[int, dict[str, str], bytes]


def get(port: int, path: str, method: str = "GET") -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def search_path(**params: str) -> str:
    return "/search?" + urllib.parse.urlencode(params)


@pytest.fixture
def frames(
    database_url: str,
    tiny_siglip_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Path:
    """Six embedded file:// frames of video "clip" in project "p1"."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(6):
        (folder / f"{index:03d}.jpg").write_bytes(textured_jpeg(index))
    support.ingest_and_embed(monkeypatch, database_url, tiny_siglip_dir, folder)
    capsys.readouterr()
    return folder


@pytest.fixture
def port(frames: Path) -> Iterator[int]:
    """A server on a free port, in this process, with the environment `frames` set."""
    with serve.running(settings.load(), "127.0.0.1", 0) as server:
        yield int(server.server_address[1])


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert cli.main(["search", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_returns_what_search_json_prints(
    port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    for by in ("frame", "video"):
        status, headers, body = get(port, search_path(q="a sunny beach", limit="4", by=by))
        assert (status, headers["Content-Type"]) == (200, "application/json")
        assert json.loads(body) == cli_json(capsys, "a sunny beach", "--limit", "4", "--by", by)
    filtered = search_path(q="beach", project="p1", video="clip", limit="2")
    status, _, body = get(port, filtered)
    assert status == 200
    expected = cli_json(capsys, "beach", "--project", "p1", "--video", "clip", "--limit", "2")
    assert json.loads(body) == expected and len(expected) == 2
    status, _, body = get(port, search_path(q="beach", video="nobody"))
    assert (status, json.loads(body)) == (200, [])
    # The text only reaches the tokenizer, which takes any character, NUL included.
    assert get(port, "/search?q=%00%C3%A9")[0] == 200


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/search", "q (the search text) is required"),
        ("/search?q=", "q (the search text) is required"),
        ("/search?q=%20", "q (the search text) is required"),
        (search_path(q="x" * 10_001), "longer than 10000"),
        (search_path(q="x", limit="0"), "limit must be"),
        (search_path(q="x", limit="1000000000"), "limit must be"),
        (search_path(q="x", limit="ten"), "limit must be"),
        (search_path(q="x", limit="+5"), "limit must be"),
        (search_path(q="x", limit="1.5"), "limit must be"),
        (search_path(q="x", by="other"), "by must be one of frame, video"),
        (search_path(q="x", project="p2"), "unknown project"),
        (search_path(q="x", colour="red"), "unknown parameter"),
        ("/search?q=x&project=p%00", "cannot contain NUL"),
        ("/search?q=x&video=%00", "cannot contain NUL"),
        ("/search?q=x&q=y", "q given more than once"),
        ("/search?q=%ff", "malformed query string"),
        ("/frames/abc", "a frame id is a positive integer"),
        ("/frames/-1", "a frame id is a positive integer"),
        ("/frames/1.5", "a frame id is a positive integer"),
        ("/frames/../../etc/passwd", "a frame id is a positive integer"),
        ("/frames/99999999999999999999", "a frame id is a positive integer"),
        ("/frames/", "a frame id is a positive integer"),
        ("/frames/1?width=0", "width must be an integer between 16 and 1024"),
        ("/frames/1?width=15", "width must be an integer between 16 and 1024"),
        ("/frames/1?width=1025", "width must be an integer between 16 and 1024"),
        ("/frames/1?width=99999999999999999999", "width must be"),
        ("/frames/1?width=-64", "width must be"),
        ("/frames/1?width=%2B64", "width must be"),
        ("/frames/1?width=6%C2%B2", "width must be"),  # a superscript two: isdigit() says yes
        ("/frames/1?width=", "width must be"),
        ("/frames/1?width=64&width=65", "width given more than once"),
        ("/frames/1?height=64", "unknown parameter"),
        ("/frames/1?width=%ff", "malformed query string"),
    ],
)
def test_bad_input_is_a_400_with_a_json_error(port: int, path: str, message: str) -> None:
    status, headers, body = get(port, path)
    assert (status, headers["Content-Type"]) == (400, "application/json")
    assert message in json.loads(body)["error"]


@pytest.mark.parametrize("character", ["x", "€", "検", "😀"])
def test_queries_up_to_the_documented_limit_work_in_any_script(port: int, character: str) -> None:
    """Issue 30: a 10,000-character query of '€' (90,000 bytes percent-encoded) got
    http.server's 414 although 10,000 characters is the documented limit. Now q works up
    to the limit in any script (4-byte characters with filters too), and one character
    more is a 400 naming it."""
    text = character * search.MAX_TEXT
    status, headers, body = get(port, search_path(q=text, limit="3", project="p1", video="clip"))
    assert (status, headers["Content-Type"]) == (200, "application/json"), body[:300]
    assert len(json.loads(body)) == 3
    status, headers, body = get(port, search_path(q=text + character))
    assert (status, headers["Content-Type"]) == (400, "application/json")
    assert json.loads(body) == {"error": "search text is longer than 10000 characters"}


def test_a_request_line_over_the_limit_is_a_414_naming_it(port: int) -> None:
    status, headers, body = get(port, search_path(q="x", video="v" * 131_072))
    assert (status, headers["Content-Type"]) == (414, "application/json")
    assert json.loads(body) == {
        "error": "the request line is longer than 131072 bytes: q may hold at most 10000 "
        "characters (120000 bytes percent-encoded)"
    }
    assert get(port, search_path(q="x" * 60_000, video="v" * 70_000))[0] == 400  # under it
    assert get(port, "/livez")[0] == 200


def test_unknown_paths_methods_and_frames(port: int) -> None:
    status, _, body = get(port, "/nowhere")
    assert status == 404 and "not found" in json.loads(body)["error"]
    for method in ("POST", "PUT", "DELETE", "BREW"):
        status, _, body = get(port, "/search?q=x", method=method)
        assert status == 405, method
        assert json.loads(body) == {"error": "only GET is allowed"}
    status, _, body = get(port, "/frames/999999")
    assert status == 404 and json.loads(body) == {"error": "no such frame"}


def test_unknown_model_is_a_400(
    port: int, conn: psycopg.Connection[Any], tiny_siglip_dir: Path
) -> None:
    conn.execute("DELETE FROM argus.models WHERE model = %s", (str(tiny_siglip_dir),))
    status, _, body = get(port, search_path(q="x"))
    assert status == 400 and "has no embeddings in this database" in json.loads(body)["error"]


def test_frames_are_served_byte_for_byte_from_s3_and_file(
    frames: Path,
    conn: psycopg.Connection[Any],
    s3: S3Endpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "blue").save(buffer, "PNG")
    png = buffer.getvalue()
    support.add_video(
        conn,
        "remote",
        [s3.put("a/0.jpg", textured_jpeg(9)), s3.put("a/1.png", png), f"s3://{s3.bucket}/gone"],
        enqueue=False,
    )
    rows = conn.execute(
        "SELECT id, video_id, frame_index, image_uri FROM argus.frames ORDER BY video_id, "
        "frame_index"
    ).fetchall()
    ids = {(row["video_id"], row["frame_index"]): row["id"] for row in rows}
    monkeypatch.setenv("ARGUS_S3_ENDPOINT_URL", s3.url)
    with serve.running(settings.load(), "127.0.0.1", 0) as server:
        port = int(server.server_address[1])
        status, headers, body = get(port, f"/frames/{ids[('clip', 3)]}")
        assert (status, headers["Content-Type"]) == (200, "image/jpeg")
        assert body == (frames / "003.jpg").read_bytes()
        status, headers, body = get(port, f"/frames/{ids[('remote', 0)]}")
        assert (status, headers["Content-Type"], body) == (200, "image/jpeg", textured_jpeg(9))
        status, headers, body = get(port, f"/frames/{ids[('remote', 1)]}")
        assert (status, headers["Content-Type"], body) == (200, "image/png", png)
        status, _, body = get(port, f"/frames/{ids[('remote', 2)]}")
        assert status == 404 and "missing" in json.loads(body)["error"]
        assert s3.bucket not in body.decode()  # the storage location stays inside


def test_the_search_page_and_its_files(port: int) -> None:
    status, headers, body = get(port, "/")
    assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert b'<form id="search"' in body and b'src="/static/search.js"' in body
    # The page may load only its own files: an injected string could run nothing.
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert get(port, "/?q=a+car&by=video")[2] == body  # a shared address: the same page
    for path, kind in (
        ("/static/search.js", "text/javascript; charset=utf-8"),
        ("/static/search.css", "text/css; charset=utf-8"),
    ):
        status, headers, body = get(port, path)
        assert (status, headers["Content-Type"]) == (200, kind) and len(body) > 500
    for path in ("/static/", "/static/../pyproject.toml", "/static/index.html", "/index.html"):
        status, _, body = get(port, path)
        assert status == 404 and "not found" in json.loads(body)["error"], path
    assert get(port, "/", method="POST")[0] == 405


def test_frames_scaled_down_on_request(
    frames: Path, port: int, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    from PIL import Image

    (not_an_image := tmp_path / "not-an-image.jpg").write_bytes(b"plain text, not a JPEG")
    support.add_video(conn, "broken", [not_an_image.as_uri()], enqueue=False)
    ids = {
        (row["video_id"], row["frame_index"]): row["id"]
        for row in conn.execute("SELECT id, video_id, frame_index FROM argus.frames")
    }
    frame = ids[("clip", 2)]
    status, headers, body = get(port, f"/frames/{frame}?width=64")
    assert (status, headers["Content-Type"]) == (200, "image/jpeg")
    assert headers["Cache-Control"] == "private, max-age=86400"
    assert Image.open(io.BytesIO(body)).size == (64, 36)  # 160x90, the ratio kept
    # Never scaled up: as wide or wider than the frame is the frame itself.
    for width in (160, 1024):
        assert get(port, f"/frames/{frame}?width={width}")[2] == (frames / "002.jpg").read_bytes()
    for query in ("", "?width=64"):
        status, _, body = get(port, f"/frames/{ids[('broken', 0)]}{query}")
        assert (status, json.loads(body)) == (404, {"error": "the frame's file is not an image"})
    assert get(port, "/frames/999999?width=64")[0] == 404


def frame_ids(conn: psycopg.Connection[Any], video_id: str) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM argus.frames WHERE video_id = %s ORDER BY frame_index", (video_id,)
    ).fetchall()
    return [row["id"] for row in rows]


def test_frames_sends_only_images_never_other_files(
    frames: Path, port: int, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Issue 27: a frame row naming a secret, /proc/self/environ or a FIFO got 200 and the
    file's bytes (or hung the request); only an image of a format the daemon decodes goes
    out, with the Content-Type its bytes say."""
    from PIL import Image

    secret = tmp_path / "database-url"
    secret.write_text("postgresql://argus:hunter2-planted@db/argus\n")
    fifo = tmp_path / "frame.fifo"
    os.mkfifo(fifo)
    png_named_txt = tmp_path / "really-a-png.txt"
    Image.new("RGB", (8, 8), "red").save(png_named_txt, "PNG")
    jpeg_named_png = tmp_path / "really-a-jpeg.png"
    jpeg_named_png.write_bytes(textured_jpeg(3))
    uris = [
        secret.as_uri(),
        str(secret),  # a bare path
        "file:///proc/self/environ",
        "/etc/hostname",
        fifo.as_uri(),
        png_named_txt.as_uri(),
        str(jpeg_named_png),
    ]
    support.add_video(conn, "odd", uris, enqueue=False)
    ids = frame_ids(conn, "odd")
    for frame_id, uri in zip(ids[:5], uris, strict=False):
        for query in ("", "?width=64"):
            status, headers, body = get(port, f"/frames/{frame_id}{query}")
            assert (status, headers["Content-Type"]) == (404, "application/json"), uri
            assert b"hunter2" not in body and b"PATH=" not in body, uri
            assert json.loads(body)["error"] in {
                "the frame's file is not an image",
                "the frame's image is missing from storage",
            }, uri
    status, headers, body = get(port, f"/frames/{ids[5]}")
    assert (status, headers["Content-Type"], body) == (200, "image/png", png_named_txt.read_bytes())
    status, headers, body = get(port, f"/frames/{ids[6]}")
    assert (status, headers["Content-Type"], body) == (200, "image/jpeg", textured_jpeg(3))


def test_frames_only_under_file_roots(
    frames: Path,
    conn: psycopg.Connection[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With ARGUS_FILE_ROOTS set, serve reads local frames only under it: an image
    outside, a symlink in the root pointing out, a `..` path all get a 404 JSON."""
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(textured_jpeg(7))
    (frames / "link-out.jpg").symlink_to(outside)
    (frames / "link-in.jpg").symlink_to(frames / "001.jpg")
    uris = [
        outside.as_uri(),
        str(frames / "link-out.jpg"),
        f"{frames}/../outside.jpg",
        (frames / "link-in.jpg").as_uri(),
        str(frames / "002.jpg"),
    ]
    support.add_video(conn, "roots", uris, enqueue=False)
    ids = frame_ids(conn, "roots")
    caplog.set_level(logging.INFO, logger="argus_embedder")
    with serve.running(settings.load(), "127.0.0.1", 0) as server:
        port = int(server.server_address[1])
        assert get(port, f"/frames/{ids[0]}")[0] == 200  # unset: any image file
    assert "ARGUS_FILE_ROOTS is unset" in caplog.text
    caplog.clear()
    monkeypatch.setenv("ARGUS_FILE_ROOTS", f"/nonexistent-root:{frames}")
    refused = pytest.raises(errors.ConfigError, match="/nonexistent-root is not a directory")
    with refused, serve.running(settings.load(), "127.0.0.1", 0):
        pass
    monkeypatch.setenv("ARGUS_FILE_ROOTS", f"{tmp_path / 'elsewhere'}:{frames}")
    (tmp_path / "elsewhere").mkdir()
    with serve.running(settings.load(), "127.0.0.1", 0) as server:
        port = int(server.server_address[1])
        for frame_id in ids[:3]:
            status, headers, body = get(port, f"/frames/{frame_id}")
            assert (status, headers["Content-Type"]) == (404, "application/json")
            assert json.loads(body) == {"error": "the frame's file is outside ARGUS_FILE_ROOTS"}
        assert get(port, f"/frames/{ids[3]}")[2] == (frames / "001.jpg").read_bytes()
        assert get(port, f"/frames/{ids[4]}")[2] == (frames / "002.jpg").read_bytes()
    assert "ARGUS_FILE_ROOTS is unset" not in caplog.text
    assert f"local frames are read only under {tmp_path / 'elsewhere'}, {frames}" in caplog.text


def read_to_end(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_connections_are_bounded_with_a_503_beyond(frames: Path) -> None:
    """Issue 27: every connection got a thread and kept it while idle, so idle clients
    could hold any number of threads. Now a connection beyond the bound gets a 503 JSON
    and is closed; the others are unaffected, and a freed slot takes a new one."""
    with serve.running(settings.load(), "127.0.0.1", 0, max_connections=2) as server:
        port = int(server.server_address[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        try:
            support.wait_for(lambda: server.connections() == 2, 30, "two connections")
            with socket.create_connection(("127.0.0.1", port), timeout=30) as extra:
                extra.sendall(b"GET /search?q=beach HTTP/1.1\r\nHost: serve\r\n\r\n")
                head, _, body = read_to_end(extra).partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            assert lines[0] == "HTTP/1.1 503 Service Unavailable"
            assert {"Content-Type: application/json", "Connection: close"} <= set(lines)
            assert json.loads(body) == {"error": "too many connections (serve takes 2); try again"}
            # The idle ones still work.
            idle[0].sendall(b"GET /livez HTTP/1.1\r\nHost: serve\r\n\r\n")
            assert idle[0].recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        finally:
            for connection in idle:
                connection.close()
        support.wait_for(lambda: server.connections() == 0, 30, "the slots freed")
        assert get(port, "/livez")[0] == 200


def test_idle_and_stalled_connections_are_closed(frames: Path) -> None:
    """A connection that sends nothing, or stops halfway through its request, is closed
    after idle_seconds (30 in production; short here), freeing its thread."""
    with serve.running(settings.load(), "127.0.0.1", 0, idle_seconds=0.5) as server:
        port = int(server.server_address[1])
        whole = b"GET /livez HTTP/1.1\r\n\r\n"
        for sent, answered in ((b"", False), (whole[:-2], False), (whole, True)):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
                connection.sendall(sent)
                answer = read_to_end(connection)  # returns once the server closes
            # A whole request is answered, then the idle keep-alive closed; the others closed.
            assert answer.startswith(b"HTTP/1.1 200 OK") if answered else answer == b"", sent
        support.wait_for(lambda: server.connections() == 0, 30, "the slots freed")


def test_an_unexpected_error_is_a_500_without_a_traceback(
    frames: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(text: str) -> Any:
        raise RuntimeError("encoder exploded at /secret/path")

    with serve.running(settings.load(), "127.0.0.1", 0) as server:
        server.service.encode = broken
        status, headers, body = get(int(server.server_address[1]), search_path(q="beach"))
    assert (status, headers["Content-Type"]) == (500, "application/json")
    assert json.loads(body) == {"error": "internal error"}
    assert "encoder exploded" in caplog.text  # the log has it, the client does not


def exposed_samples(port: int) -> dict[str, float]:
    """/metrics as {'name{labels}': value}."""
    status, headers, body = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """One sample's value (labels in any order), 0.0 when absent."""
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        pairs = set(rest.rstrip("}").split(",")) - {""}
        if base == name and pairs == {f'{k}="{v}"' for k, v in labels.items()}:
            return value
    return 0.0


def test_health_and_metrics(
    port: int, tiny_siglip_dir: Path, conn: psycopg.Connection[Any]
) -> None:
    """Issue 29: serve's /metrics exported the daemon's job, frame and queue series as
    zeros and no build info; now it has its own series only."""
    assert get(port, "/livez")[:3:2] == (200, b"ok\n")
    status, _, body = get(port, "/readyz")
    verdict = json.loads(body)
    assert status == 200 and (verdict["ready"], verdict["reason"]) == (True, "ok")
    assert verdict["details"] == {"model": str(tiny_siglip_dir)}
    before = exposed_samples(port)
    assert get(port, search_path(q="beach"))[0] == 200
    assert get(port, "/frames/abc")[0] == 400
    [frame_id, *_] = frame_ids(conn, "clip")
    assert get(port, f"/frames/{frame_id}")[0] == 200
    assert get(port, f"/frames/{frame_id}?width=64")[0] == 200
    after = exposed_samples(port)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("argus_embedder_search_requests_total", endpoint="search", code="200") == 1
    assert grew("argus_embedder_search_requests_total", endpoint="frames", code="400") == 1
    assert grew("argus_embedder_search_requests_total", endpoint="frames", code="200") == 2
    assert grew("argus_embedder_search_seconds_count") == 1
    assert grew("argus_embedder_search_encode_seconds_count") == 1
    assert grew("argus_embedder_served_frames_total", size="original") == 1
    assert grew("argus_embedder_served_frames_total", size="scaled") == 1
    assert sample(after, "argus_embedder_search_connections") >= 1  # this scrape's
    build = [key for key in after if key.startswith("argus_embedder_build_info{")]
    assert len(build) == 1 and f'model="{tiny_siglip_dir}"' in build[0], build
    assert 'device="cpu"' in build[0] and f'version="{argus_embedder.__version__}"' in build[0]
    families = {key.partition("{")[0] for key in after if key.startswith("argus_embedder_")}
    for prefix in ("jobs_", "frames_", "queue_", "ready", "loop_", "stage_", "cuda_", "batch_"):
        leaked = {name for name in families if name.startswith("argus_embedder_" + prefix)}
        assert not leaked, leaked
    assert any(key.startswith("process_resident_memory_bytes") for key in after)


def test_a_client_that_hangs_up_is_no_server_error(
    frames: Path,
    conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 29: a client resetting the connection mid-answer was counted as a 500 and
    logged with a traceback. A raw socket reads the start of a large frame, then resets
    (SO_LINGER 0); another resets halfway through its request: nothing counted as an
    error, nothing logged above DEBUG, nothing on stderr."""
    from PIL import Image

    large = frames / "large.png"
    noise = np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(large, "PNG", compress_level=0)  # ~27 MB
    support.add_video(conn, "large", [large.as_uri()], enqueue=False)
    [frame_id] = frame_ids(conn, "large")
    capsys.readouterr()
    with serve.running(settings.load(), "127.0.0.1", 0) as server:
        port = int(server.server_address[1])
        caplog.clear()
        before = exposed_samples(port)
        for request in (f"GET /frames/{frame_id} HTTP/1.1\r\nHost: s\r\n\r\n", ""):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.settimeout(30)
            client.connect(("127.0.0.1", port))
            if request:
                client.sendall(request.encode())
                assert client.recv(4096).startswith(b"HTTP/1.1 200 OK")
            else:  # a reset while the request is being read
                client.sendall(b"GET /frames/")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # RST, with most of the image unsent
            support.wait_for(lambda: server.connections() == 0, 60, "the server to notice")
        after = exposed_samples(port)
        assert get(port, f"/frames/{frame_id}")[2] == large.read_bytes()  # still serving

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    requests = "argus_embedder_search_requests_total"
    for endpoint in ("frames", "other"):
        assert grew(requests, endpoint=endpoint, code="500") == 0, endpoint
    assert grew(requests, endpoint="frames", code="200") == 1  # the answer it began
    assert grew("argus_embedder_served_frames_total", size="original") == 0  # never whole
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG] == []
    assert "Traceback" not in capsys.readouterr().err


def test_serves_as_a_login_role_holding_only_argus_reader(
    frames: Path,
    login: Login,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARGUS_DATABASE_URL", login("argus_reader"))
    with serve.running(settings.load(), "127.0.0.1", 0) as server:
        port = int(server.server_address[1])
        assert get(port, "/readyz")[0] == 200
        for by in ("frame", "video"):
            status, _, body = get(port, search_path(q="beach", by=by, project="p1"))
            assert status == 200 and len(json.loads(body)) >= 1
        status, _, body = get(port, search_path(q="beach", limit="1"))
        [hit] = json.loads(body)
        assert get(port, f"/frames/{hit['frame_id']}")[0] == 200


def test_sigterm_exits_0(frames: Path) -> None:
    with support.serve_process() as served:
        assert get(served.port, "/livez")[0] == 200
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=30) == 0
