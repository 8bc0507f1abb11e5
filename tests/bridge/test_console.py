"""The trainer's console in a real browser: token, live bars, scenarios through PC/SC, the matrix.

One console per module serves a demo card in ``Virtual PCD 00 00`` of the session's private
pcscd; each test starts with class mode (every card back at the start). Waits are on page
selectors, never sleeps. Screenshots are saved under each test's tmp_path (the path is printed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mynaemu.console.run import ConsoleServer
from mynaemu.console.scenarios import MATRIX_ROWS, matrix_columns
from mynaemu.profile import Profile
from mynaemu.testing import issue_test_card
from tests.consolekit import chromium, need_browser, screenshot

pytestmark = pytest.mark.pcsc


@pytest.fixture(scope="module")
def console_server(pcscd, tmp_path_factory: pytest.TempPathFactory, _data_dir: Path) -> Iterator[ConsoleServer]:
    need_browser()
    demo = tmp_path_factory.mktemp("console") / "demo-card"
    issue_test_card(demo, kind="demo")
    with ConsoleServer([demo], start_pcscd=False) as server:
        yield server


@pytest.fixture
def console(console_server: ConsoleServer) -> ConsoleServer:
    """The module's console, every card back at the start (class mode)."""
    answer = console_server.console.class_reset()
    assert answer["ok"], answer
    return console_server


@pytest.fixture(scope="module")
def browser(console_server: ConsoleServer) -> Iterator[object]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(15000)
    yield p
    context.close()


def key_bar(key: str, tries: int) -> str:
    return f'section.card[data-index="0"] .key[data-key="{key}"][data-tries="{tries}"]'


def run_step(page, step: str) -> None:
    """Click a scenario step and wait until its (new) result is on the page."""
    li = page.locator(f'li.step[data-step="{step}"]')
    before = int(li.get_attribute("data-done") or 0)
    li.locator("button.run-step").click()
    page.wait_for_selector(f'li.step[data-step="{step}"][data-done="{before + 1}"]')


def test_console_opens_with_its_token_and_refuses_without(console: ConsoleServer, page, tmp_path: Path) -> None:
    origin = console.url.split("/t/")[0]
    for url in (origin + "/", origin + "/t/not-the-token/", console.url.replace(console.token, console.token[:-1] + "x"),
                origin + "/?token=wrong"):
        response = page.goto(url)
        assert response is not None and response.status == 403, url
    response = page.goto(f"{origin}/?token={console.token}")  # the printed form redirects to the token's path
    assert response is not None and response.status == 200
    page.wait_for_selector(key_bar("auth", 3))
    assert page.locator("html").get_attribute("lang") == "ja"
    screenshot(page, tmp_path, "console-ja")


def test_scenario_1_guessing_locks_the_auth_pin_and_the_office_unblocks_it(console: ConsoleServer, page,
                                                                          tmp_path: Path) -> None:
    page.goto(console.url + "scenario/lockout-auth?card=0&lang=en")
    page.wait_for_selector(key_bar("auth", 3))
    run_step(page, "select")
    assert page.locator('li[data-step="select"] tr[data-sw="63C3"]').count() == 1, page.inner_text('li[data-step="select"]')
    for left, status in ((2, "63C2"), (1, "63C1"), (0, "63C0")):
        run_step(page, "guess")
        page.wait_for_selector(key_bar("auth", left))
        assert page.locator(f'li[data-step="guess"] tr[data-sw="{status}"]').count() == 1
    page.wait_for_selector('section.card .key[data-key="auth"].locked .lock')
    assert page.locator('li[data-step="guess"] [data-note="locked-now"]').count() == 1
    run_step(page, "after-lock")  # even the right PIN: 6984
    assert page.locator('li[data-step="after-lock"] tr[data-sw="6984"]').count() == 1
    assert page.locator('li[data-step="after-lock"] [data-note="right-pin-refused"]').count() == 1
    # the live APDU log shows the lock too, decoded, and masked
    page.wait_for_selector('section.card tbody[data-field="apdus"] tr[data-sw="6984"]')
    log = page.inner_text('section.card tbody[data-field="apdus"]')
    assert "VERIFY" in log and "0020008004********" in log and "31323334" not in log
    screenshot(page, tmp_path, "scenario1-locked")
    run_step(page, "unblock")
    page.wait_for_selector(key_bar("auth", 3))
    assert page.locator('section.card .key[data-key="auth"].locked').count() == 0
    assert page.locator('li[data-step="unblock"] tr[data-sw="63C3"]').count() == 1
    screenshot(page, tmp_path, "scenario1-unblocked")


