"""The web screens (clients/web) in a real browser against a real server.

Playwright drives Debian's chromium (tests/browser.py).  Each test runs its own server with
the demo reference data: ana trades for AG1 (unit SELLU1), carlos for AG2 (BUYU2), bea for
AG3 (SELLU3); rita is the risk officer and marta the market operator, who creates and opens
three hourly contracts over WebSocket.  Every trader is a separate browser context, as if on
another machine.  Every test also checks (through the ``screens`` fixture) that no page threw
a JavaScript error and that nothing was loaded from outside the ronda server.
"""

from __future__ import annotations

import asyncio
import re
import struct
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("browser")

from browser import C1, C2, Market, Screens, expect, take_screenshots  # noqa: E402
from wsclient import iso, now_ms, session_of  # noqa: E402

pytest_plugins = ["browser"]

NBSP = "\u202f"  # the screens group thousands with a narrow no-break space


def row(page: Any, side: str, price: str) -> Any:
    """The ladder rows of one side at one price."""
    cls = "bid" if side == "BUY" else "ask"
    return page.locator(f'#ladder .lrow.{cls}[data-price="{price}"]')


def order_row(page: Any, price: str) -> Any:
    return page.locator("#orders-table tbody tr").filter(
        has=page.locator("td:nth-child(5)", has_text=re.compile(f"^{re.escape(price)}$")))


async def blur(page: Any) -> None:
    """Focus back on the page itself, where the letter shortcuts act."""
    await page.evaluate("document.activeElement && document.activeElement.blur()")


async def key_order(page: Any, unit: str, side: str, price: str, qty: str) -> None:
    """Order entry with the keyboard only: side letter, P price, Q quantity, Enter."""
    unit_box = page.locator("#t-unit")
    if await unit_box.input_value() != unit:
        await unit_box.fill(unit)
    await blur(page)
    await page.keyboard.press("b" if side == "BUY" else "s")
    await page.keyboard.press("p")
    await page.keyboard.type(price)
    await page.keyboard.press("q")
    await page.keyboard.type(qty)
    await page.keyboard.press("Enter")


async def ticket_ok(page: Any, text: str) -> None:
    await expect(page.locator("#t-status")).to_have_class(re.compile(r"\bgood\b"))
    await expect(page.locator("#t-status")).to_contain_text(text)


# ---------------------------------------------------------------------- trading


async def test_crossing_orders_trade_and_both_traders_see_it(screens: Screens) -> None:
    ana = await screens.trader("ana", C1)
    carlos = await screens.trader("carlos", C1)

    await key_order(ana, "SELLU1", "SELL", "50.00", "10.0")
    await ticket_ok(ana, "resting: SELL 10.0 @ 50.00")
    # ana sees her own order marked; carlos sees an anonymous ask
    await expect(row(ana, "SELL", "50.00")).to_have_class(re.compile(r"\bmine\b"))
    await expect(row(carlos, "SELL", "50.00")).to_have_count(1)
    await expect(row(carlos, "SELL", "50.00")).not_to_have_class(re.compile(r"\bmine\b"))
    await expect(row(carlos, "SELL", "50.00")).to_contain_text("10.0")
    await expect(carlos.locator("#m-ask")).to_have_text("50.00")

    # carlos clicks the ask: the ticket takes it (buy, its price and quantity); Enter sends
    await carlos.fill("#t-unit", "BUYU2")
    await row(carlos, "SELL", "50.00").click()
    await expect(carlos.locator("#side-buy")).to_have_class(re.compile(r"\bon\b"))
    await expect(carlos.locator("#t-price")).to_have_value("50.00")
    await expect(carlos.locator("#t-qty")).to_have_value("10.0")
    await expect(carlos.locator("#t-send")).to_contain_text("Buy 10.0 @ 50.00")
    await carlos.keyboard.press("Enter")
    await ticket_ok(carlos, "filled 10.0")

    for page, verb in ((ana, "sold"), (carlos, "bought")):
        trade = page.locator("#trades-table tbody tr").first
        await expect(trade).to_contain_text(verb)
        await expect(trade).to_contain_text("50.00")
        await expect(trade).to_contain_text("10.0")
        await expect(page.locator("#last-trades tbody tr")).to_have_count(1)
        await expect(page.locator("#last-trades tbody tr").first).to_contain_text("50.00")
        await expect(page.locator("#chart")).to_have_attribute("data-points", "1")
        await expect(page.locator(f'.crow[data-contract="{C1}"] .last')).to_have_text("50.00")
        await expect(page.locator("#ladder .lrow[data-entry]")).to_have_count(0)
        await expect(page.locator("#log .k-trade").first).to_contain_text(
            f"{verb} 10.0 MWh @ 50.00")
    await expect(ana.locator("#orders-table tbody tr")).to_have_count(0)
    # carlos pays: his obligations are no longer zero
    await expect(carlos.locator('#acct-breakdown dd[data-field="obligations"]')).not_to_have_text(
        re.compile(r"^0\.00$"))


async def test_an_auction_bid_held_shows_in_the_account(screens: Screens,
                                                        market: Market) -> None:
    """R39.4.3.4: a debtor auction bid is held on the operative limit at once; the screen's
    account shows it (within c, and apart as the bids held), and gives it back when the bid
    is cancelled: the account stream tells both (found by a black-box test: it told
    neither)."""
    from auctions.session import CancelAuctionBid, OpenAuction, ScheduleAuction, SubmitAuctionBid

    carlos = await screens.trader("carlos")
    held = carlos.locator('#acct-breakdown dd[data-field="auction_bids"]')
    await expect(held).to_have_text("0.00")
    seq = market.server.sequencer
    t = now_ms()
    await seq.submit(ScheduleAuction("T1", (C1,), t + 300, t + 600_000, t + 900_000), "marta")
    await asyncio.sleep(0.4)
    await seq.submit(OpenAuction("T1", by="marta"), "marta")
    evs = await seq.submit(SubmitAuctionBid("carlos", "AG2", "T1", "BUYU2", C1, "BUY",
                                            ((5000, 400),)), "carlos")
    (bid,) = next(e for e in evs if type(e).__name__ == "Ack").order_ids
    await expect(held).not_to_have_text("0.00")
    await expect(carlos.locator('#acct-breakdown dd[data-field="debtor_orders"]')
                 ).not_to_have_text(re.compile(r"^0\.00$"))
    await seq.submit(CancelAuctionBid("carlos", "AG2", "T1", bid), "carlos")
    await expect(held).to_have_text("0.00")
    screens.check()


