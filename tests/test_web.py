"""The gateway's web page, driven in headless Chromium (Debian's chromium and chromedriver)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.gateway_helpers import serving

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("SAFEROOM_REQUIRE_BROWSER"):
        raise RuntimeError("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as seen  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(room, tmp_path_factory):
    yield from serving(room, tmp_path_factory, "web")


@pytest.fixture()
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="saferoom-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def sign_in(browser, server, token: str) -> WebDriverWait:
    browser.get(server.url + "/")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "signin-button").click()
    wait = WebDriverWait(browser, 20)
    wait.until(seen.visibility_of_element_located((By.ID, "catalog")))
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#catalog table"))
    return wait


def run(browser, wait: WebDriverWait, sql: str) -> None:
    box = browser.find_element(By.ID, "sql")
    box.clear()
    box.send_keys(sql)
    browser.find_element(By.ID, "run").click()
    wait.until(lambda b: b.find_element(By.ID, "status").text not in ("", "running…") or b.find_element(By.ID, "error").text)


def test_analyst_browses_queries_and_is_refused(browser, server) -> None:
    wait = sign_in(browser, server, server.token("alice"))
    assert "alice (role analyst)" in browser.find_element(By.ID, "who").text
    catalog = browser.find_element(By.ID, "catalog").text
    assert "prod.cards" in catalog and "tag pci (card-theft)" in catalog
    denied = browser.find_elements(By.CSS_SELECTOR, "#catalog tr.deny")
    assert [row.text.split()[0] for row in denied] == ["pan"]
    run(browser, wait, "select region, count(*) as n from prod.orders group by 1")
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#result td")]
    assert cells[0] == "EU" and "1 rows" in browser.find_element(By.ID, "status").text
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


def shaped(browser) -> list[list[str]]:
    """The rows of the decision the page shows under a result: column, from, you get, why."""
    rows = browser.find_elements(By.CSS_SELECTOR, "#decision tr")[1:]
    return [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in rows]


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


def test_a_bad_token_shows_an_error_and_no_data(browser, server) -> None:
    browser.get(server.url + "/")
    browser.find_element(By.ID, "token").send_keys("sr_000000000000_" + "A" * 43)
    browser.find_element(By.ID, "signin-button").click()
    WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "signin-error").text)
    assert "not valid" in browser.find_element(By.ID, "signin-error").text
    assert not browser.find_element(By.ID, "app").is_displayed()
