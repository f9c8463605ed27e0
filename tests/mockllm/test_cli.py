"""The command line: ``python -m fastproxy.mockllm`` and ``python -m fastproxy mock-llm``."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trustme

from fastproxy.mockllm import main

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server printed its URL (or died)
    prefix = "mock-llm listening on "
    if not line.startswith(prefix):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"unexpected first line {line!r}; stderr: {err}")
    return proc, line[len(prefix) :].strip()


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_module_entry_serves_until_signal(sig: int) -> None:
    proc, url = spawn(
        "-m", "fastproxy.mockllm", "--port", "0", "--models", "m1, m2", "--log-level", "warning"
    )
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert [m["id"] for m in httpx.get(url + "/models", timeout=5).json()["data"]] == [
            "m1",
            "m2",
        ]
        r = httpx.post(
            url + "/chat/completions",
            timeout=5,
            json={"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200 and r.json()["model"] == "m1"
    finally:
        code = stop(proc, sig)
    assert code == 0


def test_gateway_cli_subcommand_and_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path, ca_path = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    proc, url = spawn(
        "-m",
        "fastproxy",
        "mock-llm",
        "--port",
        "0",
        "--tls-cert",
        str(cert_path),
        "--tls-key",
        str(key_path),
    )
    try:
        assert url.startswith("https://")
        r = httpx.get(
            url + "/models", timeout=5, verify=ssl.create_default_context(cafile=str(ca_path))
        )
        assert r.status_code == 200
    finally:
        code = stop(proc)
    assert code == 0


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tls-key", "k.pem"]) == 2
    assert "--tls-cert" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--port", "nope"])
    assert info.value.code == 2
