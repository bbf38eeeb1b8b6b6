"""The gateway's web page, driven in headless Chromium (Debian's chromium and chromedriver).

Each state of the page is saved as a screenshot in ``build/screenshots/`` (or ``$SAFEROOM_SCREENSHOTS``),
so a person can look at what the tests saw.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.gateway_helpers import RITA, serving

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("SAFEROOM_REQUIRE_BROWSER"):
        raise RuntimeError("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as seen  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SHOTS = Path(os.environ.get("SAFEROOM_SCREENSHOTS") or Path(__file__).resolve().parents[1] / "build" / "screenshots")
BIG = "select o1.order_id, o2.amount from prod.orders o1, prod.orders o2 limit 50000"


@pytest.fixture(scope="module")
def server(room, tmp_path_factory):
    """The suite's gateway, and rita, who holds two roles."""
    yield from serving(room, tmp_path_factory, "web", users=RITA)


@pytest.fixture()
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="saferoom-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
        # the page's own policy would report a blocked script or style here, as would any script error
        problems = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and "/v1/" not in e["message"]]
        assert not problems, problems
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(browser, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SHOTS / f"{name}.png"))


def sign_in(browser, server, token: str) -> WebDriverWait:
    browser.get(server.url + "/")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "signin-button").click()
    wait = WebDriverWait(browser, 20)
    wait.until(seen.visibility_of_element_located((By.ID, "catalog")))
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#catalog table"))
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#editor .cm-content"))
    return wait


def write(browser, sql: str) -> None:
    """Put ``sql`` in the editor as a paste would (typing would meet the editor's own bracket closing)."""
    browser.execute_script("editor.value = arguments[0]", sql)


def run(browser, wait: WebDriverWait, sql: str) -> None:
    write(browser, sql)
    browser.find_element(By.ID, "run").click()
    wait.until(lambda b: b.find_element(By.ID, "status").text not in ("", "running…") or b.find_element(By.ID, "error").text)


def shaped(browser) -> list[list[str]]:
    """The rows of the decision the page shows under a result: column, from, you get, why."""
    rows = browser.find_elements(By.CSS_SELECTOR, "#decision tbody tr")
    return [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def result_cells(browser) -> list[list[str]]:
    return [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in browser.find_elements(By.CSS_SELECTOR, "#result tbody tr")]


def test_a_first_visit_says_where_a_token_comes_from(browser, server) -> None:
    browser.get(server.url + "/")
    hint = browser.find_element(By.ID, "token-hint").text
    assert "saferoom token create" in hint and "--user" in hint and "saferoom login" in hint
    assert not browser.find_element(By.ID, "app").is_displayed()
    shot(browser, "01-sign-in")


def test_a_bad_token_shows_an_error_and_no_data(browser, server) -> None:
    browser.get(server.url + "/")
    browser.find_element(By.ID, "token").send_keys("sr_000000000000_" + "A" * 43)
    browser.find_element(By.ID, "signin-button").click()
    WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "signin-error").text)
    assert "not valid" in browser.find_element(By.ID, "signin-error").text
    assert not browser.find_element(By.ID, "app").is_displayed()
    shot(browser, "02-bad-token")


def test_analyst_browses_queries_and_is_refused(browser, server) -> None:
    wait = sign_in(browser, server, server.token("alice"))
    assert "alice (role analyst)" in browser.find_element(By.ID, "who").text
    catalog = browser.find_element(By.ID, "catalog").text
    assert "prod.cards" in catalog and "tag pci (card-theft)" in catalog
    denied = browser.find_elements(By.CSS_SELECTOR, "#catalog tr.deny")
    assert [row.text.split()[0] for row in denied] == ["pan"]
    shot(browser, "03-signed-in")
    run(browser, wait, "select region, count(*) as n from prod.orders group by 1")
    assert result_cells(browser)[0][0] == "EU"
    assert browser.find_element(By.ID, "status").text == "1 row"
    assert shaped(browser)[:2] == [["region", "region", "allow", "untagged (public)"], ["n", "", "computed", ""]]
    assert "rows of prod.orders filtered: region = {user.region}" in browser.find_element(By.ID, "decision").text
    assert browser.find_element(By.ID, "notices").text == "rows of prod.orders are filtered for role analyst: region = 'EU'"
    run(browser, wait, "select name as who from prod.customers limit 1")
    assert shaped(browser) == [["who", "name", "tokenize", "tag pii (reidentification)"]]
    run(browser, wait, "select pan from prod.cards")
    error = browser.find_element(By.ID, "error").text
    assert "card-theft" in error and "investigator" in error
    assert not browser.find_element(By.ID, "decision").text
    assert not browser.find_element(By.ID, "audit-section").is_displayed()
    shot(browser, "04-refused")


