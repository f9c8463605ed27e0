"""The default backend of bench/load: nginx answering canned responses from memory.

A Python mock LLM saturates before the relays do (``direct`` at ~39k req/s with the mock
at 100 % of its core), which caps every figure and makes each relay's ratio to ``direct``
look better than it is. nginx serving fixed bytes goes several times faster, so the
relay is the bottleneck and the ratios say what the relay costs.

What it serves (one worker pinned where the mock would be; keep-alive on with
``keepalive_requests`` high; no access log):

- ``POST /v1/chat/completions``: the JSON chat completion below (OpenAI shape with a
  ``usage`` object, ~600 bytes like the mock's 16-token answer), by ``return 200``
  straight from the config;
- the same path with the request header ``x-bench-stream: 1`` (nginx cannot read the
  JSON body cheaply, so the load generator says "stream" in a header, which fastproxy
  forwards like any non-hop-by-hop header): a 200-event SSE chat stream (a role chunk,
  200 content chunks, a finish chunk, a usage chunk, ``data: [DONE]``) from a file in a
  tmpfs directory behind ``open_file_cache``, sent chunked (as the mock and the real
  APIs send streams; the empty ``sub_filter`` is there only to drop the content length);
- ``GET /v1/models``: the model list (the generated fastproxy config lists its model
  anyway, so the gateway does not need it at start).

What it cannot do is pace: scenarios ``bp`` (2 ms between events) and ``c`` (slow
streams held open) keep the mock; the report says which backend each scenario used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .processes import MODEL, Proc, checked_start, free_port, spawn, taskset_prefix

BENCH_DIR = Path(__file__).resolve().parent
STREAM_EVENTS = 200  # content events; with role, finish, usage and [DONE]: 204 events
CREATED = 1_700_000_000
WORDS = [
    "Horizon",
    "drift",
    "softly",
    "the",
    "jumps",
    "clouds",
    "sleeps",
    "as",
    "clouds",
    "stars",
    "stories",
    "after",
    "well",
    "distant",
    "visitor",
    "glow.",
]


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def usage(completion_tokens: int) -> dict[str, object]:
    return {
        "prompt_tokens": 7,
        "completion_tokens": completion_tokens,
        "total_tokens": 7 + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_json() -> str:
    """The canned chat completion: the mock's 16-token answer, 613 bytes."""
    return _dumps(
        {
            "id": "chatcmpl-bench000000000001",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": " ".join(WORDS),
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage(len(WORDS)),
            "system_fingerprint": "fp_bench",
        }
    )


def chat_sse(events: int = STREAM_EVENTS) -> str:
    """The canned stream: OpenAI chunks, ``events`` content events, usage, ``[DONE]``."""
    head = {
        "id": "chatcmpl-bench000000000002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
    }

    def chunk(delta: dict[str, object], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return "data: " + _dumps({**head, "choices": [choice]}) + "\n\n"

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    for i in range(events):
        word = WORDS[i % len(WORDS)]
        out.append(chunk({"content": word if i == 0 else " " + word}))
    out.append(chunk({}, "stop"))
    out.append("data: " + _dumps({**head, "choices": [], "usage": usage(events)}) + "\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out)


def models_json() -> str:
    return _dumps(
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}],
        }
    )


def _nginx_literal(text: str) -> str:
    """``text`` as a single-quoted nginx config string (it must fit the 4 KiB token buffer)."""
    if len(text) > 3500:
        raise ValueError("an nginx config string is limited to one 4 KiB buffer")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_conf(conf_dir: Path, canned_dir: Path, port: int) -> str:
    """The nginx config of the canned backend (bench/load/nginx-backend.conf, filled in)."""
    template = (BENCH_DIR / "nginx-backend.conf").read_text()
    return (
        template.replace("{{DIR}}", str(conf_dir))
        .replace("{{CANNED}}", str(canned_dir))
        .replace("{{PORT}}", str(port))
        .replace("{{CHAT_JSON}}", _nginx_literal(chat_json()))
        .replace("{{MODELS_JSON}}", _nginx_literal(models_json()))
    )


def canned_dir(workdir: Path) -> Path:
    """A directory in memory (tmpfs /dev/shm when there is one) for the canned stream."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else workdir
    path = Path(tempfile.mkdtemp(prefix="fastproxy-bench-canned-", dir=base))
    # The worker drops to an unprivileged user when nginx starts as root.
    os.chmod(path, 0o755)
    (path / "chat.sse").write_text(chat_sse())
    os.chmod(path / "chat.sse", 0o644)
    return path


class CannedBackend(Proc):
    """The nginx backend process; ``stop`` also removes its tmpfs directory."""

    def stop(self, timeout_s: float = 10.0) -> None:
        super().stop(timeout_s)
        canned = self.info.get("canned_dir")
        if canned:
            shutil.rmtree(canned, ignore_errors=True)


def start_nginx_backend(binary: str, workdir: Path, cpus: tuple[int, ...] | None) -> Proc:
    bdir = workdir / "backend-nginx"
    bdir.mkdir()
    os.chmod(workdir, 0o755)
    canned = canned_dir(workdir)
    port = free_port()
    conf_path = bdir / "nginx.conf"
    conf_path.write_text(render_conf(bdir, canned, port))
    argv = [*taskset_prefix(cpus), binary, "-p", str(bdir), "-c", str(conf_path)]
    popen, log = spawn("backend-nginx", argv, bdir)
    proc = CannedBackend(
        "nginx-backend",
        popen,
        port,
        bdir,
        log,
        info={"canned_dir": str(canned)},
        measure_children=True,
    )
    try:
        return checked_start(proc, 15)
    finally:
        if not proc.alive():
            shutil.rmtree(canned, ignore_errors=True)
