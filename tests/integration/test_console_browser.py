"""The operator's console in a real browser: Debian's headless Chromium, driven through
its chromedriver by Selenium, against ``execq api``, a worker, the simulator, PostgreSQL
and Redis. Pages refresh themselves (every second here); nothing is reloaded by hand.

With ``EXECQ_CONSOLE_SCREENSHOTS=<dir>`` the tests also save the screenshots the docs show.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for
from tests.integration.test_console_http import (
    BOT_KEY,
    CONSOLE_ENV,
    HOSTILE,
    OPERATOR_KEY,
    VIEWER_KEY,
    store_hostile_order,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--force-device-scale-factor=1",
)
LAPTOP = (1280, 860)
PHONE = (390, 844)
ETH = "ETH/USDT:USDT"
SCREENSHOTS = os.environ.get("EXECQ_CONSOLE_SCREENSHOTS")
MAX_SCREENSHOT_BYTES = 150 * 1024

# An aged position that stays in grace (its target is breakeven) while the price moves.
AGED_GRACE_ENV = {
    "EXECQ_AGED__MAX_AGE_S": "1",
    "EXECQ_AGED__GRACE_PERIOD_S": "600",
    "EXECQ_AGED__COMMISSION_PERCENT": "0.05",
    "EXECQ_AGED_SWEEP_INTERVAL_S": "0.5",
    "EXECQ_RECOVERY_SWEEP_INTERVAL_S": "3600",
}


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(
            "the browser tests need Debian's chromium and chromium-driver "
            "(apt-get install -y --no-install-recommends chromium chromium-driver; "
            ".ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={LAPTOP[0]},{LAPTOP[1]}")
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(profile / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def console_url(database: str, redis_server: str, process_stack) -> Iterator[str]:
    url = process_stack.start_api(name="console-browser", extra_env=CONSOLE_ENV)
    yield url
    process_stack.processes["console-browser"].stop()


@pytest.fixture
def page(chrome, console_url: str, db, redis_clean) -> Iterator[object]:
    """The browser, logged out, at the laptop size, on clean state."""
    chrome.set_window_size(*LAPTOP)
    chrome.get(f"{console_url}/console/login")
    chrome.delete_all_cookies()
    yield chrome


def log_in(driver, console_url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{console_url}/console/login")
    driver.find_element(By.ID, "api_key").send_keys(key)
    driver.find_element(By.ID, "login").click()
    wait_for(
        lambda: driver.current_url == f"{console_url}/console",
        10,
        message="the login did not land on the overview",
    )


def text_of(driver, selector: str) -> str | None:
    """The text of the first element matching ``selector`` now, or None."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.CSS_SELECTOR, selector)
        return found[0].text if found else None
    except StaleElementReferenceException:
        # The live refresh replaced it between the lookup and the read.
        return None


def send_signal(console_url: str, **changes: str) -> dict:
    body = {
        "signal_id": f"console-{uuid.uuid4().hex[:12]}",
        "exchange": "binance",
        "symbol": ETH,
        "side": "buy",
        "amount": "0.1",
        **changes,
    }
    with httpx.Client(base_url=console_url, timeout=10) as api:
        accepted = api.post(
            "/v1/signals", json=body, headers={"Authorization": f"Bearer {BOT_KEY}"}
        )
    assert accepted.status_code == 202, accepted.text
    return accepted.json()


def screenshot(driver, name: str, size: tuple[int, int] = LAPTOP, full: bool = True) -> None:
    """Save the page as ``<name>.png`` under EXECQ_CONSOLE_SCREENSHOTS (when set)."""
    if not SCREENSHOTS:
        return
    width, height = size
    if full:
        height = min(2400, driver.execute_script("return document.body.scrollHeight") + 40)
    driver.set_window_size(width, height)
    path = Path(SCREENSHOTS) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.set_window_size(*LAPTOP)
    assert path.stat().st_size < MAX_SCREENSHOT_BYTES, f"{path} is larger than 150 KB"