def test_the_editor_highlights_and_completes_only_what_the_role_sees(browser, server) -> None:
    sign_in(browser, server, server.token("alice"))
    content = browser.find_element(By.CSS_SELECTOR, "#editor .cm-content")
    content.click()
    content.send_keys(Keys.CONTROL, "a")
    content.send_keys(Keys.DELETE)
    content.send_keys("select * from prod.cards where prod.cards.")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".cm-tooltip-autocomplete li"))
    offered = [li.text for li in browser.find_elements(By.CSS_SELECTOR, ".cm-tooltip-autocomplete li")]
    assert "card_id" in " ".join(offered) and not any("pan" in o for o in offered)  # a denied column is never offered
    shot(browser, "05-completion")
    content.send_keys(Keys.ENTER)  # takes the highlighted completion
    assert browser.execute_script("return editor.value").startswith("select * from prod.cards where prod.cards.")
    assert browser.execute_script("return editor.value") != "select * from prod.cards where prod.cards."
    # highlighting: the keyword is drawn in a colour of its own, unlike the plain text around it
    keyword = browser.execute_script(
        "const s = [...document.querySelectorAll('#editor .cm-line span')].find(e => e.textContent === 'select');"
        "return s ? getComputedStyle(s).color : null")
    plain = browser.execute_script("return getComputedStyle(document.querySelector('#editor .cm-line')).color")
    assert keyword and keyword != plain


def test_a_large_result_is_paged_from_the_server(browser, server) -> None:
    wait = sign_in(browser, server, server.token("alice"))
    run(browser, wait, BIG)
    assert browser.find_element(By.ID, "status").text == "50,000 rows"
    assert len(result_cells(browser)) == 100
    assert browser.find_element(By.ID, "page-info").text == "rows 1–100 of 50,000"
    # the page received one page of rows, not the result: the response is a few kilobytes
    sent = browser.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/v1/query')).map(e => e.encodedBodySize)")
    assert sent and max(sent) < 64 * 1024, sent
    first = result_cells(browser)[0]
    browser.find_element(By.ID, "next-page").click()
    wait.until(lambda b: b.find_element(By.ID, "page-info").text == "rows 101–200 of 50,000")
    assert result_cells(browser)[0] != first and len(result_cells(browser)) == 100
    browser.find_element(By.ID, "last-page").click()
    wait.until(lambda b: b.find_element(By.ID, "page-info").text == "rows 49,901–50,000 of 50,000")
    assert len(result_cells(browser)) == 100
    assert not browser.find_element(By.ID, "next-page").is_enabled()
    shot(browser, "06-paged")


def test_a_result_is_charted_bar_or_line_by_its_columns(browser, server) -> None:
    wait = sign_in(browser, server, server.token("alice"))
    run(browser, wait, "select strftime(created_at, '%Y-%m') as month, count(*) as n from prod.orders group by 1 order by 1")
    groups = len(result_cells(browser))
    browser.find_element(By.ID, "tab-chart").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#chart svg"))
    assert Select(browser.find_element(By.ID, "chart-kind")).first_selected_option.text == "bar"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart rect.bar")) == groups
    shot(browser, "07-chart-bar")
    run(browser, wait, "select cast(created_at as date) as day, sum(amount) as total from prod.orders group by 1 order by 1")
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#chart path.line"))  # the chart tab stays chosen
    assert Select(browser.find_element(By.ID, "chart-kind")).first_selected_option.text == "line"
    assert Select(browser.find_element(By.ID, "chart-y")).first_selected_option.text == "total"
    points = browser.find_element(By.CSS_SELECTOR, "#chart path.line").get_attribute("d").count("L") + 1
    days = int(browser.find_element(By.ID, "status").text.split()[0].replace(",", ""))
    assert points == min(days, 1000)
    shot(browser, "08-chart-line")
    Select(browser.find_element(By.ID, "chart-kind")).select_by_visible_text("bar")
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#chart rect.bar"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart rect.bar")) == min(days, 60)
    assert "first 60 bars" in browser.find_element(By.ID, "chart-note").text


