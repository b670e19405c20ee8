"""`argus-embedder demo`: the whole path on an embedded PostgreSQL with drawn sample frames."""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import random
import shlex
import shutil
import sys
import threading
from pathlib import Path

import psycopg
from PIL import Image, ImageDraw, ImageFilter

from argus_embedder import db, hub
from argus_embedder.commands import demo_model, moments, progress, search, status
from argus_embedder.commands import serve as serve_defaults
from argus_embedder.gateways import frames, queue
from argus_embedder.settings import Settings

log = logging.getLogger(__name__)

# (name, sky colour, ground colour, what is drawn on it)
SCENES = [
    ("beach", (135, 206, 235), (238, 214, 175), "sun"),
    ("forest", (120, 170, 120), (34, 100, 34), "trees"),
    ("night city", (10, 10, 40), (40, 40, 50), "windows"),
    ("red car on a road", (170, 200, 230), (90, 90, 90), "car"),
    ("snowy mountain", (200, 220, 240), (250, 250, 250), "mountain"),
    ("desert", (250, 210, 150), (220, 170, 90), "dunes"),
]
FRAMES_PER_SCENE = 6
FRAME_INTERVAL_MS = 1000  # as if extracted at one frame a second
PROJECT = "demo"
QUERY = "a red car on a road"


def run(config: Settings) -> int:
    """Embed a few dozen sample frames in two videos, show status and a search as moments,
    then say what to run next. Everything lands in the embedded database that every
    command uses when ARGUS_DATABASE_URL is unset, so those next commands work as they
    are; a second run adds no frame, no job and no vector."""
    out = sys.stdout
    if logging.getLogger().level > logging.DEBUG:  # a progress bar says it better
        logging.getLogger("argus_embedder").setLevel(logging.WARNING)
    data_dir = db.embedded_data_dir()
    print(f"demo: embedded PostgreSQL 18 + pgvector in {data_dir}", file=out)
    url = db.embedded_url(data_dir, quiet=True)
    db.migrate(url)

    frame_dir = data_dir.parent / "demo-frames"
    paths = draw_frames(frame_dir)
    print(f"demo: {len(paths)} sample frames in {frame_dir}", file=out)

    model, tiny = _demo_model(config, data_dir.parent)
    demo_model.record(model, tiny=tiny)
    config = dataclasses.replace(
        config, database_url=url, model=model, metrics_port=0, reconcile_interval=0
    )
    with db.connect(url, autocommit=True) as connection:
        half = len(paths) // 2
        for video_id, chunk in (("demo-video-1", paths[:half]), ("demo-video-2", paths[half:])):
            # Existing (video, index) pairs are left alone.
            frames.insert(
                connection,
                [
                    frames.NewFrame(
                        video_id,
                        index,
                        path.as_uri(),
                        project_id=PROJECT,
                        timestamp_ms=index * FRAME_INTERVAL_MS,
                    )
                    for index, path in enumerate(chunk)
                ],
            )
        # A job only for a video with frames lacking the model's rows: a second demo
        # adds no job and re-embeds nothing.
        enqueued = queue.enqueue_missing(
            connection,
            ["demo-video-1", "demo-video-2"],
            model=model,
            configured_model=model,
            priority=0,
            respect_failures=False,
        )
        print(f"demo: ingested 2 videos and enqueued {len(enqueued)} job(s)", file=out)
    if enqueued:
        _embed(config, url, len(paths))
    else:
        print("demo: every frame already has its vector (an earlier demo); nothing to embed")
    with db.connect(url, autocommit=True) as connection:
        print("\n" + status.render(status.collect(connection)), file=out)
        _search(config, connection)
    _next_steps(tiny)
    return 0