async def test_iceberg_shows_its_peak_to_others_and_its_total_to_the_owner(
        screens: Screens) -> None:
    ana = await screens.trader("ana", C1)
    carlos = await screens.trader("carlos", C1)

    await ana.fill("#t-unit", "SELLU1")
    await ana.click("#side-sell")
    await ana.fill("#t-price", "60.00")
    await ana.fill("#t-qty", "20.0")
    await ana.check("#t-ice")
    await ana.fill("#t-peak", "5.0")
    await ana.click("#t-send")
    await ticket_ok(ana, "resting: SELL 20.0 @ 60.00")

    # carlos: one entry of 5.0, nothing of the 20
    await expect(row(carlos, "SELL", "60.00")).to_have_count(1)
    await expect(row(carlos, "SELL", "60.00")).to_have_attribute("data-qty", "5.0")
    await expect(row(carlos, "SELL", "60.00")).not_to_contain_text("20")
    await expect(row(carlos, "SELL", "60.00")).not_to_contain_text("15")
    # ana: her entry, with the hidden part and the total in her orders
    await expect(row(ana, "SELL", "60.00")).to_contain_text("5.0 (+15.0)")
    mine = order_row(ana, "60.00")
    await expect(mine.locator("td:nth-child(6)")).to_have_text("20.0")
    await expect(mine.locator("td:nth-child(7)")).to_have_text("5.0")
    await expect(mine.locator("td:nth-child(9)")).to_have_text("NON ice 5.0")

    # carlos takes 7.0: a peak and a part of the refill; he sees the refill's rest only
    await key_order(carlos, "BUYU2", "BUY", "60.00", "7.0")
    await ticket_ok(carlos, "filled 7.0")
    await expect(row(carlos, "SELL", "60.00")).to_have_attribute("data-qty", "3.0")
    await expect(row(carlos, "SELL", "60.00")).to_have_count(1)
    await expect(mine.locator("td:nth-child(6)")).to_have_text("13.0")
    await expect(mine.locator("td:nth-child(8)")).to_have_text("7.0")
    await expect(row(ana, "SELL", "60.00")).to_contain_text("3.0 (+10.0)")


async def test_rejections_are_shown_with_code_and_reason(screens: Screens) -> None:
    ana = await screens.trader("ana", C1)

    await key_order(ana, "SELLU1", "SELL", "99999.00", "1.0")
    status = ana.locator("#t-status")
    await expect(status).to_have_class(re.compile(r"\bbad\b"))
    await expect(status).to_contain_text("PRICE_OUT_OF_RANGE")
    await expect(status).to_contain_text("outside [-9999.00, 9999.00]")
    await expect(ana.locator("#log .k-reject").first).to_contain_text(
        "PRICE_OUT_OF_RANGE: price 99999.00 €/MWh outside")
    await expect(ana.locator(".toast.bad").first).to_contain_text("PRICE_OUT_OF_RANGE")

    # a malformed value is refused by the screen with the field and the reason, not sent
    await ana.fill("#t-price", "1.001")
    await ana.press("#t-price", "Enter")
    await expect(status).to_have_text(
        "✖ price: '1.001' has 3 decimals; at most 2 are allowed (€/MWh)")

    # a FoK that cannot fill is killed: the reason is shown too
    await ana.fill("#t-price", "40.00")
    await ana.keyboard.press("k")
    await ana.press("#t-price", "Enter")
    await expect(status).to_contain_text("CANCELLED — FOK_NOT_FILLABLE")
    # the rejected and killed orders are not in the book nor in my orders
    await expect(ana.locator("#orders-table tbody tr")).to_have_count(0)
    await expect(ana.locator("#ladder .lrow[data-entry]")).to_have_count(0)
    assert await ana.locator("#log .k-reject").count() == 1  # each refusal logged once

    # log out; a wrong token is refused with the server's reason
    await ana.click("#logout")
    await expect(ana.locator("#login-form")).to_be_visible()
    await expect(ana.locator("#login-user")).to_have_value("ana")
    await ana.fill("#login-token", "not-the-token")
    await ana.press("#login-token", "Enter")
    await expect(ana.locator("#login-error")).to_have_text(
        "LOGIN_FAILED: unknown user or wrong credentials")
    await expect(ana.locator("#app")).to_be_hidden()


async def test_auction_pause_banner_hibernated_orders_and_reactivate_all(
        screens: Screens, market: Market) -> None:
    ana = await screens.trader("ana", C1)
    carlos = await screens.trader("carlos", C1)
    await key_order(ana, "SELLU1", "SELL", "55.00", "5.0")
    await ticket_ok(ana, "resting")
    await key_order(ana, "SELLU1", "SELL", "56.00", "6.0")
    await ticket_ok(ana, "resting: SELL 6.0 @ 56.00")
    await expect(row(carlos, "SELL", "55.00")).to_have_count(1)

    await market.interrupt(C1, "intraday auction")
    for page in (ana, carlos):
        banner = page.locator(f'.banner[data-contract="{C1}"]')
        await expect(banner).to_contain_text("paused for an auction: intraday auction")
        await expect(page.locator("#m-state")).to_have_text("INT")
        await expect(page.locator("#ladder .lrow[data-entry]")).to_have_count(0)
    await expect(ana.locator(f'.banner[data-contract="{C1}"]')).to_contain_text("(2 of yours)")
    hib = ana.locator("#orders-table tbody tr.hib")
    await expect(hib).to_have_count(2)
    await expect(hib.first.locator("td.status")).to_have_text("HIBERNATED (intraday auction)")

    await market.resume(C1)
    banner = ana.locator(f'.banner[data-contract="{C1}"]')
    await expect(banner).to_contain_text("trading again: 2 of your orders there are hibernated")
    await expect(ana.locator("#m-state")).to_have_text("TRADE")
    await expect(hib).to_have_count(2)  # they wait for the trader (R46.2.7)
    await expect(carlos.locator(f'.banner[data-contract="{C1}"]')).to_have_count(0)

    await banner.get_by_role("button", name="Reactivate all").click()
    await expect(ana.locator("#orders-table tbody tr.hib")).to_have_count(0)
    await expect(ana.locator("#orders-table tbody tr")).to_have_count(2)
    await expect(row(ana, "SELL", "55.00")).to_have_class(re.compile(r"\bmine\b"))
    await expect(row(carlos, "SELL", "56.00")).to_have_count(1)
    await expect(ana.locator(".banner")).to_have_count(0)
    await expect(ana.locator("#log .k-order").first).to_contain_text("ACTIVATED")


