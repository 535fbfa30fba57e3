"""The real Label Studio server: our tasks with predictions go in through its API, a reviewer's
edits are submitted as annotations through its API, and its own JSON export comes back into
`segpipe import`.

Label Studio pins many packages, so it lives in a virtualenv of its own (`make
test-labelstudio` makes one); this test runs when SEGPIPE_LABEL_STUDIO names its
`label-studio` executable.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from segpipe.destination.reviews import latest_reviews
from segpipe.io.storage import Folder
from segpipe.review.importing import run_import
from tests.review.labelstudio_edits import brush_item, exported_tasks
from tests.support.reviews import prelabels, reviewer_edits, thing_names

SERVER = os.environ.get("SEGPIPE_LABEL_STUDIO")
TOKEN = "segpipe-test-token-0123456789abcdef0123"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SERVER, reason="SEGPIPE_LABEL_STUDIO is not set")]


@dataclass
class Server:
    session: requests.Session
    api: str  # http://127.0.0.1:PORT/api


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("label-studio")
    port = _free_port()
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(data),
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LABEL_STUDIO_DISABLE_SIGNUP="false")
    log = (data / "server.log").open("w")
    server = subprocess.Popen(
        [str(SERVER), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data), "--username", "reviewer@example.com", "--password",
         "segpipe-test", "--user-token", TOKEN], env=env, stdout=log, stderr=subprocess.STDOUT)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {TOKEN}"
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 900  # migrations take minutes on a loaded machine
        while True:
            try:
                if session.get(f"{api}/projects", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Label Studio did not start:\n"
                                   + (data / "server.log").read_text()[-3000:])
            time.sleep(2)
        yield Server(session, api)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_real_label_studio_round_trip(label_studio, dst, tmp_path):
    api, label_studio = label_studio.api, label_studio.session
    tasks = exported_tasks(dst, tmp_path / "tasks.json")
    config = (tmp_path / "label_config.xml").read_text()
    project = label_studio.post(f"{api}/projects", json={"title": "segpipe",
                                                         "label_config": config})
    project.raise_for_status()
    pid = project.json()["id"]
    label_studio.post(f"{api}/projects/{pid}/import", json=tasks).raise_for_status()
    stored = label_studio.get(f"{api}/tasks", params={"project": pid, "page_size": 100}).json()
    stored = stored["tasks"] if isinstance(stored, dict) else stored
    assert len(stored) == len(tasks)

    images = sorted(prelabels(str(dst)), key=lambda p: -sum(s.is_thing for s in p[0].segments))
    edits = reviewer_edits(*images[0], thing_names(str(dst)))
    by_image = {int(t["data"]["segpipe_image_id"]): t for t in stored}
    for image, _ in images[:2]:
        task = by_image[image.image_id]
        if image.image_id == edits.image.image_id:
            result = [brush_item(n, m, f"r{i}") for i, (n, m) in enumerate(edits.masks)]
        else:
            result = next(t for t in tasks if int(t["data"]["segpipe_image_id"])
                          == image.image_id)["predictions"][0]["result"]
        label_studio.post(f"{api}/tasks/{task['id']}/annotations",
                          json={"result": result, "lead_time": 21.5}).raise_for_status()

    export = label_studio.get(f"{api}/projects/{pid}/export", params={"exportType": "JSON",
                                                                      "download_all_tasks": "true"})
    export.raise_for_status()
    (tmp_path / "project.json").write_bytes(export.content)
    exported = export.json()
    assert len(exported) == len(tasks)  # the unannotated task too
    assert all(isinstance(t["data"]["segpipe_image_id"], str) for t in exported)
    done = run_import(str(dst), "labelstudio", str(tmp_path / "project.json"))
    expected = dict(edits.expected)
    expected["accepted"] += len(images[1][0].segments)
    assert done["segments"] == expected
    assert (done["images"], done["not_reviewed"]) == (2, len(tasks) - 2)
    rows = latest_reviews(Folder(str(dst))).to_pylist()
    assert {r["reviewer_seconds"] for r in rows} == {21.5}
    assert json.loads((dst / "reviewed/panoptic.json").read_text())["images"]
    assert Path(dst / "tables/reviews").exists()