def _demo_model(config: Settings, cache: Path) -> tuple[str, bool]:
    """The configured model if it is loadable here; else a tiny local one, said plainly.
    Returns the model and whether it is the tiny one."""
    if hub.is_local(config.model) or hub.offline_reason(config.model) is None:
        return config.model, False
    from argus_embedder.testing import tinymodel

    print(
        "demo: no access to the Hugging Face hub, so the demo uses a TINY RANDOM SigLIP "
        "built locally.\n      Its search results are meaningless for quality; with hub "
        f"access the demo uses {config.model}.",
        file=sys.stdout,
    )
    directory = cache / "demo-tiny-siglip"
    if not (directory / "config.json").exists():
        tinymodel.build(directory, family="siglip")
    readable_by_all(directory)  # also a directory an older demo left at 0600
    return str(directory), True


def readable_by_all(directory: Path) -> None:
    """Give the model's files the modes the umask allows (0644 under the usual 022).

    safetensors writes its weights through a 0600 temporary file; the same directory
    mounted into the container (or read by the unit's service user) would then be
    unreadable to a user other than the one who ran the demo.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        mode = 0o777 if path.is_dir() else 0o666
        path.chmod(mode & ~umask)


def _embed(config: Settings, url: str, total: int) -> None:
    from argus_embedder.pipeline import embedder, worker

    model = embedder.load_embedder(config.model, config.device, config.batch_size)
    finished = threading.Event()

    def watch(bar: progress.Progress) -> None:
        with db.connect(url, autocommit=True) as connection:
            while not finished.wait(0.2):
                row = connection.execute(
                    db.queries()["frames_embedded"], {"model": config.model}
                ).fetchone()
                bar.update(int(row["done"]) if row else 0)
            row = connection.execute(
                db.queries()["frames_embedded"], {"model": config.model}
            ).fetchone()
            bar.update(int(row["done"]) if row else 0)

    with progress.Progress("embed", total) as bar:
        watcher = threading.Thread(target=watch, args=(bar,), daemon=True)
        watcher.start()
        with worker.Worker(config, url, model) as loop:
            loop.run(burst=True)
        finished.set()
        watcher.join()


def _search(config: Settings, connection: psycopg.Connection[object]) -> None:
    from argus_embedder.pipeline import embedder

    text = embedder.load_text_encoder(config.model, config.device)
    query = text.embed_texts([QUERY])[0]
    videos = search.found(connection, config.model, query, by="video", limit=5)
    print(f'\nsearch "{QUERY}" --by video: the moments of each video, best first', file=sys.stdout)
    sys.stdout.flush()  # print_videos writes through print() too; keep the order
    moments.print_videos(videos)


def invocation() -> str:
    """How the user can run this same argus-embedder: its name where PATH finds this
    installation's script; else that script's path as typed (`.venv/bin/argus-embedder`
    after the README's install) or the one beside this interpreter, relative to the
    current directory when under it; else `python -m argus_embedder`."""
    typed = Path(sys.argv[0])  # as the user typed it: `.venv/bin/argus-embedder demo`
    script = typed if typed.name == "argus-embedder" and typed.is_file() else None
    script = script or Path(sys.executable).parent / "argus-embedder"
    found = shutil.which("argus-embedder")
    if found is not None and (not script.exists() or Path(found).samefile(script)):
        return "argus-embedder"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m argus_embedder"
    try:
        shown = str(Path(os.path.relpath(script)))
    except ValueError:  # another drive (Windows)
        shown = str(script)
    if shown.startswith(".."):
        shown = str(script)
    elif not shown.startswith("."):
        shown = "./" + shown
    return shlex.quote(shown)


def _next_steps(tiny: bool) -> None:
    """What to run next, as this shell can run it: with nothing configured, each uses
    the demo's database (and, offline, its tiny model)."""
    url = f"http://{serve_defaults.DEFAULT_HOST}:{serve_defaults.DEFAULT_PORT}/"
    command = invocation()
    lines = [
        "",
        "next, with no variable set (the same embedded database"
        + (", and the demo's tiny model" if tiny else "")
        + "):",
        f"  {command} status",
        f'  {command} search "{QUERY}" --by video',
        f"  {command} serve        then open {url}",
    ]
    print("\n".join(lines), file=sys.stdout)


@dataclasses.dataclass(frozen=True)
class _Canvas:
    width: int
    horizon: int
    shift: int
    rng: random.Random


def draw_frames(directory: Path, *, width: int = 640, height: int = 360) -> list[Path]:
    """Draw FRAMES_PER_SCENE textured JPEG frames of each scene; frames already on disk
    are kept, so the images stay those a previous demo embedded."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(59)  # noqa: S311 - sample pictures, not secrets
    paths = []
    for scene_index, (name, sky, ground, motif) in enumerate(SCENES):
        for shot in range(FRAMES_PER_SCENE):
            image = Image.new("RGB", (width, height), sky)
            draw = ImageDraw.Draw(image)
            horizon = int(height * (0.55 + 0.05 * rng.random()))
            draw.rectangle([0, horizon, width, height], fill=ground)
            MOTIFS[motif](draw, _Canvas(width, horizon, shot * 17, rng))
            noise = Image.effect_noise((width, height), 24).convert("RGB")
            image = Image.blend(image, noise, 0.12).filter(ImageFilter.SMOOTH)
            path = directory / f"{scene_index:02d}-{name.replace(' ', '-')}-{shot:02d}.jpg"
            paths.append(path)
            if path.exists():
                continue
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            partial = path.with_suffix(".part")  # a demo stopped mid-write leaves no half JPEG
            partial.write_bytes(buffer.getvalue())
            partial.replace(path)
    return paths


def _sun(draw: ImageDraw.ImageDraw, scene: _Canvas) -> None:
    left = scene.width - 160 + scene.shift
    draw.ellipse([left, 30, left + 80, 110], fill=(255, 230, 60))


def _trees(draw: ImageDraw.ImageDraw, scene: _Canvas) -> None:
    for x in range(20 + scene.shift % 40, scene.width, 70):
        green = 80 + scene.rng.randrange(40)
        draw.polygon(
            [(x, scene.horizon), (x + 30, scene.horizon - 120), (x + 60, scene.horizon)],
            fill=(20, green, 20),
        )


def _windows(draw: ImageDraw.ImageDraw, scene: _Canvas) -> None:
    for x in range(30, scene.width, 60):
        top = scene.horizon - 80 - scene.rng.randrange(120)
        draw.rectangle([x, top, x + 40, scene.horizon], fill=(30, 30, 60))
        lit = [y for y in range(top + 8, scene.horizon - 8, 16) if scene.rng.random() < 0.6]
        for y in lit:
            draw.rectangle([x + 8, y, x + 16, y + 6], fill=(255, 220, 120))


def _car(draw: ImageDraw.ImageDraw, scene: _Canvas) -> None:
    left, road = 120 + scene.shift * 3, scene.horizon
    draw.rectangle([left, road + 30, left + 220, road + 90], fill=(210, 20, 20))
    draw.rectangle([left + 50, road - 5, left + 170, road + 30], fill=(190, 15, 15))
    for wheel in (left + 30, left + 150):
        draw.ellipse([wheel, road + 70, wheel + 45, road + 115], fill=(15, 15, 15))


def _mountain(draw: ImageDraw.ImageDraw, scene: _Canvas) -> None:
    s = scene.shift
    draw.polygon(
        [(50 + s, scene.horizon), (300 + s, 40), (560 + s, scene.horizon)], fill=(120, 120, 140)
    )
    draw.polygon([(240 + s, 100), (300 + s, 40), (360 + s, 100)], fill=(255, 255, 255))


def _dunes(draw: ImageDraw.ImageDraw, scene: _Canvas) -> None:
    for offset in range(3):
        top = scene.horizon - 40 + offset * 30
        left = -100 + offset * 200 + scene.shift
        draw.ellipse([left, top, left + 400, top + 160], fill=(230 - offset * 15, 180, 100))


MOTIFS = {
    "sun": _sun,
    "trees": _trees,
    "windows": _windows,
    "car": _car,
    "mountain": _mountain,
    "dunes": _dunes,
}


def main(args: argparse.Namespace, config: Settings) -> int:
    """`argus-embedder demo`."""
    return run(config)
