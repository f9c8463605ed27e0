"""Optional peers for bench/load: LiteLLM's proxy and the reference project.

Neither is installed by the benchmark. LiteLLM runs when ``import litellm`` works in the
benchmark's interpreter (``.venv/bin/pip install 'litellm[proxy]'``) or in the one
``BENCH_LITELLM_PYTHON`` names (a venv of its own keeps its ~150 packages out of
fastproxy's); the reference project (llm-interactive-proxy) runs when
``BENCH_REFERENCE_CMD`` says how to start it. Both get the same pinning as the other
relays and are measured the same way (docs/BENCHMARKS.md, "Optional peers").
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from .processes import MODEL, Proc, checked_start, free_port, spawn, taskset_prefix


def litellm_available(python: str) -> bool:
    return (
        subprocess.run(
            [python, "-c", "import litellm.proxy.proxy_cli"],
            capture_output=True,
            timeout=120,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        ).returncode
        == 0
    )


def start_litellm(mock_port: int, workdir: Path, cpus: tuple[int, ...] | None, python: str) -> Proc:
    """LiteLLM's proxy with one worker, pointed at the mock as an OpenAI-compatible API."""
    ldir = workdir / "litellm"
    ldir.mkdir()
    cfg = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"http://127.0.0.1:{mock_port}/v1",
                    "api_key": "bench",
                },
            }
        ],
        "litellm_settings": {"telemetry": False},
        # Recent releases refuse to start without a master key; the load generator sends
        # no credentials (nor does it to the other relays), and this listens on 127.0.0.1.
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }
    (ldir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    argv = [
        *taskset_prefix(cpus),
        python,
        "-m",
        "litellm.proxy.proxy_cli",
        "--config",
        str(ldir / "config.yaml"),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--num_workers",
        "1",
    ]
    # The local cost map: without it LiteLLM fetches one from GitHub at import, retrying
    # with back-off when offline.
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    popen, log = spawn("litellm", argv, ldir, env)
    return checked_start(Proc("litellm", popen, port, ldir, log), 120)


def start_reference(
    command: str, mock_port: int, workdir: Path, cpus: tuple[int, ...] | None
) -> Proc:
    """The reference project, started by a user-supplied shell command template.

    ``BENCH_REFERENCE_CMD`` holds the command with ``{port}`` (where it must listen) and
    ``{mock_url}`` (the OpenAI-compatible backend, ``http://127.0.0.1:PORT/v1``)."""
    rdir = workdir / "reference"
    rdir.mkdir()
    port = free_port()
    cmd = command.format(port=port, mock_url=f"http://127.0.0.1:{mock_port}/v1", dir=rdir)
    argv = [*taskset_prefix(cpus), "sh", "-c", "exec " + cmd]
    popen, log = spawn("reference", argv, rdir, dict(os.environ))
    proc = Proc("reference", popen, port, rdir, log, measure_children=True)
    return checked_start(proc, 120)
