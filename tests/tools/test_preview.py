"""Overlay previews and the HTML gallery, the gallery checked in a real headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.destination.reader import iter_images, read_id_map
from segpipe.io.storage import Folder
from segpipe.tools.preview import gallery_html, write_preview
from segpipe.tools.source_images import read_source_pixels
from tests.support.destinations import annotated

pytestmark = pytest.mark.usefixtures("ray_cluster")

@pytest.fixture(scope="module")
def panoptic_dst(tmp_path_factory, tiny_model, ray_cluster) -> Path:
    return annotated(tmp_path_factory, tiny_model, "panoptic")


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed on first use when we may (as root: a few minutes);
    otherwise the browser test is skipped."""
    found = find_chromium()
    if found is None:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("chromium is not installed and we are not root to install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env,
                       timeout=1200)
        found = find_chromium()
    assert found, "chromium was installed but is not on PATH"
    return found


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, as an object-store prefix would be."""
    root = tmp_path / "site"
    root.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        yield root, f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def gallery_data(index: Path) -> dict:
    text = index.read_text()
    match = re.search(r'<script id="gallery-data" type="application/json">(.*?)</script>', text, re.S)
    assert match, "the gallery embeds its data"
    return json.loads(match.group(1))


def enlarge(a: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


def test_overlays_color_segments_and_leave_void_alone(panoptic_dst, tmp_path):
    out = tmp_path / "preview"
    url = write_preview(str(panoptic_dst), out=str(out), limit=5)
    assert url == str(out / "index.html")
    folder = Folder(str(panoptic_dst))
    images = list(iter_images(folder, rle=False))[:5]
    data = gallery_data(out / "index.html")
    assert [item["id"] for item in data["items"]] == [f"{i.image_id:016x}" for i in images]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        f"{i.image_id:016x}.jpg" for i in images)

    checked = 0
    for image, item in zip(images, data["items"], strict=True):
        assert item["source"] is True
        assert [s["c"] for s in item["segments"]] == [s.category_name for s in image.segments]
        overlay = Image.open(out / item["src"]).convert("RGB")
        factor = overlay.width // image.width
        assert overlay.size == (image.width * factor, image.height * factor) and factor > 1
        source = enlarge(read_source_pixels(folder, image), factor)
        ids_up = enlarge(read_id_map(folder, image), factor)
        diff = np.abs(np.asarray(overlay, dtype=float) - source.astype(float)).mean(axis=2)
        assert np.median(diff[ids_up == 0]) < 12, "void pixels keep the source image"
        for seg in image.segments:
            if seg.area >= 4:
                assert np.median(diff[ids_up == seg.segment_id]) > 15, "segments are tinted"
                checked += 1
    assert checked > 0


def test_preview_defaults_to_the_destination(panoptic_dst, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(panoptic_dst, dst)
    url = write_preview(str(dst), limit=2)
    assert url == str(dst / "preview" / "index.html")
    assert len(gallery_data(dst / "preview" / "index.html")["items"]) == 2
    assert len(list((dst / "preview" / "images").iterdir())) == 2


def test_preview_without_source_images_still_shows_masks(panoptic_dst, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(panoptic_dst, dst, ignore=shutil.ignore_patterns("preview"))
    first = next(iter_images(Folder(str(dst)), segments=False))
    Path(first.image_uri).rename(tmp_path / "gone.png")  # the source went away
    try:
        write_preview(str(dst), out=str(tmp_path / "p"), limit=1)
    finally:
        (tmp_path / "gone.png").rename(first.image_uri)
    (item,) = gallery_data(tmp_path / "p" / "index.html")["items"]
    assert item["source"] is False
    assert (tmp_path / "p" / item["src"]).exists()


def chromium_run(chromium: str, tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--virtual-time-budget=5000", "--window-size=1280,1000", *args, url],
        capture_output=True, text=True, timeout=120, check=True)


def cards(dom: str) -> list[tuple[str, str, str]]:
    """(data-id, data-loaded, img src) of every gallery card in a dumped DOM."""
    found = []
    for m in re.finditer(r'<figure class="card" data-id="([0-9a-f]+)"([^>]*)>.*?<img src="([^"]+)"',
                         dom, re.S):
        loaded = re.search(r'data-loaded="(\w+)"', m.group(2))
        found.append((m.group(1), loaded.group(1) if loaded else "", m.group(3)))
    return found


@pytest.mark.slow
def test_gallery_renders_in_chromium(panoptic_dst, chromium, served, tmp_path):
    root, base = served
    write_preview(str(panoptic_dst), out=str(root / "preview"))
    data = gallery_data(root / "preview" / "index.html")
    items = data["items"]
    index = f"{base}/preview/index.html"

    dom = chromium_run(chromium, tmp_path, index, "--dump-dom").stdout
    shown = cards(dom)
    assert [c[0] for c in shown] == [it["id"] for it in items]
    assert all(loaded == "true" for _, loaded, _ in shown), "every overlay image loaded"
    assert [src for _, _, src in shown] == [it["src"] for it in items]
    assert f"{len(items)} of {len(items)} images" in dom

    # Filters and paging, from the URL fragment, as a shared link would open them.
    category = data["categories"][0]["name"]
    dom = chromium_run(chromium, tmp_path, f"{index}#category={category}", "--dump-dom").stdout
    assert [c[0] for c in cards(dom)] == [
        it["id"] for it in items if any(s["c"] == category for s in it["segments"])]
    scores = sorted(s["s"] for it in items for s in it["segments"] if s["s"] is not None)
    below = scores[len(scores) // 2]
    dom = chromium_run(chromium, tmp_path, f"{index}#below={below}", "--dump-dom").stdout
    low = [it["id"] for it in items if any(s["s"] is not None and s["s"] < below
                                           for s in it["segments"])]
    assert [c[0] for c in cards(dom)] == low and 0 < len(low) < len(items)
    dom = chromium_run(chromium, tmp_path, f"{index}#per=12&page=1", "--dump-dom").stdout
    assert len(cards(dom)) == min(12, len(items))

    shot = tmp_path / "gallery.png"
    chromium_run(chromium, tmp_path, index, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
    assert pixels.shape[:2] == (1000, 1280)
    grid = pixels[150:700]  # below the header: the overlay thumbnails
    assert grid.std() > 20, "the screenshot shows images, not a blank page"
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) > 2000


def test_an_installed_wheel_writes_the_same_gallery(tmp_path):
    """The gallery page is package data: a wheel must carry it, and the module installed
    from that wheel must write the same page as this checkout does."""
    repo = Path(__file__).resolve().parents[2]
    tree = tmp_path / "tree"
    shutil.copytree(repo / "segpipe", tree / "segpipe",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp_path / "dist"), str(tree)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("segpipe-*.whl")
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)

    data = {"dst": "s3://bucket/dst", "items": [],
            "categories": [{"name": "car</script>", "color": "#0a0b0c", "thing": True}]}
    script = ("import json, sys, segpipe.tools.preview as p; "
              "sys.stdout.write(p.__file__ + '\\n' + p.gallery_html(json.loads(sys.argv[1])))")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(data)], check=True,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(installed)})
    module_file, page = done.stdout.split("\n", 1)
    assert Path(module_file).is_relative_to(installed), "the wheel's module was the one run"
    assert page == gallery_html(data)
    assert "</html>" in page and "car\\u003c/script>" in page
