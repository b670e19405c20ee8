"""The search page in a real browser: Debian's headless `chromium` loads `/` from a real
`serve` over a real database with real frames, a query is typed and submitted, and the
test reads the rendered DOM (thumbnails decoded, moments with their time ranges), not
the HTML source."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder import cli, settings
from argus_embedder.commands import demo, moments, serve
from tests import support
from tests.acceptance import chromium

HOSTILE = '<img src=x onerror="document.title=1">'  # a video id the frame stage may send
QUERY = "a red car on a road"

# Every result card as the page shows it, read from the DOM.
CARDS = """
[...document.querySelectorAll("#results .card")].map((card) => {
  const image = card.querySelector("img");
  const section = card.closest(".video");
  return {
    kind: card.classList.contains("moment") ? "moment" : "frame",
    video: (section || card).querySelector(".video-id").textContent,
    range: card.querySelector(".range").textContent,
    score: card.querySelector(".score").textContent,
    src: image.getAttribute("src"),
    loaded: image.complete && image.naturalWidth > 0,
    width: image.naturalWidth,
  };
})
"""
# Every thumbnail on the page has finished (loaded or failed).
SETTLED = (
    "document.querySelectorAll('#results img').length > 0 && "
    "[...document.querySelectorAll('#results img')].every((image) => image.complete)"
)


def rendered(kind: str) -> str:
    """The page has shown its answer (it counts `kind`s) and every thumbnail finished."""
    return f"document.getElementById('status').textContent.includes('{kind}(s)') && {SETTLED}"


def api(port: int, path: str) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        return json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[chromium.Chromium]:
    executable = chromium.binary()
    if executable is None:
        pytest.skip("no `chromium` on PATH (Debian: apt-get install chromium; .ci/run does)")
    try:
        started = chromium.Chromium(executable, tmp_path / "chromium-profile")
    except (chromium.BrowserError, OSError) as error:
        pytest.skip(f"chromium cannot run here: {error}")
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def port(
    conn: psycopg.Connection[Any],
    database_url: str,
    tiny_siglip_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[int]:
    """`serve` over the demo's drawn frames (two videos of three scenes, 1 frame/s) and
    a video whose id is HTML, all embedded by `run --burst`."""
    paths = demo.draw_frames(tmp_path / "frames")
    half = len(paths) // 2
    for video_id, chunk in (("video-1", paths[:half]), ("video-2", paths[half:])):
        uris = [path.as_uri() for path in chunk]
        support.add_video(conn, video_id, uris, project_id="demo", interval_ms=1000)
    support.add_video(conn, HOSTILE, [paths[0].as_uri()], project_id="demo", interval_ms=1000)
    support.use_database(monkeypatch, database_url, tiny_siglip_dir)
    assert cli.main(["run", "--burst"]) == 0
    with serve.running(settings.load(), "127.0.0.1", 0) as server:
        yield int(server.server_address[1])


def test_typed_query_renders_moments_with_loaded_thumbnails(
    port: int, browser: chromium.Chromium
) -> None:
    started = time.monotonic()
    browser.navigate(f"http://127.0.0.1:{port}/")
    assert browser.evaluate("document.activeElement.id") == "q"  # the box has the focus
    browser.type_text(QUERY)
    browser.press_enter()
    browser.wait_for(rendered("video"))
    cards = browser.evaluate(CARDS)

    # What the page shows is what the API answers, moment by moment, best video first.
    videos = api(port, "/search?" + browser.evaluate("location.search.slice(1)") + "&limit=10")
    assert browser.evaluate("location.search") == "?q=a+red+car+on+a+road&by=video"
    expected = [
        {
            "kind": "moment",
            "video": video["video_id"],
            "range": f"{moments.clock(m['start_ms'])}\N{EN DASH}{moments.clock(m['end_ms'])}",
            "score": f"score {m['score']:.3f}",
            "src": f"/frames/{m['frame_id']}?width=480",
        }
        for video in videos
        for m in video["moments"]
    ]
    assert [{key: card[key] for key in expected[0]} for card in cards] == expected
    assert {card["video"] for card in cards} == {"video-1", "video-2", HOSTILE}
    assert any(card["range"] != "00:00\N{EN DASH}00:00" for card in cards)  # real ranges
    # Every thumbnail decoded, scaled down by the server (the frames are 640 wide).
    assert all(card["loaded"] and card["width"] == 480 for card in cards), cards
    # The hostile id is text on the page, never markup: no element it could have made.
    assert browser.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert browser.evaluate("document.title") == "argus-embedder search"
    print(f"browser: query to rendered moments in {time.monotonic() - started:.1f}s")


def test_frames_toggle_project_filter_and_errors(port: int, browser: chromium.Chromium) -> None:
    # A shared address runs its search on load; the toggle then shows single frames.
    browser.navigate(f"http://127.0.0.1:{port}/?q=a+beach&by=video&project=demo")
    browser.wait_for(rendered("video"))
    assert browser.evaluate("document.getElementById('project').value") == "demo"
    browser.evaluate("document.querySelector('input[value=frame]').click()")
    browser.evaluate("document.querySelector('button[type=submit]').click()")
    browser.wait_for(rendered("frame"))
    cards = browser.evaluate(CARDS)
    hits = api(port, "/search?q=a+beach&project=demo&by=frame&limit=24")
    thumbnails = [f"/frames/{hit['frame_id']}?width=480" for hit in hits]
    assert [card["src"] for card in cards] == thumbnails
    assert all(card["kind"] == "frame" and card["loaded"] for card in cards)
    assert [card["range"] for card in cards] == [moments.clock(hit["timestamp_ms"]) for hit in hits]

    # A bad request is the API's message, shown as an error, and no stale results.
    browser.evaluate("document.getElementById('project').value = 'nobody'")
    browser.evaluate("document.querySelector('button[type=submit]').click()")
    browser.wait_for("document.getElementById('status').classList.contains('error')")
    assert browser.evaluate("document.getElementById('status').textContent") == "unknown project"
    assert browser.evaluate("document.querySelectorAll('#results .card').length") == 0
