"""The dashboard in headless Chromium: it loads clean, shows the usage stats' own numbers,
follows new traffic, shows a breaker opening (table and event stream), shows live
connections and fits a phone-sized screen.

``FASTPROXY_SCREENSHOT=docs/dashboard.png`` makes the breaker test save its page there
(docs/dashboard.md shows it).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import BREAKER_THRESHOLD, Stack, StackFactory, console_errors

NO_VALUE = "\u2013"  # the en dash the page shows where it has no number (yet)
WAIT_S = 20  # two ticks of the page are 4 s; the deadline leaves room for a busy machine


def waiting(driver: Any, timeout: float, poll_frequency: float) -> Any:
    """Selenium's wait, also retrying an element the page re-rendered between the find
    and the read (the tables are rebuilt every tick): that is not yet, not a failure."""
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=poll_frequency,
        ignored_exceptions=(StaleElementReferenceException,),
    )


def text(driver: Any, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def number(shown: str) -> float:
    """A number as the page formats it (thousands commas) back to a float."""
    return float(shown.replace(",", ""))


def wait_text(driver: Any, css: str, want: str, timeout: float = WAIT_S) -> None:
    def shown(d: Any) -> bool:
        els = d.find_elements(By.CSS_SELECTOR, css)
        return bool(els) and els[0].text == want

    try:
        waiting(driver, timeout, poll_frequency=0.1).until(shown)
    except Exception as exc:
        els = driver.find_elements(By.CSS_SELECTOR, css)
        now = els[0].text if els else "(no such element)"
        raise AssertionError(f"{css} shows {now!r}, never {want!r}") from exc


def open_dashboard(driver: Any, stack: Stack) -> None:
    driver.get(stack.admin + "/")
    assert driver.title == "fastproxy dashboard"
    # The first tick has run when the health badge left "connecting…".
    waiting(driver, WAIT_S, poll_frequency=0.1).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("ok", "degraded")
    )
    wait_text(driver, "#events-state", "live")


def assert_matches_stats(driver: Any, stats: dict[str, Any]) -> None:
    """Every number the page shows from /v1/usage/stats equals the endpoint's."""
    assert number(text(driver, "#kpi-requests")) == stats["request_count"]
    assert number(text(driver, "#kpi-tokens")) == stats["total_tokens"]
    assert number(text(driver, "#kpi-sessions")) == stats["unique_sessions"]
    assert stats["total_cost"] > 0  # gpt-4o is in the price table: a cost to compare
    assert number(text(driver, "#kpi-cost")) == pytest.approx(stats["total_cost"], abs=1e-6)
    # Errors: every request without a 1xx to 3xx status (4xx, 5xx and "none").
    errors = sum(
        n
        for code, n in stats["status_code_counts"].items()
        if not (code.isdigit() and 100 <= int(code) < 400)
    )
    assert number(text(driver, "#kpi-errors")) == errors
    for field in ("ttft_stats", "proxy_overhead_stats", "duration_stats"):
        s = stats[field]
        assert s is not None, field
        row = f'#latency tr[data-stat="{field}"]'
        assert number(text(driver, f'{row} td[data-field="count"]')) == s["count"]
        for k in ("p50_ms", "p95_ms", "p99_ms", "avg_ms", "max_ms"):
            shown = number(text(driver, f'{row} td[data-field="{k}"]'))
            assert shown == pytest.approx(s[k], abs=1e-3), (field, k)
    for table in ("by_backend", "by_model"):
        assert stats[table], table
        for name, group in stats[table].items():
            row = f'#breakdown-{table} tr[data-name="{name}"]'
            for k in ("request_count", "total_tokens", "total_prompt_tokens", "error_count"):
                assert number(text(driver, f'{row} td[data-field="{k}"]')) == group[k], (name, k)
            cost = number(text(driver, f'{row} td[data-field="total_cost"]'))
            assert cost == pytest.approx(group["total_cost"], abs=1e-6)
    if "by_key" in stats:  # the key breakdown, where the gateway has it
        assert driver.find_elements(By.CSS_SELECTOR, "#breakdown-by_key")


