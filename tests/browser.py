"""Browser fixtures for the web screens (clients/web): Playwright for Python driving
Debian's chromium, against a real ronda server started in-process on a free port.

* :func:`market` — a server with demo reference data (examples/refdata.toml) and contracts
  created and opened over WebSocket by the market operator (marta), as in production;
  :class:`Market` also trades for other users through plain WebSocket clients.
* :func:`browser` — headless chromium (``/usr/bin/chromium``, or ``RONDA_CHROMIUM``).  No
  browser is ever downloaded: a missing chromium or Playwright fails the test with a message
  saying what to install (``./test.sh`` installs both).
* :class:`Screens` — opens the trading screen or the risk console as a user in its own
  browser context (own storage, like another person's machine), and fails the test if a
  page throws a JavaScript error.

``python tests/browser.py docs/screenshots`` builds a small live market and saves the
screenshots used by docs/web.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from wsclient import Client, connect_as, contract_id, iso, now_ms, order, start_server

CHROMIUM = Path(os.environ.get("RONDA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
TOKENS = {"ana": "ana-demo-token", "carlos": "carlos-demo-token", "bea": "bea-demo-token",
          "rita": "rita-demo-token", "marta": "marta-demo-token"}
UNIT = {"ana": "SELLU1", "carlos": "BUYU2", "bea": "SELLU3"}


def require_browser() -> Any:
    """The Playwright module, or a failed test saying what is missing (never a skip)."""
    try:
        from playwright import async_api
    except ImportError:  # pragma: no cover - depends on the machine
        pytest.fail("Playwright for Python is missing: .venv/bin/pip install playwright "
                    "(the Python package only; the browser is Debian's chromium)")
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"chromium not found at {CHROMIUM}: install Debian's chromium "
                    "(apt-get install -y chromium; ./test.sh does it) or set RONDA_CHROMIUM")
    return async_api


class Market:
    """A running server, its market operator's session and helper traders."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.port: int = server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.marta: Client | None = None
        self.clients: dict[str, Client] = {}

    async def client(self, user: str) -> Client:
        c = self.clients.get(user)
        if c is None:
            c = self.clients[user] = await connect_as(self.port, user)
        return c

    async def operator(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A market operator's request (as marta); it must be acknowledged."""
        if self.marta is None:
            self.marta = await connect_as(self.port, "marta")
        ans = await self.marta.request(msg)
        assert ans["type"] == "ack", ans
        return ans

    async def open_contracts(self, *ids: str, close_in_s: int = 3600) -> None:
        close_at = iso(now_ms() + close_in_s * 1000)
        for cid in ids:
            await self.operator({"type": "contract_create", "contract": cid, "close_at": close_at})
        await self.operator({"type": "contract_open", "contracts": list(ids)})

    async def interrupt(self, cid: str, reason: str) -> None:
        await self.operator({"type": "contract_interrupt", "contracts": [cid], "reason": reason})

    async def resume(self, cid: str) -> None:
        await self.operator({"type": "contract_resume", "contracts": [cid]})

    async def trade(self, user: str, cid: str, side: str, price: str, qty: str, **kw: Any
                    ) -> dict[str, Any]:
        """An order entered by ``user`` over WebSocket (not through a screen)."""
        c = await self.client(user)
        ans = await c.request(order(cid, UNIT[user], side, price, qty, **kw))
        assert ans["type"] == "ack", ans
        return ans

    async def close(self) -> None:
        for c in [*self.clients.values(), *([self.marta] if self.marta else [])]:
            await c.close()
        await self.server.stop()


@contextlib.asynccontextmanager
async def running_market(data_dir: Path, *contracts: str) -> AsyncIterator[Market]:
    server = await start_server(data_dir, (), demo_rate_limits=True)
    m = Market(server)
    try:
        if contracts:
            await m.open_contracts(*contracts)
        yield m
    finally:
        await m.close()


def expect(target: Any, **kw: Any) -> Any:
    """Playwright's auto-waiting assertions (imported only once the browser is there)."""
    return require_browser().expect(target, **kw)


class Screens:
    """Browser contexts of one test.  The test fails if a page throws a JavaScript error
    or asks for anything but the ronda server itself (nothing comes from the internet)."""

    def __init__(self, browser: Any, market: Market) -> None:
        self.browser = browser
        self.market = market
        self.contexts: list[Any] = []
        self.errors: list[str] = []
        self.requests: list[str] = []

    async def page(self, path: str = "/") -> Any:
        ctx = await self.browser.new_context(viewport=VIEWPORT, timezone_id="Europe/Madrid",
                                             locale="en-GB")
        self.contexts.append(ctx)
        page = await ctx.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"{path}: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(
            f"{path}: console: {msg.text}"))
        page.on("request", lambda req: self.requests.append(req.url))
        await page.goto(self.market.url + path)
        return page

    async def trader(self, user: str, contract: str | None = None) -> Any:
        """The trading screen logged in as ``user`` (with ``contract`` selected)."""
        page = await self.page("/")
        await page.fill("#login-user", user)
        await page.fill("#login-token", TOKENS[user])
        await page.press("#login-token", "Enter")
        await page.wait_for_selector("#app:not([hidden])")
        await page.wait_for_selector("#contract-list .crow")
        if contract is not None:
            await page.click(f'#contract-list .crow[data-contract="{contract}"]')
            await page.wait_for_selector(f'#m-contract:text-is("{contract}")')
        await page.wait_for_selector("#book-status.ok")
        return page

    async def console(self, user: str = "rita") -> Any:
        page = await self.page("/console.html")
        await page.fill("#login-user", user)
        await page.fill("#login-token", TOKENS[user])
        await page.press("#login-token", "Enter")
        return page

    def check(self) -> None:
        assert not self.errors, "JavaScript errors in the web screens:\n" + "\n".join(
            self.errors)
        local = (f"http://127.0.0.1:{self.market.port}/", f"ws://127.0.0.1:{self.market.port}/",
                 "data:")
        foreign = [u for u in self.requests if not u.startswith(local)]
        assert not foreign, f"the screens asked for something outside ronda: {foreign}"

    async def close(self) -> None:
        for ctx in self.contexts:
            with contextlib.suppress(Exception):
                await ctx.close()