async def test_order_management_keyboard_basket_modify_and_hibernation(
        screens: Screens) -> None:
    ana = await screens.trader("ana", C1)
    await ana.fill("#t-unit", "SELLU1")
    await blur(ana)
    # two tickets into a NONE basket with Shift+Enter, then one linked basket refused
    await ana.keyboard.press("s")
    await ana.keyboard.press("p")
    await ana.keyboard.type("61.00")
    await ana.keyboard.press("q")
    await ana.keyboard.type("2.0")
    await ana.keyboard.press("Shift+Enter")
    await ana.fill("#t-price", "62.00")
    await ana.fill("#t-qty", "3.0")
    await ana.press("#t-qty", "Shift+Enter")
    await expect(ana.locator("#basket-table tbody tr")).to_have_count(2)
    await ana.select_option("#b-type", "LINKED")
    await ana.click("#b-send")
    await expect(ana.locator("#b-status")).to_contain_text("LINKED_MEMBER_NOT_FOK")
    await expect(ana.locator("#orders-table tbody tr")).to_have_count(0)
    await ana.select_option("#b-type", "NONE")
    await ana.click("#b-send")
    await expect(ana.locator("#b-status")).to_contain_text("basket NONE: 2 order(s) accepted")
    await expect(ana.locator("#orders-table tbody tr")).to_have_count(2)
    await expect(ana.locator("#basket-table tbody tr")).to_have_count(0)

    # modify through the ticket: new price, Enter
    await order_row(ana, "61.00").locator('button[data-act="modify"]').click()
    await expect(ana.locator("#ticket-title")).to_have_text(re.compile(r"Modify order #\d+"))
    await expect(ana.locator("#t-qty")).to_have_value("2.0")
    await ana.keyboard.press("ArrowUp")  # the price field has the focus: +0.01
    await ana.keyboard.press("Shift+ArrowUp")  # +1.00
    await expect(ana.locator("#t-price")).to_have_value("62.01")
    await ana.keyboard.press("Enter")
    await ticket_ok(ana, "modified (rev 2): 2.0 @ 62.01")
    await expect(order_row(ana, "62.01")).to_have_count(1)
    await expect(ana.locator("#ticket-title")).to_have_text("Order ticket")

    # deactivate, activate, cancel one order
    target = order_row(ana, "62.00")
    await target.locator('button[data-act="deactivate"]').click()
    await expect(target.locator("td.status")).to_have_text("HIBERNATED (deactivated by its owner)")
    await expect(row(ana, "SELL", "62.00")).to_have_count(0)
    await target.locator('button[data-act="activate"]').click()
    await expect(target.locator("td.status")).to_have_text("ACTIVE")
    await expect(row(ana, "SELL", "62.00")).to_have_count(1)
    await target.locator('button[data-act="cancel"]').click()
    await expect(target).to_have_count(0)
    await expect(row(ana, "SELL", "62.00")).to_have_count(0)

    # GTD with an expiry instant, entered hibernated
    await ana.fill("#t-price", "70.00")
    await ana.fill("#t-qty", "1.0")
    await blur(ana)
    await ana.keyboard.press("g")
    await expect(ana.locator("#t-expiry")).to_be_enabled()
    await ana.keyboard.press("h")
    await ana.keyboard.press("Enter")
    await ticket_ok(ana, "entered hibernated: 1.0 @ 70.00")
    gtd = order_row(ana, "70.00")
    await expect(gtd.locator("td:nth-child(10)")).to_have_text(re.compile(r"^GTD \d\d:\d\d:\d\d$"))
    await expect(gtd).to_have_class(re.compile(r"\bhib\b"))

    # Esc clears the ticket; "cancel all" asks for a second click
    await ana.keyboard.press("Escape")
    await expect(ana.locator("#t-price")).to_have_value("")
    await ana.click("#cancel-all")
    await expect(ana.locator("#orders-table tbody tr")).to_have_count(2)
    await ana.click("#cancel-all")
    await expect(ana.locator("#orders-table tbody tr")).to_have_count(0)


async def test_book_is_updated_in_place_and_a_sequence_gap_fetches_a_snapshot(
        screens: Screens, market: Market) -> None:
    carlos = await screens.trader("carlos", C1)
    await market.trade("ana", C1, "SELL", "51.00", "8.0")
    await market.trade("bea", C1, "SELL", "52.00", "4.0")
    await expect(row(carlos, "SELL", "51.00")).to_have_attribute("data-qty", "8.0")

    # a partial fill changes the row's quantity in place: the same DOM node stays
    await carlos.evaluate(
        "window.__row = document.querySelector('#ladder .lrow.ask[data-price=\"51.00\"]')")
    await market.trade("carlos", C1, "BUY", "51.00", "3.0")
    await expect(row(carlos, "SELL", "51.00")).to_have_attribute("data-qty", "5.0")
    assert await carlos.evaluate(
        "window.__row.isConnected && window.__row.dataset.qty === '5.0'"
        " && window.__row === document.querySelector('#ladder .lrow.ask[data-price=\"51.00\"]')")

    # a delta that skips sequence numbers: the screen drops it and asks for a snapshot
    bogus = await carlos.evaluate("""() => {
        const b = window.ronda.S.book;
        window.ronda.route({type: 'book', stream: 'book:' + b.contract, contract: b.contract,
          snapshot: false, seq: b.seq + 3, action: 'ADD', entry: 999999, side: 'SELL',
          price: '77.77', quantity: '9.0'});
        return window.ronda.stats.resnapshots;
    }""")
    assert bogus == 1
    await expect(carlos.locator("#book-status")).to_have_class(re.compile(r"\bok\b"))
    await expect(row(carlos, "SELL", "77.77")).to_have_count(0)
    await expect(row(carlos, "SELL", "52.00")).to_have_count(1)
    await expect(carlos.locator("#log .k-info").first).to_contain_text("fresh snapshot")
    # and it keeps following the stream afterwards
    await market.trade("bea", C1, "SELL", "53.00", "2.0")
    await expect(row(carlos, "SELL", "53.00")).to_have_count(1)
    assert await carlos.evaluate("window.ronda.stats.resnapshots") == 1

    # the gate-closure countdown runs
    cd = carlos.locator(f'.crow[data-contract="{C1}"] .countdown')
    first = await cd.inner_text()
    assert re.fullmatch(r"\d\d:\d\d", first), first
    await expect(cd).not_to_have_text(first, timeout=3000)