def test_page_loads_clean_shows_the_stats_numbers_and_follows_new_requests(
    page: Any, stack: Stack
) -> None:
    stack.chat()
    stack.chat(stream=True)  # a stream, so there is a TTFT
    stack.chat(stream=True)
    # A 400, relayed to the client: an error in the totals that opens no breaker.
    stack.loop.call(
        lambda: stack.primary.set_behaviour(path_prefix="/v1/chat/completions", status=400)
    )
    with pytest.raises(openai.BadRequestError):
        stack.chat()
    stack.loop.call(stack.primary.clear_behaviour)
    stats = stack.recorded(4)
    assert stats["status_code_counts"]["400"] == 1
    open_dashboard(page, stack)
    wait_text(page, "#kpi-requests", "4")
    assert text(page, "#kpi-errors") == "1"
    assert_matches_stats(page, stats)
    # openai.2 served nothing: the breakdown names only what the stats name.
    assert page.find_elements(By.CSS_SELECTOR, '#breakdown-by_backend tr[data-name="openai.1"]')
    assert not page.find_elements(By.CSS_SELECTOR, '#breakdown-by_backend tr[data-name="openai.2"]')

    # A new request, through the official SDK: the count, its backend's row and the
    # requests-per-second rate (from /metrics) all move.
    stack.chat(model="gpt-4o-mini")
    waiting(page, WAIT_S, poll_frequency=0.05).until(
        # A dash until the page has two /metrics samples to take a rate from.
        lambda d: d.find_element(By.ID, "kpi-rps").text not in (NO_VALUE, "0")
    )
    stack.recorded(5)
    wait_text(page, "#kpi-requests", "5")
    wait_text(
        page, '#breakdown-by_backend tr[data-name="openai.2"] td[data-field="request_count"]', "1"
    )
    assert_matches_stats(page, stack.stats())
    assert console_errors(page) == []


def test_a_backend_turning_unhealthy_shows_in_the_table_and_the_event_history(
    page: Any, stack: Stack
) -> None:
    stack.chat(stream=True)
    stack.recorded(1)
    open_dashboard(page, stack)
    breaker = '#backends tr[data-backend="openai.1"] td[data-field="circuit_state"]'
    wait_text(page, breaker, "closed")
    assert text(page, "#status") == "ok"

    # openai.1's backend answers 500 now: relayed to the client, and counted by the
    # breaker until it opens.
    stack.loop.call(
        lambda: stack.primary.set_behaviour(path_prefix="/v1/chat/completions", status=500)
    )
    for _ in range(BREAKER_THRESHOLD):
        with pytest.raises(openai.InternalServerError):
            stack.chat()
    wait_text(page, breaker, "open")
    assert page.find_element(By.CSS_SELECTOR, breaker).get_attribute("data-state") == "open"
    wait_text(page, "#status", "degraded")
    failure = '#backends tr[data-backend="openai.1"] td[data-field="last_failure"]'
    assert text(page, failure) == "HTTP 500"
    # The transition arrived on the event stream (read with fetch: it carries no
    # history, so it is the live stream that put it there).
    event = '#events li[data-subject="openai.1"][data-to="open"]'
    waiting(page, WAIT_S, poll_frequency=0.1).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, event)
    )
    assert "closed → open" in text(page, event)
    # The errors show in the totals as well, once they are recorded.
    stats = stack.recorded(1 + BREAKER_THRESHOLD)
    wait_text(page, "#kpi-errors", str(BREAKER_THRESHOLD))
    assert stats["status_code_counts"]["500"] == BREAKER_THRESHOLD
    shot = os.environ.get("FASTPROXY_SCREENSHOT")
    if shot:
        save_screenshot(page, stack, Path(shot))
    assert console_errors(page) == []


