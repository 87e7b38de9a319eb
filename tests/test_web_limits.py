"""Per-client request limits hold for streamed answers until their last byte."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom.uid import generate_uid

from conftest import cli
from pacsvault.dicom.synthetic import image
from test_load_balancer import set_in_section
from test_web import add_user, http, token, url


def test_a_streamed_retrieval_counts_until_its_last_byte(data_dir: Path, make_server,
                                                         tmp_path: Path) -> None:  # fmt: skip
    # 3 x 32 MB: more than loopback's socket buffers, so the answer is still being sent.
    study, series = generate_uid(), generate_uid()
    files = tmp_path / "big"
    files.mkdir()
    for n in range(3):
        ds = image(patient_id="LIM1", patient_name="Limit^Test", birth_date="19700101", sex="O",
                   study_uid=study, study_date="20260101", study_time="120000", accession="A1",
                   study_description="limits", series_uid=series, series_number=1,
                   modality="CT", instance_number=n + 1, rows=4096, columns=4096)  # fmt: skip
        ds.save_as(files / f"{n}.dcm", enforce_file_format=True)
    cli(data_dir, "import", str(files))
    set_in_section(data_dir, "web", "max_requests_per_client", "1")
    add_user(data_dir, "rad", "radiologist")
    secret = token(data_dir, "rad", "read")
    server = make_server(data_dir)
    first, second = http(server, secret), http(server, secret)
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    streaming = first.get(url(server, f"/dicom-web/studies/{study}"), headers=accept,
                          stream=True, timeout=30)  # fmt: skip
    assert streaming.status_code == 200
    chunks = streaming.iter_content(1 << 20)
    received = len(next(chunks))  # started, far from finished
    busy = second.get(url(server, "/dicom-web/studies"), timeout=30)
    assert busy.status_code == 429, busy.text
    assert busy.headers["Retry-After"] == "1"
    assert busy.headers["Content-Security-Policy"].startswith("default-src 'self'")
    received += sum(len(c) for c in chunks)
    assert received > 3 * 4096 * 4096 * 2
    streaming.close()
    deadline = time.monotonic() + 10  # the server ends the request just after its last byte
    while (after := second.get(url(server, "/dicom-web/studies"), timeout=30)).status_code == 429:
        assert time.monotonic() < deadline, "the finished retrieval still counts"
        time.sleep(0.1)
    assert after.status_code == 200, after.text
    assert after.headers["Cache-Control"] == "no-store"