async def test_screen_reconnects_and_catches_up_after_a_dropped_connection(
        screens: Screens, market: Market) -> None:
    ana = await screens.trader("ana", C1)
    await key_order(ana, "SELLU1", "SELL", "54.00", "5.0")
    await ticket_ok(ana, "resting")

    session = session_of(market.server, "ana")
    await session.transport.close(1012, "test: connection dropped")
    await expect(ana.locator("#conn")).to_have_text("reconnecting")
    await expect(ana.locator(".banner.bad")).to_contain_text("connection lost")
    # meanwhile the market moves: ana's order is hit, bea offers
    await market.trade("carlos", C1, "BUY", "54.00", "5.0")
    await market.trade("bea", C1, "SELL", "55.50", "2.0")

    await expect(ana.locator("#conn")).to_have_text("online", timeout=8000)
    await expect(ana.locator(".banner.bad")).to_have_count(0)
    await expect(ana.locator("#orders-table tbody tr")).to_have_count(0)
    await expect(ana.locator("#trades-table tbody tr").first).to_contain_text("54.00")
    await expect(row(ana, "SELL", "55.50")).to_have_count(1)
    await expect(ana.locator("#book-status")).to_have_class(re.compile(r"\bok\b"))
    # and the new session streams again
    await market.trade("bea", C1, "SELL", "56.50", "1.0")
    await expect(row(ana, "SELL", "56.50")).to_have_count(1)


async def orders_of(market: Market, user: str) -> dict[int, dict[str, Any]]:
    """The user's agent's live orders as the server has them (query_orders), by id."""
    c = await market.client(user)
    ans = await c.request({"type": "query_orders"})
    assert ans["type"] == "orders", ans
    return {o["order_id"]: o for o in ans["orders"]}


async def drop_connection(market: Market, page: Any, user: str) -> None:
    """The server drops the user's connection; the screen says it is reconnecting."""
    await session_of(market.server, user).transport.close(1012, "test: connection dropped")
    await expect(page.locator("#conn")).to_have_text("reconnecting")


async def test_banner_reactivate_all_acts_on_its_own_contract_only(
        screens: Screens, market: Market) -> None:
    """A "trading again" banner's Reactivate all is for its contract: neither every contract
    (ana deliberately deactivated her order in C2) nor the one selected with "selected
    contract only"."""
    ana = await screens.trader("ana", C1)
    c1 = (await market.trade("ana", C1, "SELL", "55.00", "5.0"))["order_ids"][0]
    c2 = (await market.trade("ana", C2, "SELL", "65.00", "5.0"))["order_ids"][0]
    c = await market.client("ana")
    assert (await c.request({"type": "order_deactivate", "order_ids": [c2]}))["type"] == "ack"
    banner = ana.locator(f'.banner[data-contract="{C1}"]')

    # "selected contract only" with C2 selected
    await market.interrupt(C1, "intraday auction")
    await market.resume(C1)
    await ana.click(f'#contract-list .crow[data-contract="{C2}"]')
    await ana.check("#only-selected")
    await expect(banner).to_contain_text("trading again: 1 of your orders there are hibernated")
    await banner.get_by_role("button", name="Reactivate all").click()
    await expect(banner).to_have_count(0)
    statuses = {k: o["status"] for k, o in (await orders_of(market, "ana")).items()}
    assert statuses == {c1: "ACTIVE", c2: "HIBERNATED"}, statuses

    # and with every contract shown
    await ana.uncheck("#only-selected")
    await market.interrupt(C1, "intraday auction")
    await market.resume(C1)
    await banner.get_by_role("button", name="Reactivate all").click()
    await expect(banner).to_have_count(0)
    await expect(ana.locator("#orders-table tbody tr.hib")).to_have_count(1)
    statuses = {k: o["status"] for k, o in (await orders_of(market, "ana")).items()}
    assert statuses == {c1: "ACTIVE", c2: "HIBERNATED"}, statuses


async def test_modify_is_refused_when_the_order_changed_elsewhere(
        screens: Screens, market: Market) -> None:
    """The modification carries the revision the ticket was loaded at: a change made
    elsewhere meanwhile (ana's other session) is said at once, and Enter is refused
    STALE_REVISION instead of overwriting it; loading the order again works."""
    ana = await screens.trader("ana", C1)
    await key_order(ana, "SELLU1", "SELL", "50.00", "10.0")
    await ticket_ok(ana, "resting: SELL 10.0 @ 50.00")
    await order_row(ana, "50.00").locator('button[data-act="modify"]').click()
    status = ana.locator("#t-status")
    await expect(status).to_contain_text("revision 1")
    (oid,) = await orders_of(market, "ana")
    other = await market.client("ana")
    ans = await other.request({"type": "order_modify", "order_id": oid, "revision": 1,
                               "price": "40.00", "quantity": "2.0"})
    assert ans["type"] == "ack", ans
    await expect(status).to_contain_text(
        f"#{oid} was changed elsewhere: now revision 2, 2.0 @ 40.00")
    await ana.fill("#t-price", "51.00")
    await ana.press("#t-price", "Enter")
    await expect(status).to_have_class(re.compile(r"\bbad\b"))
    await expect(status).to_contain_text(
        f"STALE_REVISION: #{oid} was changed elsewhere after you loaded it at revision 1 "
        "(now revision 2: 2.0 @ 40.00)")
    o = (await orders_of(market, "ana"))[oid]
    assert (o["revision"], o["price"], o["visible"]) == (2, "40.00", "2.0"), o
    # the ticket still holds the modification; loading the order again sends revision 2
    await expect(ana.locator("#ticket-title")).to_have_text(f"Modify order #{oid}")
    await order_row(ana, "40.00").locator('button[data-act="modify"]').click()
    await expect(status).to_contain_text("revision 2")
    await ana.fill("#t-price", "51.00")
    await ana.press("#t-price", "Enter")
    await ticket_ok(ana, "modified (rev 3): 2.0 @ 51.00")