def test_scenario_1_signing_password_locks_after_five_and_the_kiosk_resets_it(console: ConsoleServer, page) -> None:
    page.goto(console.url + "scenario/lockout-sign?card=0")
    page.wait_for_selector(key_bar("sign", 5))
    for left in (4, 3, 2, 1, 0):
        run_step(page, "guess")
        page.wait_for_selector(key_bar("sign", left))
    run_step(page, "after-lock")
    assert page.locator('li[data-step="after-lock"] tr[data-sw="6984"]').count() == 1
    run_step(page, "kiosk")  # the kiosk rule: the auth PIN resets the signing password
    page.wait_for_selector(key_bar("sign", 5))
    assert page.locator('li[data-step="kiosk"] [data-note="kiosk-reset"]').count() == 1


def test_panel_actions_remove_insert_and_unblock(console: ConsoleServer, page) -> None:
    page.goto(console.url)
    panel = 'section.card[data-index="0"]'
    page.wait_for_selector(f'{panel} [data-field="presence"][data-state="inserted"]')
    page.click(f'{panel} button[data-action="remove"]')
    page.wait_for_selector(f'{panel} [data-field="presence"][data-state="removed"]')
    page.click(f'{panel} button[data-action="insert"]')
    page.wait_for_selector(f'{panel} [data-field="presence"][data-state="inserted"]')
    page.select_option(f'{panel} select[data-input="key"]', "text")
    page.fill(f'{panel} input[data-input="tries"]', "0")
    page.click(f'{panel} button[data-action="set-tries"]')
    page.wait_for_selector(f'{panel} .key[data-key="text"][data-tries="0"].locked')
    page.click(f'{panel} button[data-action="unblock"]')
    page.wait_for_selector(f'{panel} .key[data-key="text"][data-tries="3"]')
    page.click(f'{panel} button[data-action="hold"]')  # the hotline, through the authority's hook
    page.wait_for_selector(f'{panel} [data-field="certs"][data-state="held"]')
    page.click(f'{panel} button[data-action="lift"]')
    page.wait_for_selector(f'{panel} [data-field="certs"][data-state="good"]')
    # (reissue is not clicked here: it supersedes the module card's certificates for good, which
    # class mode cannot undo; tests/test_controls.py drives the same control.)


def expected_readable(profile: Profile, column_id: str, keys: tuple[str, ...]) -> bool:
    """The card's access rule (the profile) for one matrix cell: free, or any one of the keys."""
    ap, fid = column_id.split("-")
    rule = profile.aps[ap].efs[int(fid, 16)].read
    return rule is None or not rule.isdisjoint(keys)


def test_scenario_2_found_card_matrix_is_the_cards_access_rules(console: ConsoleServer, page, tmp_path: Path) -> None:
    profile = console.console.cards[0].card.profile
    page.goto(console.url + "scenario/found?card=0&lang=en")
    run_step(page, "matrix")
    page.wait_for_selector("table.matrix")
    columns = [c.id for c in matrix_columns(profile)]
    assert [h.get_attribute("data-col") for h in page.locator("table.matrix thead th[data-col]").all()] == columns
    readable_without_pins: set[str] = set()
    for row in MATRIX_ROWS:
        for col in columns:
            cell = page.locator(f'table.matrix td[data-row="{row.id}"][data-col="{col}"]')
            shown = cell.get_attribute("class") == "yes"
            assert shown == expected_readable(profile, col, row.keys), (row.id, col, cell.get_attribute("data-sw"))
            assert cell.get_attribute("data-sw") in ("9000", "6982"), (row.id, col)
            if shown and row.id in ("nothing", "check-a", "check-b", "birth", "face"):
                readable_without_pins.add(col)
    # Without a PIN: the certificates, AP information, the card face and the My Number, all printed or public;
    # never the signing certificate (name and address), never a signature.
    assert {"jpki-0001", "jpki-0017", "jpki-001A", "juki-0002", "common-0002"}.isdisjoint(readable_without_pins)
    assert page.locator('li[data-step="matrix"] [data-note="verify-failed"]').count() == 0
    screenshot(page, tmp_path, "scenario2-matrix")