def test_the_explain_panel_tells_before_running(browser, server) -> None:
    sign_in(browser, server, server.token("alice"))
    wait = WebDriverWait(browser, 20)
    write(browser, "select name, segment from prod.customers")
    wait.until(lambda b: "tokenize" in b.find_element(By.ID, "explain").text)
    assert "tag pii (reidentification)" in browser.find_element(By.ID, "explain").text
    assert not browser.find_element(By.ID, "output").is_displayed()  # nothing ran
    shot(browser, "09-explain")
    write(browser, "select pan from prod.cards")
    wait.until(lambda b: "Refused" in b.find_element(By.ID, "explain").text)
    assert "card-theft" in browser.find_element(By.ID, "explain").text
    shot(browser, "10-explain-refused")


def test_the_catalog_can_be_searched(browser, server) -> None:
    sign_in(browser, server, server.token("alice"))
    search = browser.find_element(By.ID, "catalog-search")
    search.send_keys("pan")
    visible = [t.find_element(By.TAG_NAME, "h3").text for t in browser.find_elements(By.CSS_SELECTOR, ".catalog-table") if t.is_displayed()]
    assert visible == ["prod.cards"]
    rows = [r.text.split()[0] for r in browser.find_elements(By.CSS_SELECTOR, ".catalog-table tbody tr") if r.is_displayed()]
    assert rows == ["pan"]
    shot(browser, "11-catalog-search")
    search.clear()
    search.send_keys("orders")  # a table's name shows all of its columns
    rows = [r.text.split()[0] for r in browser.find_elements(By.CSS_SELECTOR, ".catalog-table tbody tr") if r.is_displayed()]
    assert "region" in rows and "amount" in rows
    search.send_keys(" nothing-like-this")
    assert browser.find_element(By.ID, "catalog-empty").is_displayed()


def test_signing_out_forgets_the_token_and_the_kept_results(browser, server) -> None:
    token = server.token("alice")
    wait = sign_in(browser, server, token)
    run(browser, wait, BIG)
    kept = browser.execute_script("return current.id")
    page = httpx.get(f"{server.url}/v1/results/{kept}", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200 and page.json()["total"] == 50000
    browser.find_element(By.ID, "signout").click()
    wait.until(seen.visibility_of_element_located((By.ID, "signin-view")))
    assert not browser.find_element(By.ID, "app").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('saferoom-token')") is None
    assert not browser.find_element(By.ID, "catalog").text and not browser.find_element(By.ID, "result").text
    assert httpx.get(f"{server.url}/v1/results/{kept}", headers={"Authorization": f"Bearer {token}"}).status_code == 404
    browser.refresh()
    assert browser.find_element(By.ID, "signin-view").is_displayed()
    shot(browser, "12-signed-out")


def test_a_user_with_two_roles_switches_between_them(browser, server) -> None:
    wait = sign_in(browser, server, server.token("rita"))
    assert "rita (role analyst)" in browser.find_element(By.ID, "who").text
    assert not browser.find_element(By.ID, "audit-section").is_displayed()
    Select(browser.find_element(By.ID, "role")).select_by_visible_text("security")
    wait.until(lambda b: "role security" in b.find_element(By.ID, "who").text)
    wait.until(seen.visibility_of_element_located((By.ID, "audit-section")))
    run(browser, wait, "select count(*) as n from prod.orders")
    assert shaped(browser) == [["n", "", "computed", ""]]


def test_security_role_sees_the_audit_log(browser, server) -> None:
    wait = sign_in(browser, server, server.token("sam"))
    assert browser.find_element(By.ID, "audit-section").is_displayed()
    run(browser, wait, "select region from prod.orders limit 1")
    run(browser, wait, "select name from prod.customers")
    browser.find_element(By.ID, "load-audit").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#audit td"))
    audit = browser.find_element(By.ID, "audit").text
    assert "decision" in audit and "region: allow (untagged (public))" in audit
    assert "column `name` of prod.customers is tagged `pii`" in audit  # a refusal's own reason
    times = browser.find_elements(By.CSS_SELECTOR, "#audit tbody td:nth-child(2)")
    assert times and all(t.value_of_css_property("white-space") == "nowrap" for t in times)
    assert all(t.size["height"] < 2 * times[0].size["height"] for t in times)
    shot(browser, "13-audit")
