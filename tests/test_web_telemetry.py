"""No request data reaches a telemetry exporter, whatever the environment configures.

FastAPI (0.16x) traces every request through the global OpenTelemetry providers by
default, with the path and the query string as span attributes (a QIDO-RS query string
holds patient names and IDs). A site whose environment installs an OpenTelemetry SDK
(zero-code instrumentation, a platform's agent, ``FASTAPI_OTEL_AUTO_CONFIGURE``) would
export them. pacsvault turns FastAPI's telemetry off; this runs the real application
under an SDK tracer provider that records every span in memory.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import cli

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    from pacsvault.site import open_site
    from pacsvault.web.app import create_app

    async def get(app, path, query):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "https", "path": path, "raw_path": path.encode(),
                 "root_path": "", "query_string": query.encode(), "headers": [],
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8443)}
        sent = []
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}
        async def send(message):
            sent.append(message)
        await app(scope, receive, send)
        return sent[0]["status"]

    with open_site(Path(sys.argv[1])) as site:
        app = create_app(site)
        status = asyncio.run(get(app, "/dicom-web/studies", "PatientName=SECRET%5ENAME"))
    spans = exporter.get_finished_spans()
    text = json.dumps([dict(s.attributes or {}) for s in spans])
    print(json.dumps({"status": status, "spans": len(spans), "leaked": "SECRET" in text}))
    """
)


def test_no_span_carries_a_request_to_an_exporter(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cli(data, "init")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(data)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = proc.stdout.strip().splitlines()[-1]
    assert result == '{"status": 401, "spans": 0, "leaked": false}', result