def price_line(driver) -> list[str]:
    """The points of the aged chart's price line (none yet: empty)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        lines = driver.find_elements(By.CSS_SELECTOR, "#chart polyline.price-line")
        return lines[0].get_attribute("points").split() if lines else []
    except StaleElementReferenceException:
        return []


def order_status(client_order_id: str) -> str | None:
    from workers.store.orders import load_order

    order = load_order(client_order_id)
    return None if order is None else str(order.status)


# --- what the page shows --------------------------------------------------------------------


def test_a_login_holds_no_key_in_the_browser_and_a_logout_ends_it(page, console_url):
    from selenium.webdriver.common.by import By

    log_in(page, console_url, OPERATOR_KEY)
    cookie = page.get_cookie("execq_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert OPERATOR_KEY not in cookie["value"]
    assert OPERATOR_KEY not in page.page_source
    # Scripts cannot read the session cookie
    assert "execq_console" not in page.execute_script("return document.cookie")
    page.find_element(By.ID, "logout").click()
    wait_for(lambda: page.current_url.endswith("/console/login"), 10, message="no logout")
    page.get(f"{console_url}/console")
    assert page.current_url.endswith("/console/login")


def test_the_page_shows_a_position_opened_by_a_signal(page, console_url, worker, sim):
    # Given an operator looking at the overview
    log_in(page, console_url, VIEWER_KEY)
    assert text_of(page, "#positions") is not None
    # When a producer's signal opens a long
    send_signal(console_url)
    # Then, without a reload, the position shows with its size, entry, mark and PnL
    row = "#positions tr[data-position] "
    wait_for(
        lambda: text_of(page, row + "td.size") == "0.1",
        30,
        message="the position never showed on the page",
    )
    entry = text_of(page, row + "td.entry")
    assert Decimal(entry) == Decimal(sim.price("binance", ETH))
    assert text_of(page, row + "td.symbol") == ETH
    assert text_of(page, row + "td.side") == "long"
    # The mark is the price the order's own check cached (the fill's), with its age
    assert text_of(page, row + "td.mark").split()[0] == entry
    assert text_of(page, row + "td.pnl").startswith("0.00")


def test_an_aged_episodes_distance_changes_when_the_price_moves(page, console_url, workers, sim):
    from selenium.webdriver.common.by import By

    from tests.integration.test_aged import open_position, start_stack, stop_stack

    # Given a long at 3500 that aged while the price fell to 3400 (target: breakeven)
    _, beat = start_stack(workers, AGED_GRACE_ENV, AGED_GRACE_ENV)
    try:
        sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
        open_position("binance", ETH, "buy", "0.1")
        sim.prices({"exchange": "binance", "symbol": ETH, "price": "3400"})
        log_in(page, console_url, OPERATOR_KEY)
        row = "#aged tr[data-aged] "
        wait_for(
            lambda: text_of(page, row + "td.distance") == "+103.51 (+3.044 %)",
            30,
            message=f"the aged episode never showed: {text_of(page, '#aged')}",
        )
        assert text_of(page, row + "td.target") == "3503.51"
        assert text_of(page, row + "td.price") == "3400"
        # When the price moves up, still short of the target
        sim.prices({"exchange": "binance", "symbol": ETH, "price": "3450"})
        # Then the page shows the new price and distance by itself
        wait_for(
            lambda: text_of(page, row + "td.distance") == "+53.51 (+1.551 %)",
            30,
            message=f"the distance did not follow the price: {text_of(page, '#aged')}",
        )
        assert text_of(page, row + "td.price") == "3450"

        # And the episode's chart draws the price, as it moves, under the target line
        page.find_element(By.CSS_SELECTOR, row + "td a").click()
        wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#chart svg"), 10)
        for price, distance in (("3470", "+33.51 (+0.966 %)"), ("3490", "+13.51 (+0.387 %)")):
            sim.prices({"exchange": "binance", "symbol": ETH, "price": price})
            wait_for(lambda d=distance: text_of(page, row + "td.distance") == d, 30)
        wait_for(
            lambda: len(price_line(page)) >= 3,
            30,
            message="the chart's price line did not follow the price",
        )
        assert page.find_elements(By.CSS_SELECTOR, "#chart polyline.target-line")
        if SCREENSHOTS:
            # A resting order too, so the overview shows every section at work
            send_signal(console_url, price="3000", amount="0.2")
            wait_for(lambda: text_of(page, "#orders table.resting td.status"), 30)
            page.execute_script("document.getElementById('chart').scrollIntoView()")
            screenshot(page, "console-aged-chart", (900, 620), full=False)
            page.get(f"{console_url}/console")
            screenshot(page, "console-overview")
            screenshot(page, "console-phone", PHONE)
    finally:
        stop_stack(workers, beat)


# --- actions --------------------------------------------------------------------------------


def test_the_kill_switch_toggled_from_the_page_refuses_the_next_open(
    page, console_url, worker, sim
):
    from selenium.webdriver.common.by import By

    # Given an operator who turns the kill switch on from the page, with a reason
    log_in(page, console_url, OPERATOR_KEY)
    page.find_element(By.ID, "kill-reason").send_keys("exchange incident")
    page.find_element(By.ID, "kill-on").click()
    # Then a confirmation is asked first
    wait_for(lambda: text_of(page, "#confirm-state") == "ON", 10, message="no confirmation")
    assert text_of(page, "#confirm-reason") == "exchange incident"
    screenshot(page, "console-confirm", (900, 640), full=False)
    page.find_element(By.ID, "confirm-button").click()
    # And once confirmed, the page says it is on, and by which key
    wait_for(
        lambda: (text_of(page, "#kill-switch") or "").startswith("KILL SWITCH ON"),
        10,
        message="the kill switch banner did not turn on",
    )
    assert "api key operator (console)" in text_of(page, "#kill-switch")
    assert text_of(page, "#notice") == "Kill switch ON: exchange incident"

    # When a producer sends the next open
    accepted = send_signal(console_url)
    # Then it is refused by the kill switch and never reaches the exchange
    wait_for(
        lambda: order_status(accepted["client_order_id"]) == "rejected",
        30,
        message="the open was not refused",
    )
    assert sim.orders_for(accepted["client_order_id"]) == []

    # And turning it off from the page lets the next open through
    page.find_element(By.ID, "kill-reason").send_keys("resolved")
    page.find_element(By.ID, "kill-off").click()
    wait_for(lambda: text_of(page, "#confirm-state") == "off", 10)
    page.find_element(By.ID, "confirm-button").click()
    wait_for(lambda: (text_of(page, "#kill-switch") or "").startswith("Kill switch off"), 10)
    reopened = send_signal(console_url)
    wait_for(lambda: order_status(reopened["client_order_id"]) == "filled", 30)
    if SCREENSHOTS:
        page.get(f"{console_url}/console/events?kind=signal&id={reopened['signal_id']}")
        wait_for(lambda: text_of(page, "#events td.payload"), 10)
        screenshot(page, "console-events", (1180, 700), full=False)


def test_an_action_without_the_operate_scope_is_refused_with_a_403_page(page, console_url, db):
    from selenium.webdriver.common.by import By

    from workers.coordination import kill_switch_state

    log_in(page, console_url, VIEWER_KEY)
    assert "has no operate scope" in text_of(page, "#actions")
    page.find_element(By.ID, "kill-reason").send_keys("not mine to do")
    page.find_element(By.ID, "kill-on").click()
    wait_for(lambda: text_of(page, "#refusal"), 10, message="no refusal page")
    assert text_of(page, "#refusal h1") == "403 Not allowed with this key"
    assert "lacks the 'operate' scope" in text_of(page, "#refusal-detail")
    assert not kill_switch_state().on


def test_html_from_an_exchange_or_a_producer_renders_as_text(page, console_url):
    from selenium.webdriver.common.by import By

    # Given an order whose symbol, and an event whose metadata, hold HTML
    store_hostile_order()
    # When the operator looks at the orders and at the order's events
    log_in(page, console_url, OPERATOR_KEY)
    assert text_of(page, '#orders tr[data-order="xqopen-hostile"] td.symbol') == HOSTILE[:64]
    page.get(f"{console_url}/console/events?kind=order&id=xqopen-hostile")
    wait_for(lambda: text_of(page, "#events td.payload"), 10, message="no event shown")
    # Then the HTML shows as text: no element was made of it, no script ran
    assert HOSTILE in text_of(page, "#events td.payload")
    assert page.find_elements(By.CSS_SELECTOR, "main img") == []
    assert page.execute_script("return window.pwned") is None