def save_screenshot(driver: Any, stack: Stack, path: Path) -> None:
    """The whole page at desktop width, with traffic on the chart and a live stream."""
    for _ in range(3):
        stack.chat(model="gpt-4o-mini", stream=True)
    wait_text(driver, "#kpi-requests", "6")
    stack.loop.call(
        lambda: stack.secondary.set_behaviour(
            path_prefix="/v1/chat/completions", tokens=40, interval_ms=150
        )
    )
    worker = threading.Thread(
        target=lambda: stack.chat(model="gpt-4o-mini", stream=True), daemon=True
    )
    worker.start()
    waiting(driver, WAIT_S, poll_frequency=0.1).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#connections tbody tr")
    )
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": int(height), "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        worker.join(WAIT_S)


def test_live_connections_show_as_in_fastproxy_top(page: Any, stack: Stack) -> None:
    open_dashboard(page, stack)
    assert page.find_elements(By.CSS_SELECTOR, "#connections tbody tr") == []
    # A slow stream: 40 tokens 100 ms apart stays live for about 4 s.
    stack.loop.call(
        lambda: stack.secondary.set_behaviour(
            path_prefix="/v1/chat/completions", tokens=40, interval_ms=100
        )
    )
    done = threading.Event()
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            stack.chat(model="gpt-4o-mini", stream=True)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=slow, daemon=True)
    worker.start()
    row = "#connections tbody tr"
    waiting(page, WAIT_S, poll_frequency=0.1).until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
    cells = [c.text for c in page.find_elements(By.CSS_SELECTOR, row + " td")]
    assert cells[0] == "openai.2"
    assert cells[2] == "streaming"
    assert cells[3] == "gpt-4o-mini"
    assert text(page, "#kpi-active") == "1"
    assert done.wait(WAIT_S) and not errors, errors
    worker.join(5)
    waiting(page, WAIT_S, poll_frequency=0.1).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, row)
    )
    wait_text(page, "#kpi-active", "0")
    assert console_errors(page) == []


def test_a_phone_sized_screen_shows_everything_in_one_column(page: Any, stack: Stack) -> None:
    stack.chat(stream=True)
    stack.recorded(1)
    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        open_dashboard(page, stack)
        wait_text(page, "#kpi-requests", "1")
        assert page.execute_script("return window.innerWidth") == 375
        overflow = page.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert overflow[0] <= overflow[1], overflow
        # One column: every panel starts at the same left edge.
        lefts = page.execute_script(
            "return [...document.querySelectorAll('main > .panel')]"
            ".map(p => Math.round(p.getBoundingClientRect().left))"
        )
        assert len(set(lefts)) == 1, lefts
        phone = os.environ.get("FASTPROXY_SCREENSHOT_PHONE")
        if phone:
            page.save_screenshot(phone)
        assert console_errors(page) == []
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_budget_events_on_the_stream_show_in_the_history(
    driver: Any, stack_factory: StackFactory
) -> None:
    """The event stream also carries budget thresholds (docs/health.md): a key whose
    first request spends past its budget shows both crossings, and by_key names it."""
    secret = "sk-alice-0123456789abcdef"
    stack = stack_factory(
        {
            "auth": {
                "keys": [
                    {
                        "name": "alice",
                        "secret_env": "ALICE_KEY",
                        # Far below one gpt-4o request: its cost crosses 80% and 100%.
                        "budget": {"usd": 0.00001, "period": "day"},
                    }
                ]
            }
        },
        env={"ALICE_KEY": secret},
    )
    stack.api_key = secret
    driver.get("about:blank")
    driver.get_log("browser")
    try:
        open_dashboard(driver, stack)
        stack.chat()
        event = '#events li[data-kind="budget"][data-subject="key:alice"]'
        for percent in (80, 100):
            waiting(driver, WAIT_S, poll_frequency=0.1).until(
                lambda d, p=percent: any(
                    f"{p}% of its" in li.text for li in d.find_elements(By.CSS_SELECTOR, event)
                )
            )
        stats = stack.recorded(1)
        wait_text(driver, "#kpi-requests", "1")
        if "by_key" in stats:
            row = '#breakdown-by_key tr[data-name="alice"] td[data-field="request_count"]'
            wait_text(driver, row, "1")
        assert secret not in driver.page_source
        assert console_errors(driver) == []
    finally:
        driver.get("about:blank")