def test_scenario_3_birthday_pin_gets_in_on_the_first_try(console: ConsoleServer, page) -> None:
    page.goto(console.url + "scenario/guessable?card=0")
    for step in ("holder-choice", "read-face", "guess"):
        run_step(page, step)
    assert page.locator('li[data-step="guess"] tr[data-sw="9000"]').count() == 3
    assert page.locator('li[data-step="guess"] [data-note="guessed-right"]').count() == 1
    page.wait_for_selector(key_bar("auth", 3))
    run_step(page, "use")
    assert page.locator('li[data-step="use"] [data-note="signed-as-holder"]').count() == 1
    run_step(page, "restore")


def test_scenario_5_a_leaked_my_number_opens_only_the_face(console: ConsoleServer, page) -> None:
    page.goto(console.url + "scenario/leaked?card=0")
    for step in ("text-a", "visual-a", "jpki", "no-chain"):
        run_step(page, step)
    assert page.locator('li[data-step="text-a"] [data-note="basic4-refused"]').count() == 1
    assert page.locator('li[data-step="jpki"] [data-note="no-login"]').count() == 1
    assert page.locator('li[data-step="no-chain"] [data-note="records-stay"]').count() == 1


def test_scenario_4_relying_party_refuses_with_the_ocsp_reason(console_server: ConsoleServer, browser,
                                                               tmp_path: Path) -> None:
    """Lost, then found (lift) or reissued: on a card of its own (a reissue supersedes its
    certificates for good, which class mode cannot undo), served in slot 1."""
    lost = tmp_path / "lost-demo"
    issue_test_card(lost, kind="demo")
    with ConsoleServer([lost], slot=1, start_pcscd=False) as console:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(15000)
        try:
            _scenario_4(console, page, tmp_path)
        finally:
            context.close()


def _scenario_4(console: ConsoleServer, page, tmp_path: Path) -> None:
    page.goto(console.url + "scenario/lost?card=0&lang=en")
    page.wait_for_selector('section.card [data-field="certs"][data-state="good"]')
    for step in ("accepted", "hotline", "refused"):
        run_step(page, step)
        assert page.locator(f'li[data-step="{step}"] .error').count() == 0, page.inner_text(f'li[data-step="{step}"]')
    assert page.locator('li[data-step="accepted"] [data-note="rp-accepted"]').count() == 1
    page.wait_for_selector('section.card [data-field="certs"][data-state="held"]')
    refused = page.inner_text('li[data-step="refused"] [data-note="rp-refused"]')
    assert "on hold (certificateHold)" in refused and "OCSP http://127.0.0.1:" in refused, refused
    screenshot(page, tmp_path, "scenario4-refused")
    run_step(page, "lift")
    assert page.locator('li[data-step="lift"] [data-note="rp-accepted"]').count() == 1
    page.wait_for_selector('section.card [data-field="certs"][data-state="good"]')
    run_step(page, "reissue")
    assert page.locator('li[data-step="reissue"] .error').count() == 0, page.inner_text('li[data-step="reissue"]')
    assert page.locator('li[data-step="reissue"] [data-note="reissued"]').count() == 1
    refused = page.inner_text('li[data-step="reissue"] [data-note="rp-refused"]')
    assert "superseded" in refused, refused
    page.wait_for_selector('section.card [data-field="certs"][data-state="revoked"]')


