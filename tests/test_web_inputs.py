"""What people type in the web screens (clients/web) is read strictly: a value the screen
cannot read is refused with the field's name and what is wrong with it, as typed, and is
never rounded, guessed or stepped (found by a black-box test: ↑ turned '1.005' into 0.01,
a comma was read as a decimal point, '0.8abc' was sent as 0.8).  And the ticket offers a
new trader the agent's units (query_me).

Same set-up as tests/test_web.py: a real server with the demo reference data and Debian's
chromium (tests/browser.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.register_assert_rewrite("browser")

from browser import C1, Screens, expect  # noqa: E402

pytest_plugins = ["browser"]

RECORD_SENT = """() => {
    window.sentTypes = [];
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
      window.sentTypes.push(JSON.parse(data).type);
      return send.call(this, data);
    };
}"""


async def sent(page: Any) -> list[str]:
    """The types of the requests the page sent since RECORD_SENT (heartbeats left out)."""
    types = await page.evaluate("window.sentTypes")
    return [t for t in types if t not in ("heartbeat", "query_throttling")]


# ---------------------------------------------------------------------- the ticket's arrows


async def test_arrow_keys_do_not_step_an_unreadable_value(screens: Screens) -> None:
    ana = await screens.trader("ana", C1)
    await ana.evaluate(RECORD_SENT)
    await ana.fill("#t-unit", "SELLU1")
    status = ana.locator("#t-status")
    price = ana.locator("#t-price")
    qty = ana.locator("#t-qty")
    for typed, reason in (("1.005", "'1.005' has 3 decimals; at most 2 are allowed (€/MWh)"),
                          ("abc", "'abc' is not a decimal number"),
                          ("1,5", "'1,5' has a comma")):
        for key in ("ArrowUp", "ArrowDown", "Shift+ArrowUp"):
            await price.fill(typed)
            await price.press(key)
            await expect(price).to_have_value(typed)
            await expect(status).to_contain_text(f"✖ price: {reason}")
            await expect(status).to_have_class(re.compile(r"\bbad\b"))
    await price.fill("")
    await price.press("ArrowUp")
    await expect(price).to_have_value("")
    await expect(status).to_contain_text("✖ price: required")

    await qty.fill("1.05")
    await qty.press("ArrowUp")
    await expect(qty).to_have_value("1.05")
    await expect(status).to_contain_text(
        "✖ quantity: '1.05' has 2 decimals; at most 1 are allowed (MWh)")

    # the next Enter sends nothing either: the same reason
    await price.fill("1.005")
    await price.press("ArrowDown")
    await price.press("Enter")
    await expect(status).to_contain_text("✖ price: '1.005' has 3 decimals")
    await expect(price).to_have_value("1.005")
    assert await sent(ana) == []

    # a readable value is stepped as before
    await price.fill("45.10")
    await price.press("ArrowUp")
    await expect(price).to_have_value("45.11")
    await price.press("Shift+ArrowDown")
    await expect(price).to_have_value("44.11")
    await qty.fill("1.0")
    await qty.press("ArrowDown")
    await expect(qty).to_have_value("0.9")


# ---------------------------------------------------------------------- commas, sizes


async def test_trading_screen_refuses_a_comma_and_names_what_was_typed(
        screens: Screens) -> None:
    ana = await screens.trader("ana", C1)
    await ana.evaluate(RECORD_SENT)
    status = ana.locator("#t-status")
    await ana.fill("#t-unit", "SELLU1")
    for field, typed, text in (
            ("#t-qty", "1,5", "✖ quantity: '1,5' has a comma: write the decimal point as '.'"),
            ("#t-price", "1,000", "✖ price: '1,000' has a comma"),
            ("#t-price", "99999999999999999999",
             "✖ price: '99999999999999999999' is too large: at most 10000000.00 €/MWh"),
            ("#t-price", "-99999999999999999999",
             "✖ price: '-99999999999999999999' is too low: at least -10000000.00 €/MWh"),
            ("#t-qty", "99999999999999999999",
             "✖ quantity: '99999999999999999999' is too large: at most 100000000.0 MWh"),
            ("#t-qty", "0.0", "✖ quantity: '0.0' must be positive")):
        await ana.fill("#t-price", "50.00")
        await ana.fill("#t-qty", "1.0")
        await ana.fill(field, typed)
        await expect(ana.locator("#t-value")).to_have_text("—")
        await ana.press(field, "Enter")
        await expect(status).to_contain_text(text)
        await expect(status).to_have_class(re.compile(r"\bbad\b"))
    # the basket refuses it the same way
    await ana.fill("#t-qty", "2,5")
    await ana.press("#t-qty", "Shift+Enter")
    await expect(status).to_contain_text("✖ quantity: '2,5' has a comma")
    await expect(ana.locator("#basket-table tbody tr")).to_have_count(0)
    # an iceberg's peak and increment too
    await ana.fill("#t-qty", "10.0")
    await ana.locator("#t-ice").check()
    await ana.fill("#t-peak", "2,5")
    await ana.press("#t-qty", "Enter")
    await expect(status).to_contain_text("✖ iceberg peak: '2,5' has a comma")
    await ana.fill("#t-peak", "2.5")
    await ana.fill("#t-incr", "0,5")
    await ana.press("#t-qty", "Enter")
    await expect(status).to_contain_text("✖ price increment: '0,5' has a comma")

    # the guarantee request's amount
    await ana.fill("#greq-amount", "20000,5")
    await ana.click("#greq button[type=submit]")
    await expect(ana.locator(".toast.bad").last).to_contain_text(
        "guarantee request: amount: '20000,5' has a comma")
    await expect(ana.locator("#greq-amount")).to_have_value("20000,5")
    assert await sent(ana) == []

    # what is readable is sent as typed
    await ana.locator("#t-ice").uncheck()
    await ana.click("#side-sell")
    await ana.fill("#t-price", "50.00")
    await ana.fill("#t-qty", "1.5")
    await expect(ana.locator("#t-send")).to_contain_text("Sell 1.5 @ 50.00")
    await ana.press("#t-qty", "Enter")
    await expect(status).to_contain_text("resting: SELL 1.5 @ 50.00")


# ---------------------------------------------------------------------- the console


async def test_console_reads_its_numbers_strictly(screens: Screens) -> None:
    rita = await screens.console("rita")
    await expect(rita.locator("#app")).to_be_visible()
    await rita.locator('#agents-table tr[data-agent="AG2"]').click()
    await expect(rita.locator("#g-amount")).to_have_value("100000.00")
    await rita.evaluate(RECORD_SENT)
    toast = rita.locator(".toast.bad").last

    async def refused(text: str) -> None:
        await rita.click("#r-set")
        await expect(toast).to_contain_text(text)

    await rita.locator("#r-rules .r-max").first.fill("7")
    await rita.locator("#r-rules .r-window").first.fill("1000")
    for typed, text in (("0.8abc", "'0.8abc' is not a decimal number"),
                        ("0,9", "'0,9' has a comma"),
                        ("1.5", "'1.5' must be more than 0 and at most 1"),
                        ("0", "'0' must be more than 0 and at most 1"),
                        ("", "required")):
        await rita.fill("#r-warning", typed)
        await refused(f"set_rate_limits: warning ratio: {text}")
    await rita.fill("#r-warning", "0.9")
    for field, typed, text in (
            (".r-max", "1e3", "rule 1 max requests: '1e3' is not a whole number"),
            (".r-max", "7.5", "rule 1 max requests: '7.5' is not a whole number"),
            (".r-max", "", "rule 1 max requests: required"),
            (".r-window", "1,000", "rule 1 window ms: '1,000' is not a whole"),
            (".r-window", "0", "rule 1 window ms: '0' is out of range: 1 to 86400000")):
        await rita.locator("#r-rules .r-max").first.fill("7")
        await rita.locator("#r-rules .r-window").first.fill("1000")
        await rita.locator(f"#r-rules {field}").first.fill(typed)
        await refused(f"set_rate_limits: {text}")

    await rita.fill("#g-amount", "20000,5")
    await rita.click("#g-set")
    await expect(toast).to_contain_text("set_guarantees AG2: amount: '20000,5' has a comma")
    await rita.fill("#g-amount", "20000.505")
    await rita.click("#g-set")
    await expect(toast).to_contain_text(
        "set_guarantees AG2: amount: '20000.505' has 3 decimals; at most 2 are allowed (€)")
    assert await sent(rita) == []

    # readable values are sent
    await rita.locator("#r-rules .r-max").first.fill("7")
    await rita.locator("#r-rules .r-window").first.fill("1000")
    await rita.fill("#r-warning", "0.9")
    await rita.click("#r-set")
    await expect(rita.locator(".toast.good").last).to_contain_text(
        "set_rate_limits default: accepted")
    assert "set_rate_limits" in await sent(rita)


# ---------------------------------------------------------------------- units


async def test_a_new_trader_is_offered_the_agents_units(screens: Screens) -> None:
    """query_me gives the units the agent is responsible for: a trader with no orders yet
    has them in the ticket (the only one filled in), so the first order can be sent."""
    ana = await screens.trader("ana", C1)
    await expect(ana.locator("#t-unit")).to_have_value("SELLU1")
    await expect(ana.locator("#unit-list option")).to_have_count(1)
    # SELLU1 is a selling unit (query_me's unit_sides): the ticket starts on Sell
    await expect(ana.locator("#side-sell")).to_have_attribute("aria-checked", "true")
    await ana.fill("#t-price", "61.00")
    await ana.fill("#t-qty", "2.0")
    await ana.press("#t-qty", "Enter")
    await expect(ana.locator("#t-status")).to_contain_text("resting: SELL 2.0 @ 61.00")

    # several units: all offered, none chosen for the trader
    bea = await screens.trader("bea", C1)
    options = bea.locator("#unit-list option")
    await expect(options).to_have_count(3)
    values = {await o.get_attribute("value") for o in await options.all()}
    assert values == {"SELLU3", "PTBUY4", "PTSELL4"}
    await expect(bea.locator("#t-unit")).to_have_value("")
    await expect(bea.locator("#side-buy")).to_have_attribute("aria-checked", "true")  # as ever
