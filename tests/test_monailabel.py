"""
The bundle as a MONAI Label app: a real MONAI Label 0.8.5 server (in .venv-monailabel, which
``scripts/setup_monailabel_env.sh`` makes) serving a copy of the bundle as a local model of the ``monaibundle`` sample
app, on real LGG patients, over HTTP.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import LGG_ROOT, REPO_ROOT, copy_bundle, require_shared
from xunet_bundle.lgg import prepare_dataset

pytestmark = pytest.mark.slow  # builds .venv-monailabel (several GB) and runs a MONAI Label server

MODEL = "xunet_lgg_segmentation"
VENV = REPO_ROOT / ".venv-monailabel"
BUNDLE_CONTENT = ("configs", "models", "docs", "xunet_bundle", "LICENSE")
# test patients of the default split, never used in training the shipped weights: one to segment, two to train on
INFER_PATIENT = "TCGA_HT_7684_19950816"
TRAIN_PATIENTS = ("TCGA_CS_5396_20010302", "TCGA_HT_7473_19970826")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 600):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read(), response.headers


def multipart(fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of text fields (what MONAI Label's /infer and /train take as ``params``)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * np.logical_and(prediction, truth).sum() / (prediction.sum() + truth.sum())


@pytest.fixture(scope="module")
def monailabel_env() -> Path:
    subprocess.run(["bash", "scripts/setup_monailabel_env.sh"], cwd=REPO_ROOT, check=True, timeout=1800)
    return VENV


@pytest.fixture(scope="module")
def patients(tmp_path_factory) -> Path:
    """The patients of this test converted by scripts/prepare_lgg.py's code (imagesTr/, labelsTr/)."""
    lgg_root = require_shared(LGG_ROOT)
    src = tmp_path_factory.mktemp("kaggle_3m")
    for name in (INFER_PATIENT, *TRAIN_PATIENTS):
        (src / name).symlink_to(lgg_root / name)
    dst = tmp_path_factory.mktemp("prepared") / "lgg"
    prepare_dataset(src, dst, num_folds=1, test_fraction=0.0, on_error="stop", progress=False)
    return dst


@pytest.fixture(scope="module")
def server(shipped_weights, patients, monailabel_env, tmp_path_factory):  # patients first: skip before building the env
    """A MONAI Label server on 127.0.0.1 with the bundle as the monaibundle app's local model; yields its URL."""
    work = tmp_path_factory.mktemp("monailabel")
    env = {**os.environ, "PATH": f"{monailabel_env / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    subprocess.run(
        ["monailabel", "apps", "--download", "--name", "monaibundle", "--output", str(work / "apps")],
        cwd=work, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    bundle = work / "apps" / "monaibundle" / "model" / MODEL
    copy_bundle(bundle, BUNDLE_CONTENT)
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for name in (INFER_PATIENT, *TRAIN_PATIENTS):
        shutil.copy(patients / "imagesTr" / f"{name}.nii.gz", studies)
    for name in TRAIN_PATIENTS:  # labelled studies, the training set of /train
        shutil.copy(patients / "labelsTr" / f"{name}.nii.gz", studies / "labels" / "final")

    port = free_port()
    log = open(work / "server.log", "w")
    process = subprocess.Popen(
        [
            "monailabel", "start_server", "--app", str(work / "apps" / "monaibundle"), "--studies", str(studies),
            "--conf", "models", MODEL, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
            "--conf", "preload", "false", "--host", "127.0.0.1", "--port", str(port),
        ],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                http("GET", f"{url}/info/", timeout=10)
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("server did not start:\n" + (work / "server.log").read_text()[-5000:])
                time.sleep(3)
        yield {"url": url, "bundle": bundle, "patients": patients, "log": work / "server.log"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def infer(server) -> nib.Nifti1Image:
    body, headers = multipart({"params": json.dumps({"device": "cpu"})})
    content, _ = http("POST", f"{server['url']}/infer/{MODEL}?image={INFER_PATIENT}&output=image", body, headers)
    return nib.Nifti1Image.from_bytes(gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content)


def test_info_lists_the_model_with_its_labels(server):
    content, _ = http("GET", f"{server['url']}/info/")
    info = json.loads(content)
    model = info["models"][MODEL]
    assert model["labels"] == {"tumor": 1}
    assert model["dimension"] == 2 and model["type"] == "segmentation"
    assert MODEL in info["trainers"]


def test_infer_returns_the_input_geometry_and_a_good_segmentation(server):
    seg = infer(server)
    image = nib.load(server["patients"] / "imagesTr" / f"{INFER_PATIENT}.nii.gz")
    truth = np.asarray(nib.load(server["patients"] / "labelsTr" / f"{INFER_PATIENT}.nii.gz").dataobj)
    prediction = np.asarray(seg.dataobj)
    assert prediction.shape == image.shape[:3]
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)
    assert set(np.unique(prediction).tolist()) <= {0, 1}
    assert dice(prediction > 0, truth > 0) > 0.5


def test_train_writes_weights_that_the_next_inference_uses(server):
    weights = server["bundle"] / "models" / "model.pt"
    before_hash = hashlib.sha256(weights.read_bytes()).hexdigest()
    before = np.asarray(infer(server).dataobj)
    # as 3D Slicer does: a background training task, polled until it ends; MONAI Label's default validation split
    # leaves the 2 labelled volumes all to training
    params = json.dumps({"max_epochs": 1, "device": "cpu", "multi_gpu": False, "pretrained": True}).encode()
    http("POST", f"{server['url']}/train/{MODEL}", params, {"Content-Type": "application/json"})
    deadline = time.monotonic() + 1200
    while True:
        status = json.loads(http("GET", f"{server['url']}/train/")[0])
        if status.get("status") not in ("SUBMITTED", "QUEUED", "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert status.get("status") == "DONE", status.get("details", status)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() != before_hash, "training wrote no new model.pt"
    after = np.asarray(infer(server).dataobj)
    assert after.shape == before.shape and not np.array_equal(after, before)