async def launch(playwright: Any) -> Any:
    return await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                            args=CHROMIUM_ARGS)


# ---------------------------------------------------------------------- fixtures

C1 = contract_id(10)
C2 = contract_id(11)
C3 = contract_id(12)


@pytest.fixture
async def market(tmp_path: Path) -> AsyncIterator[Market]:
    async with running_market(tmp_path / "srv", C1, C2, C3) as m:
        yield m


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    api = require_browser()
    async with api.async_playwright() as p:
        b = await launch(p)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def screens(browser: Any, market: Market) -> AsyncIterator[Screens]:
    s = Screens(browser, market)
    try:
        yield s
        s.check()
    finally:
        await s.close()


# ---------------------------------------------------------------------- screenshots


async def demo_market(m: Market) -> None:
    """A morning's market on C1 and C2: resting orders of three agents, a few trades."""
    # resting asks (ana: SELLU1, bea: SELLU3) and bids (carlos: BUYU2)
    await m.trade("ana", C1, "SELL", "52.40", "12.0")
    await m.trade("bea", C1, "SELL", "52.10", "8.5")
    await m.trade("ana", C1, "SELL", "51.80", "30.0", iceberg={"peak": "5.0"})
    await m.trade("bea", C1, "SELL", "53.00", "20.0")
    await m.trade("carlos", C1, "BUY", "50.90", "15.0")
    await m.trade("carlos", C1, "BUY", "50.50", "25.0")
    await m.trade("carlos", C1, "BUY", "49.75", "40.0")
    # a few trades at moving prices
    for price, qty in (("51.80", "2.0"), ("51.80", "3.0"), ("52.10", "4.0")):
        await m.trade("carlos", C1, "BUY", price, qty)
        await asyncio.sleep(0.25)
    await m.trade("bea", C1, "SELL", "50.90", "6.0")
    await m.trade("carlos", C1, "BUY", "51.20", "10.0")
    await m.trade("ana", C1, "SELL", "51.20", "4.0")
    await m.trade("ana", C2, "SELL", "48.00", "10.0")
    await m.trade("carlos", C2, "BUY", "48.00", "3.0")
    await m.trade("carlos", C2, "BUY", "47.20", "9.0")


async def take_screenshots(outdir: Path) -> list[Path]:
    """Screenshots of the trading screen (a live book) and the risk console."""
    api = require_browser()
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        async with running_market(Path(tmp), C1, C2, C3) as m, api.async_playwright() as p:
            b = await launch(p)
            s = Screens(b, m)
            try:
                page = await s.trader("ana", C1)
                await m.trade("ana", C1, "SELL", "53.50", "6.0")  # own orders in the book
                await demo_market(m)
                await page.fill("#t-price", "52.10")
                await page.fill("#t-qty", "5.0")
                await page.keyboard.press("Escape")
                await page.fill("#t-price", "51.95")
                await page.fill("#t-qty", "7.5")
                await page.wait_for_selector("#last-trades tbody tr")
                await page.wait_for_timeout(400)
                await page.evaluate("document.querySelectorAll('.toast').forEach(t => t.remove())")
                trading = outdir / "trading.png"
                await page.screenshot(path=str(trading))
                carlos = await m.client("carlos")
                ans = await carlos.request({"type": "guarantee_request", "change": "increase",
                                            "amount": "25000.00"})
                assert ans["type"] == "ack", ans
                con = await s.console("rita")
                ag2 = '#agents-table tr[data-agent="AG2"]'
                await con.wait_for_selector(f"{ag2} td.free:not(:empty)")
                await con.click(ag2)
                await con.fill("#g-amount", "120000.00")
                await con.click("#g-set")
                await con.wait_for_selector('#audit-table tr:has-text("GUARANTEES_SET")')
                await con.wait_for_timeout(300)
                await con.evaluate("document.querySelectorAll('.toast').forEach(t => t.remove())")
                console = outdir / "console.png"
                await con.screenshot(path=str(console))
                s.check()
            finally:
                await s.close()
                await b.close()
    return [trading, console]


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    for f in asyncio.run(take_screenshots(target)):
        print(f)