async def test_a_fill_while_modifying_is_not_put_back(screens: Screens, market: Market) -> None:
    """Fills do not change an order's revision, so the server cannot tell that the ticket's
    quantity was typed against an older open quantity: the screen must.  An untouched
    quantity follows the open quantity (with a notice); a typed one must be confirmed; an
    order filled completely stops the modification without sending anything."""
    ana = await screens.trader("ana", C1)
    status = ana.locator("#t-status")
    await key_order(ana, "SELLU1", "SELL", "50.00", "10.0")
    await ticket_ok(ana, "resting: SELL 10.0 @ 50.00")
    (oid,) = await orders_of(market, "ana")
    await ana.evaluate("""() => {
        window.__modifies = [];
        const send = WebSocket.prototype.send;
        WebSocket.prototype.send = function (data) {
          const m = JSON.parse(data);
          if (m.type === 'order_modify') window.__modifies.push(m);
          send.call(this, data);
        };
    }""")

    # the quantity untouched: it follows the fill, only the price changes
    await order_row(ana, "50.00").locator('button[data-act="modify"]').click()
    await expect(ana.locator("#t-qty")).to_have_value("10.0")
    await market.trade("carlos", C1, "BUY", "50.00", "6.0")
    await expect(ana.locator("#t-qty")).to_have_value("4.0")
    await expect(status).to_contain_text(
        f"#{oid}: 6.0 filled since you loaded it; open quantity now 4.0 (was 10.0)")
    await ana.fill("#t-price", "50.50")
    await ana.press("#t-price", "Enter")
    await ticket_ok(ana, "modified (rev 2): 4.0 @ 50.50")
    o = (await orders_of(market, "ana"))[oid]
    assert (o["filled"], o["visible"], o["price"]) == ("6.0", "4.0", "50.50"), o

    # a typed quantity: Enter refuses once and explains, the second Enter sends it
    await order_row(ana, "50.50").locator('button[data-act="modify"]').click()
    await ana.fill("#t-qty", "3.0")
    await market.trade("carlos", C1, "BUY", "50.50", "1.0")
    await expect(status).to_contain_text("open quantity now 3.0 (was 4.0). Your quantity 3.0")
    await expect(ana.locator("#t-qty")).to_have_value("3.0")
    await ana.press("#t-qty", "Enter")
    await expect(status).to_have_class(re.compile(r"\bbad\b"))
    await expect(status).to_contain_text(f"not sent: #{oid} traded 1.0 since you loaded it — "
                                         "3.0 open, not 4.0")
    o = (await orders_of(market, "ana"))[oid]
    assert (o["revision"], o["visible"]) == (2, "3.0"), o
    await ana.press("#t-qty", "Enter")
    await ticket_ok(ana, "modified (rev 3): 3.0 @ 50.50")

    # filled completely while loaded: nothing is sent, not even as a new order
    await order_row(ana, "50.50").locator('button[data-act="modify"]').click()
    await ana.fill("#t-price", "52.00")
    await market.trade("carlos", C1, "BUY", "50.50", "3.0")
    await expect(status).to_contain_text(f"#{oid} was filled (10.0) while the ticket was loaded: "
                                         "nothing was sent")
    await expect(ana.locator("#ticket-title")).to_have_text("Order ticket")
    await expect(ana.locator("#t-qty")).to_have_value("")
    await ana.press("#t-price", "Enter")
    await expect(status).to_contain_text("quantity: required")
    assert await orders_of(market, "ana") == {}
    # an untouched quantity is not sent (the server keeps the open quantity it has when it
    # applies the modification: a fill on its way to the screen is not put back either)
    sent = await ana.evaluate("window.__modifies")
    assert [(m["revision"], m["price"], m.get("quantity")) for m in sent] == [
        (1, "50.50", None), (2, "50.50", "3.0")], sent