def test_show_guesses_is_for_the_demo_card_and_says_so(console: ConsoleServer, page, tmp_path: Path) -> None:
    page.goto(console.url + "scenario/lockout-auth?card=0&lang=en")
    assert page.locator("#guesses-banner").is_hidden()
    page.click("button.guesses-toggle")
    page.wait_for_selector("#guesses-banner:not([hidden])")
    run_step(page, "guess")
    page.wait_for_selector('section.card tbody[data-field="apdus"] tr[data-sw="63C2"]')
    assert "002000800430303030" in page.inner_text('section.card tbody[data-field="apdus"]')  # the guess 0000, shown
    screenshot(page, tmp_path, "show-guesses")
    page.click("button.guesses-toggle")
    page.wait_for_selector("#guesses-banner[hidden]", state="attached")
    run_step(page, "guess")
    page.wait_for_selector('section.card tbody[data-field="apdus"] tr[data-sw="63C1"]')
    first_row = page.inner_text('section.card tbody[data-field="apdus"] tr[data-sw="63C1"]')
    assert "0020008004********" in first_row


def test_language_switch_and_its_cookie(console: ConsoleServer, page) -> None:
    page.goto(console.url + "?lang=en")
    assert page.inner_text("header h1") == "My Number card trainer's console"
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "console_lang" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.goto(console.url)  # the cookie keeps the language
    assert page.inner_text("header h1") == "My Number card trainer's console"
    page.click("#lang-switch")
    page.wait_for_selector("html[lang=ja]")
    assert "講習コンソール" in page.inner_text("header h1")


def test_class_mode_resets_every_card_in_one_click(console: ConsoleServer, page) -> None:
    card = console.console.cards[0]
    assert card.handle({"op": "set-tries", "key": "auth", "tries": 0})["ok"]
    assert card.handle({"op": "remove"})["ok"]
    page.goto(console.url)
    page.wait_for_selector(key_bar("auth", 0))
    page.click("#class-reset")
    page.wait_for_selector(key_bar("auth", 3))
    page.wait_for_selector('section.card [data-field="presence"][data-state="inserted"]')
    page.wait_for_selector("#notice.good")


def test_an_attached_card_follows_its_serve_live_and_runs_scenario_1(console_server: ConsoleServer, browser,
                                                                       _data_dir: Path, tmp_path: Path) -> None:
    """A card served by `mynaemu serve` (slot 1): the console attaches through its control channel, the
    page follows its APDUs live (masked) and scenario 1 runs through the serve's reader."""
    import sys

    from test_real_clients import running, serve_env, stop

    from reader_bridge.pcscd import find_vpcd_readers, reader_name, wait_for_card

    demo = tmp_path / "attached-demo"
    issue_test_card(demo, kind="demo")
    name = reader_name(1, find_vpcd_readers())
    wait_for_card(name, present=False, timeout=10)
    args = [sys.executable, "-m", "mynaemu", "serve", str(demo), "--slot", "1", "--no-start-pcscd"]
    with running(args, env=serve_env(_data_dir), cwd=tmp_path) as (proc, lines):
        lines.expect(r"^Serving card \S+ in reader")
        lines.expect(r"steer it: mynaemu ctl")
        wait_for_card(name, present=True, timeout=10)
        with ConsoleServer([demo], start_pcscd=False) as attached:
            assert attached.console.cards[0].attached
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(15000)
            try:
                page.goto(attached.url + "scenario/lockout-auth?card=0&lang=en")
                page.wait_for_selector(key_bar("auth", 3))
                run_step(page, "select")
                for left in (2, 1, 0):
                    run_step(page, "guess")
                    page.wait_for_selector(key_bar("auth", left))
                run_step(page, "after-lock")
                assert page.locator('li[data-step="after-lock"] tr[data-sw="6984"]').count() == 1
                # The serve's exchanges reach the page, decoded and masked.
                page.wait_for_selector('section.card tbody[data-field="apdus"] tr[data-sw="6984"]')
                log = page.inner_text('section.card tbody[data-field="apdus"]')
                assert "VERIFY" in log and "0020008004********" in log and "31323334" not in log
                screenshot(page, tmp_path, "attached-locked")
                run_step(page, "unblock")  # the office's unblock, done by the serving process
                page.wait_for_selector(key_bar("auth", 3))
            finally:
                context.close()
        stop(proc, lines)
