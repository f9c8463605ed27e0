"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium, against a real gateway process whose backends are
the project's mock LLM servers on 127.0.0.1.

Chromium missing is a failure, not a skip: a dashboard nobody loads in a browser is not
tested. ``scripts/test.sh`` installs both packages when they are missing (as root, with
apt); elsewhere ``apt-get install chromium chromium-driver``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fastproxy.mockllm import MockLLMServer
from tests.conftest import backend_for
from tests.support.loop_thread import LoopThread
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"
MSGS = [{"role": "user", "content": "Name a prime number."}]
BREAKER_THRESHOLD = 2


def _browser_paths() -> tuple[str, str]:
    binary = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which(DRIVER)
    if binary is None or driver is None:
        pytest.fail(
            "headless Chromium and chromedriver are needed for tests/dashboard: "
            "apt-get install chromium chromium-driver (scripts/test.sh does it as root)"
        )
    return binary, driver


@pytest.fixture(scope="session")
def driver() -> Iterator[Any]:
    """One headless Chromium for the session; each test opens its own gateway's page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        opts.add_argument(arg)
    # The browser console (errors, failed loads, uncaught exceptions) for get_log.
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium would otherwise try to download one.
    d = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    d.set_page_load_timeout(30)
    try:
        yield d
    finally:
        d.quit()


@dataclass
class Stack:
    """A gateway process with two backends, each on its own mock LLM."""

    proc: GatewayProcess
    primary: MockLLMServer  # openai.1
    secondary: MockLLMServer  # openai.2
    loop: LoopThread
    api_key: str = "sk-client"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proc.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.proc.admin_port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key, max_retries=0)

    def chat(self, model: str = "gpt-4o", stream: bool = False) -> None:
        with self.client() as c:
            if stream:
                chunks = c.chat.completions.create(
                    model=model,
                    messages=MSGS,  # type: ignore[arg-type]
                    stream=True,
                    stream_options={"include_usage": True},
                )
                assert "".join(
                    ch.choices[0].delta.content or "" for ch in chunks if ch.choices
                ).strip()
            else:
                r = c.chat.completions.create(model=model, messages=MSGS)  # type: ignore[arg-type]
                assert r.choices[0].message.content

    def stats(self) -> dict[str, Any]:
        r = httpx.get(self.admin + "/v1/usage/stats", timeout=10)
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    def recorded(self, n: int) -> dict[str, Any]:
        """The stats once ``n`` requests are in the usage store (it writes in batches)."""
        return wait_until(
            lambda: (s := self.stats())["request_count"] == n and s,
            timeout=20,
            interval=0.1,
            what=f"{n} usage records",
        )


StackFactory = Callable[..., Stack]


@pytest.fixture
def stack_factory(
    mock_factory: Callable[..., MockLLMServer], server_loop: LoopThread, tmp_path: Path
) -> Iterator[StackFactory]:
    """``make(extra_config, env)``: a gateway process on two fresh mocks (one per test)."""
    procs: list[GatewayProcess] = []

    def make(extra: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Stack:
        a, b = mock_factory(), mock_factory()
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({**base_config(a, b, tmp_path), **(extra or {})}))
        proc = GatewayProcess(["--config", str(path)], env=env, cwd=str(tmp_path))
        procs.append(proc)
        proc.wait_ready()
        wait_until(lambda: proc.admin_port, timeout=10, what="the admin listener")
        return Stack(proc, a, b, server_loop)

    try:
        yield make
    finally:
        for proc in procs:
            code = proc.stop()
            assert code == 0, proc.output()[-4000:]


@pytest.fixture
def stack(stack_factory: StackFactory) -> Stack:
    return stack_factory()


def base_config(a: MockLLMServer, b: MockLLMServer, tmp_path: Path) -> dict[str, Any]:
    return {
        "port": 0,
        "admin": {"port": 0},
        "state_dir": str(tmp_path),
        "backends": {
            "openai.1": backend_for(a, "openai", models=["gpt-4o"]),
            "openai.2": backend_for(b, "openai", models=["gpt-4o-mini"]),
        },
        "default_backend": "openai.1",
        "enable_activity_tracking": True,
        "usage_tracking": {
            "persistence_path": str(tmp_path / "usage.db"),
            "flush_interval_seconds": 0.1,
        },
        # Probes quiet: the breaker is driven by live traffic, as a test can steer it.
        "health_check": {"ping": {"enabled": False}, "http": {"interval_seconds": 60}},
        "circuit_breaker": {"failure_threshold": BREAKER_THRESHOLD, "open_cooldown_seconds": 120},
    }


@pytest.fixture
def page(driver: Any, stack: Stack) -> Iterator[Any]:
    """The browser on ``stack``'s dashboard; the console read clean at the start."""
    driver.get("about:blank")
    driver.get_log("browser")  # drop what earlier tests left
    yield driver
    # Leave the page before the gateway stops, so its polling does not fail into the
    # next test's console.
    driver.get("about:blank")


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