async def test_modify_keeps_an_untouched_gtd_expiry(screens: Screens, market: Market) -> None:
    """A GTD order's expiry has milliseconds: the modify form shows them and, the field
    untouched, sends the expiry exactly as the order has it (only the price changes)."""
    ana = await screens.trader("ana", C1)
    expiry = iso((now_ms() // 1000 + 1200) * 1000 + 250)
    oid = (await market.trade("ana", C1, "SELL", "70.00", "1.0", validity="GTD",
                              expiry=expiry))["order_ids"][0]
    await order_row(ana, "70.00").locator('button[data-act="modify"]').click()
    await expect(ana.locator("#t-expiry")).to_have_value(re.compile(r"T\d\d:\d\d:\d\d\.25$"))
    await ana.fill("#t-price", "71.00")
    await ana.press("#t-price", "Enter")
    await ticket_ok(ana, "modified (rev 2): 1.0 @ 71.00")
    o = (await orders_of(market, "ana"))[oid]
    assert (o["price"], o["expiry"]) == ("71.00", expiry), o


async def test_an_order_whose_answer_was_lost_is_looked_up_not_failed(
        screens: Screens, market: Market) -> None:
    """The order reaches the server but the connection drops before its answer: the ticket
    says "outcome unknown" (not a failure inviting a resend with a new client_order_id) and,
    back online, finds the order by its client_order_id.  An order not live any more
    (traded at once) is said so; sending the same ticket again reuses its client_order_id,
    so the server refuses it and nothing trades twice."""
    ana = await screens.trader("ana", C1)
    status = ana.locator("#t-status")
    await ana.fill("#t-unit", "SELLU1")
    await ana.click("#side-sell")
    await ana.fill("#t-price", "60.00")
    await ana.fill("#t-qty", "1.0")
    send_and_drop = ("() => { document.querySelector('#t-send').click();"
                     " window.ronda.conn().ws.close(); }")
    await ana.evaluate(send_and_drop)
    await expect(status).to_contain_text("outcome unknown")
    await expect(status).not_to_have_class(re.compile(r"\bbad\b"))
    await expect(ana.locator("#conn")).to_have_text("online", timeout=8000)
    (oid,) = await orders_of(market, "ana")
    await expect(status).to_have_class(re.compile(r"\bgood\b"))
    await expect(status).to_contain_text(f"✔ #{oid} resting: SELL 1.0 @ 60.00")
    await expect(status).to_contain_text("found on the server by its client_order_id web-")

    # traded at once, its report lost with the connection
    await market.trade("carlos", C1, "BUY", "45.00", "1.0")
    await ana.fill("#t-price", "45.00")
    await ana.evaluate(send_and_drop)
    await expect(ana.locator("#conn")).to_have_text("online", timeout=8000)
    # (a page drops what arrives once it closed its socket: the report is lost too)
    await expect(status).to_contain_text("? SELL 1.0 @ 45.00")
    await expect(status).to_contain_text("is not live on the server: it never arrived, or it "
                                         "traded or was cancelled at once")
    await expect(status).not_to_have_class(re.compile(r"\bbad\b"))
    await ana.press("#t-price", "Enter")
    await expect(status).to_contain_text(
        "the server already had it (DUPLICATE_CLIENT_ORDER_ID), so it was not done twice")
    c = await market.client("ana")
    trades = (await c.request({"type": "query_trades"}))["trades"]
    assert [(t["price"], t["quantity"]) for t in trades] == [("45.00", "1.0")], trades
    assert list(await orders_of(market, "ana")) == [oid]

    # a modification whose answer is lost: the reloaded order's revision tells
    await order_row(ana, "60.00").locator('button[data-act="modify"]').click()
    await ana.fill("#t-price", "61.00")
    await ana.evaluate(send_and_drop)
    await expect(status).to_contain_text(f"? modification of #{oid}: outcome unknown")
    await expect(ana.locator("#conn")).to_have_text("online", timeout=8000)
    await expect(status).to_contain_text(f"✔ #{oid} is now revision 2: 1.0 @ 61.00")
    await expect(ana.locator("#ticket-title")).to_have_text("Order ticket")


async def test_an_order_the_engine_failed_on_is_outcome_unknown_and_looked_up(
        screens: Screens, market: Market) -> None:
    """A request answered INTERNAL_ERROR (it raised inside the engine: a defect, part of it
    may have been done) is "outcome unknown", not a refusal inviting a resend with a new
    client_order_id; still connected, the screen looks the order up at once."""
    from engine.commands import NewOrder

    ana = await screens.trader("ana", C1)
    status = ana.locator("#t-status")
    engine = market.server.core.engine
    real = engine._handlers[NewOrder]

    def broken(*args: Any, **kw: Any) -> None:
        raise KeyError("defect")

    engine._handlers[NewOrder] = broken
    try:
        await ana.fill("#t-unit", "SELLU1")
        await ana.click("#side-sell")
        await ana.fill("#t-price", "60.00")
        await ana.fill("#t-qty", "1.0")
        await ana.click("#t-send")
        await expect(status).to_contain_text("is not live on the server")
        await expect(status).not_to_have_class(re.compile(r"\bbad\b"))
    finally:
        engine._handlers[NewOrder] = real
    assert list(await orders_of(market, "ana")) == []


async def test_a_read_cut_off_by_the_connection_is_no_warning(
        screens: Screens, market: Market) -> None:
    """Queries in flight when the connection drops (the orders, the trades, the last
    trades) are read again once connected: no "outcome unknown" warning for them (one toast
    per cut query at every reconnection), only a line in the activity log."""
    ana = await screens.trader("ana", C1)
    await ana.evaluate("""() => {
        window.ronda.reloadPrivate();  // the orders, the trades, the account: in flight
        window.ronda.conn().ws.close();
    }""")
    await expect(ana.locator("#conn")).to_have_text("online", timeout=8000)
    await ana.wait_for_timeout(500)
    assert await ana.locator("#toasts .toast.warn").count() == 0
    assert await ana.locator("#toasts .toast.bad").count() == 0


async def test_reconnection_reloads_the_last_trades_and_nothing_is_live_meanwhile(
        screens: Screens, market: Market) -> None:
    """The last price, last trades and chart come from query_public_trades at every
    (re)subscription, so trades before the screen opened or while it was reconnecting are
    there; a gap in the trades stream reloads them.  While the connection is down the book
    pill says "offline", not "live", and the market data is dimmed."""
    await market.trade("bea", C1, "SELL", "50.00", "1.0")
    await market.trade("carlos", C1, "BUY", "50.00", "1.0")  # before ana's screen opens
    ana = await screens.trader("ana", C1)
    await expect(ana.locator("#m-last")).to_have_text("50.00")
    await expect(ana.locator("#last-trades tbody tr")).to_have_count(1)
    await expect(ana.locator("#chart")).to_have_attribute("data-points", "1")

    await market.trade("bea", C1, "SELL", "52.00", "1.0")  # an ask that goes while offline
    await expect(row(ana, "SELL", "52.00")).to_have_count(1)
    await drop_connection(market, ana, "ana")
    pill = ana.locator("#book-status")
    await expect(pill).to_have_text(re.compile(r"^offline"))
    await expect(pill).to_have_class(re.compile(r"\bbad\b"))
    await expect(ana.locator("#app")).to_have_class(re.compile(r"\boffline\b"))
    await market.trade("carlos", C1, "BUY", "52.00", "1.0")
    await market.trade("bea", C1, "SELL", "54.00", "1.0")
    await market.trade("carlos", C1, "BUY", "54.00", "1.0")
    await expect(ana.locator("#conn")).to_have_text("online", timeout=8000)
    await expect(pill).to_have_text(re.compile(r"^live · seq \d+$"))
    await expect(ana.locator("#app")).not_to_have_class(re.compile(r"\boffline\b"))
    await expect(ana.locator("#m-last")).to_have_text("54.00")
    await expect(ana.locator(f'.crow[data-contract="{C1}"] .last')).to_have_text("54.00")
    await expect(ana.locator("#last-trades tbody tr")).to_have_count(3)
    await expect(ana.locator("#chart")).to_have_attribute("data-points", "3")
    await expect(ana.locator("#m-vol")).to_have_text("3.0")
    await expect(row(ana, "SELL", "52.00")).to_have_count(0)

    # a trades message that skips numbers: the screen reloads the trades, not that message
    await ana.evaluate("""(c) => window.ronda.route({type: 'public_trade', stream: 'trades:' + c,
        contract: c, seq: window.ronda.S.pubSeq.get(c) + 3, trade_id: 999999,
        price: '77.77', quantity: '9.0', aggressor: 'BUY', ts: new Date().toISOString()})""", C1)
    await expect(ana.locator("#log .k-info").first).to_contain_text("reloading the last trades")
    await ana.wait_for_timeout(300)
    await expect(ana.locator("#m-last")).to_have_text("54.00")
    await expect(ana.locator("#last-trades tbody tr")).to_have_count(3)
    await market.trade("bea", C1, "SELL", "55.00", "2.0")
    await market.trade("carlos", C1, "BUY", "55.00", "2.0")
    await expect(ana.locator("#m-last")).to_have_text("55.00")
    await expect(ana.locator("#last-trades tbody tr")).to_have_count(4)


async def test_reconnecting_goes_on_when_the_login_answer_is_lost(
        screens: Screens, market: Market) -> None:
    """The connection drops again while the screen logs in anew: no answer to the login is
    no refusal, so the screen keeps reconnecting (it used to stop for good)."""
    ana = await screens.trader("ana", C1)
    await ana.evaluate("""() => {
        const send = WebSocket.prototype.send;
        let armed = true;
        WebSocket.prototype.send = function (data) {
          send.call(this, data);
          if (armed && JSON.parse(data).type === 'login') { armed = false; this.close(); }
        };
    }""")
    await drop_connection(market, ana, "ana")
    await expect(ana.locator("#conn")).to_have_text("online", timeout=12000)
    await expect(ana.locator("#book-status")).to_have_class(re.compile(r"\bok\b"))
    await market.trade("bea", C1, "SELL", "56.50", "1.0")
    await expect(row(ana, "SELL", "56.50")).to_have_count(1)


async def test_order_value_is_exact_and_signed(screens: Screens) -> None:
    """Price × quantity in integers (cents × tenths): never rounded, negative with a
    negative price."""
    ana = await screens.trader("ana", C1)
    for price, qty, value in (("45.15", "0.1", "4.515 €"), ("-12.35", "2.0", "-24.70 €"),
                              ("-0.05", "0.3", "-0.015 €"),
                              ("9999.99", "999.0", f"9{NBSP}989{NBSP}990.01 €")):
        await ana.fill("#t-price", price)
        await ana.fill("#t-qty", qty)
        await expect(ana.locator("#t-value")).to_have_text(value)


# ---------------------------------------------------------------------- risk console


async def test_officer_suspends_an_agent_and_its_orders_leave_its_screen(
        screens: Screens, market: Market) -> None:
    ana = await screens.trader("ana", C1)
    await key_order(ana, "SELLU1", "SELL", "57.00", "3.0")
    await ticket_ok(ana, "resting")
    await key_order(ana, "SELLU1", "SELL", "58.00", "4.0")
    await ticket_ok(ana, "resting: SELL 4.0 @ 58.00")
    carlos = await screens.trader("carlos", C1)
    await expect(row(carlos, "SELL", "58.00")).to_have_count(1)

    rita = await screens.console("rita")
    ag1 = rita.locator('#agents-table tr[data-agent="AG1"]')
    await expect(ag1.locator("td.active")).to_have_text("2")
    await expect(ag1.locator("td.status")).to_have_text("active")
    await expect(ag1.locator("td.reserved")).to_have_text(f"50{NBSP}000.00")
    await ag1.click()
    await expect(rita.locator("#d-agent")).to_have_text("AG1")
    await expect(rita.locator("#d-orders tbody tr")).to_have_count(2)
    await rita.fill("#s-reason", "margin call unanswered")
    await rita.click("#s-suspend")

    await expect(ana.locator("#orders-table tbody tr")).to_have_count(0)
    await expect(ana.locator("#orders-empty")).to_be_visible()
    await expect(ana.locator("#ladder .lrow[data-entry]")).to_have_count(0)
    await expect(carlos.locator("#ladder .lrow[data-entry]")).to_have_count(0)
    await expect(ana.locator(".banner.bad")).to_contain_text("Agent AG1 is suspended")
    await expect(ana.locator("#log .k-notice").first).to_contain_text(
        "AGENT_SUSPENDED AG1 by rita — margin call unanswered")
    await expect(ag1.locator("td.status")).to_have_text("SUSPENDED")
    await expect(ag1.locator("td.active")).to_have_text("0")
    audit = rita.locator("#audit-table tbody tr")
    notice = audit.filter(has_text="AGENT_SUSPENDED")
    await expect(notice.locator("td.by")).to_have_text("rita")
    await expect(notice).to_contain_text("margin call unanswered")
    await expect(audit.filter(has_text="suspend_agent")).to_contain_text("accepted")
    suspend = audit.filter(has_text="suspend_agent")
    await expect(suspend.locator("td.detail")).to_contain_text("margin call unanswered")
    await expect(suspend.locator("td.detail")).to_contain_text("2 order(s)")  # R46.2.6.2
    # the platform's trail has the other staff's actions too: marta opened the contracts
    await expect(audit.filter(has_text="open_contracts").first.locator("td.by")).to_have_text(
        "marta")

    # a suspended agent's orders are refused, with the reason
    await key_order(ana, "SELLU1", "SELL", "57.00", "1.0")
    await expect(ana.locator("#t-status")).to_contain_text(
        "AGENT_SUSPENDED: agent AG1 is suspended")

    await rita.click("#s-reinstate")
    await expect(ana.locator(".banner.bad")).to_have_count(0)
    await expect(ag1.locator("td.status")).to_have_text("active")
    await ana.keyboard.press("Enter")
    await ticket_ok(ana, "resting: SELL 1.0 @ 57.00")
    await expect(audit.filter(has_text="AGENT_REINSTATED").locator("td.by")).to_have_text("rita")


async def test_console_limits_requests_contracts_rate_limits_and_role_check(
        screens: Screens) -> None:
    # only risk officers get in
    intruder = await screens.console("ana")
    await expect(intruder.locator("#denied-text")).to_contain_text(
        "the risk console needs the role risk_officer")
    await expect(intruder.locator("#app")).to_be_hidden()

    carlos = await screens.trader("carlos", C1)
    rita = await screens.console("rita")
    ag2 = rita.locator('#agents-table tr[data-agent="AG2"]')
    await expect(ag2.locator("td.free")).to_have_text(f"100{NBSP}000.00")

    # carlos asks for more guarantees from his screen; rita approves it
    await carlos.fill("#greq-amount", "1000.00")
    await carlos.click("#greq button[type=submit]")
    await expect(carlos.locator("#acct-pending")).to_contain_text("increase of 1" + NBSP + "000.00")
    await expect(ag2.locator("td.nreq")).to_have_text("1")
    await ag2.click()
    req = rita.locator("#requests-table tbody tr").first
    await expect(req).to_contain_text("increase")
    await req.get_by_role("button", name="Approve").click()
    increases = carlos.locator('#acct-breakdown dd[data-field="requested_increases"]')
    await expect(increases).to_have_text(f"+ 1{NBSP}000.00")
    await expect(ag2.locator("td.free")).to_have_text(f"101{NBSP}000.00")
    accepted = rita.locator("#audit-table tbody tr").filter(has_text="REQUEST_ACCEPTED")
    await expect(accepted).to_have_count(1)

    # reserved guarantees
    await rita.fill("#g-amount", "80000.00")
    await rita.click("#g-set")
    await expect(ag2.locator("td.reserved")).to_have_text(f"80{NBSP}000.00")
    await expect(carlos.locator('#acct-breakdown dd[data-field="reserved"]')).to_have_text(
        f"80{NBSP}000.00")
    await expect(carlos.locator("#acct-free")).to_have_text(f"81{NBSP}000.00")

    # interrupt and resume a contract
    await rita.locator(f'#contracts-table tr[data-contract="{C2}"] input').check()
    await rita.fill("#c-reason", "price spike under review")
    await rita.click("#c-interrupt")
    await expect(rita.locator(f'#contracts-table tr[data-contract="{C2}"]')).to_contain_text("INT")
    await expect(carlos.locator(f'.banner[data-contract="{C2}"]')).to_contain_text(
        "interrupted: price spike under review")
    await expect(carlos.locator(f'.crow[data-contract="{C2}"] .state')).to_have_text("INT")
    await rita.click("#c-resume")
    await expect(carlos.locator(f'.crow[data-contract="{C2}"] .state')).to_have_text("TRADE")
    await expect(carlos.locator(f'.banner[data-contract="{C2}"]')).to_have_count(0)

    # rate limits for one user
    await rita.fill("#r-user", "carlos")
    await rita.click("#r-query")
    await expect(rita.locator("#r-status")).to_contain_text("carlos: OK")
    await rita.locator("#r-rules .r-max").first.fill("7")
    await rita.locator("#r-rules .r-window").first.fill("1000")
    await rita.click("#r-set")
    await expect(rita.locator("#r-status")).to_contain_text("/ 7 per 1 s")
    audit = rita.locator("#audit-table tbody tr")
    for action in ("set_guarantees", "decide_guarantee_request", "interrupt_contracts",
                   "resume_contracts", "set_rate_limits"):
        await expect(audit.filter(has_text=action).locator("td.result")).to_have_text("accepted")
        await expect(audit.filter(has_text=action).locator("td.by")).to_have_text("rita")
    await expect(audit.filter(has_text="GUARANTEES_SET")).to_contain_text("AG2")
    await expect(audit.filter(has_text="RATE_LIMITS_SET").first.locator("td.by")).to_have_text(
        "rita")
    # carlos's screen shows his new limit (it polls its throttling status every 5 s)
    await expect(carlos.locator("#throttle")).to_contain_text("per 1 s", timeout=8000)
    await expect(carlos.locator("#throttle")).to_contain_text("/ 7 per 1 s", timeout=8000)


async def test_console_guarantee_amount_is_the_selected_agents(screens: Screens) -> None:
    """The reserved-guarantees field shows the selected agent's amount, never the agent
    selected before it (Set would give that amount to this one): empty until this agent's
    account is there, then filled with it."""
    rita = await screens.console("rita")
    ag1 = rita.locator('#agents-table tr[data-agent="AG1"]')
    ag2 = rita.locator('#agents-table tr[data-agent="AG2"]')
    await expect(ag2.locator("td.reserved")).to_have_text(f"100{NBSP}000.00")
    await ag1.click()
    await expect(rita.locator("#g-amount")).to_have_value("50000.00")
    # AG2's account not there yet (as right after it is watched, or while it loads)
    await rita.evaluate("window.rondaConsole.C.agents.get('AG2').account = null")
    await ag2.click()
    await expect(rita.locator("#d-agent")).to_have_text("AG2")
    await expect(rita.locator("#g-amount")).to_have_value("")
    await rita.click("#g-set")
    await expect(rita.locator(".toast.warn")).to_contain_text(
        "set_guarantees: enter the amount for AG2")
    # its account arrives (an account message on the officers' stream)
    await rita.evaluate("""() => window.rondaConsole.route({type: 'account',
        stream: 'private:AG2', agent: 'AG2', reserved: '100000.00', used: '0.00',
        free: '100000.00', obligations: '0.00', debtor_orders: '0.00', sync_reduction: '0.00',
        requested_reductions: '0.00', requested_increases: '0.00',
        operative_limit: '100000.00', suspended: false, pending_requests: []})""")
    await expect(rita.locator("#g-amount")).to_have_value("100000.00")
    await expect(ag2.locator("td.reserved")).to_have_text(f"100{NBSP}000.00")
    audit = rita.locator("#audit-table tbody tr")
    await expect(audit.filter(has_text="set_guarantees")).to_have_count(0)


# ---------------------------------------------------------------------- static files, docs


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode(), r.headers["Content-Type"]


async def test_static_files_are_self_contained(market: Market) -> None:
    web = Path(__file__).resolve().parents[1] / "clients" / "web"
    files = sorted(p.name for p in web.iterdir() if p.is_file())
    assert {"index.html", "console.html", "app.js", "console.js", "book.js", "conn.js",
            "chart.js", "util.js", "style.css"} <= set(files)
    for name in files:
        # the server runs on this event loop: fetch from a thread
        body, ctype = await asyncio.to_thread(_get, f"{market.url}/{name}")
        assert body == (web / name).read_text(), name
        if name.endswith(".js"):
            assert "javascript" in ctype, (name, ctype)
        # nothing from the internet: no absolute URLs in what the browser loads
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", body), name
        assert not re.search(r"""\bimport\b[^;]*from\s*["'](https?:)?//""", body), name
    index, ctype = await asyncio.to_thread(_get, f"{market.url}/")
    assert "<title>ronda · trading</title>" in index and ctype.startswith("text/html")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_screenshots_of_the_main_screens(tmp_path: Path) -> None:
    shots = await take_screenshots(tmp_path / "shots")
    assert [p.name for p in shots] == ["trading.png", "console.png"]
    for p in shots:
        assert _png_size(p) == (1600, 1000)
        assert p.stat().st_size > 30_000, p  # a real screen, not a blank page
    docs = Path(__file__).resolve().parents[1] / "docs"
    text = (docs / "web.md").read_text()
    for p in shots:
        assert f"screenshots/{p.name}" in text
        assert (docs / "screenshots" / p.name).is_file()
