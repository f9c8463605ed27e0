"""The fastproxy+tracing variant's OTLP/HTTP collector: a small server on the helper core
that reads each export and answers 200, keeping nothing (the variant measures what the
gateway spends to trace, not what a collector does with the spans). It counts the
exports it took in ``count`` so the harness can tell a variant that traced from one
that only accepted the config key."""

from __future__ import annotations

import sys
from pathlib import Path

from . import processes as P

_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

count_path = sys.argv[2]
posts = 0


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global posts
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
        posts += 1
        with open(count_path, "w") as fh:
            fh.write(str(posts))

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


def start_otlp_sink(workdir: Path, cpus: tuple[int, ...] | None) -> P.Proc:
    port = P.free_port()
    count = workdir / "otlp-sink.count"
    argv = [*P.taskset_prefix(cpus), sys.executable, "-c", _SERVER, str(port), str(count)]
    popen, log = P.spawn("otlp-sink", argv, workdir)
    proc = P.Proc("otlp-sink", popen, port, workdir, log)
    proc.info["count_path"] = count
    return P.checked_start(proc, 15)


def exports(sink: P.Proc) -> int:
    try:
        return int(Path(sink.info["count_path"]).read_text() or 0)
    except (OSError, ValueError):
        return 0
