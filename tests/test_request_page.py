"""The reviewer's queue on the web page, in headless Chromium: open a request, see the check's finding marked
in the file itself, approve; hostile file content stays text."""

from __future__ import annotations

import json

import pytest
from selenium.webdriver.common.by import By

from tests.requests_helpers import start
from tests.test_web import browser, shot, sign_in  # noqa: F401 - the browser fixture, shared

LEAKY = b"name,ssn,total\nZed Canary,212-45-6789,12\n<img src=x onerror=alert(1)>,none,3\n"
NOTEBOOK = {"cells": [{"cell_type": "markdown", "source": ["# Results"]},
                      {"cell_type": "code", "source": ["print('hi')"], "outputs": [{"text": ["hi\n"]}]}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = start(tmp_path_factory.mktemp("page"))
    yield running
    running.server.stop()


def test_a_reviewer_opens_a_request_sees_the_finding_in_place_and_approves(browser, gateway) -> None:  # noqa: F811
    request = gateway.release("ana", {"people.csv": LEAKY, "notes.txt": b"all fine\nssn 212-45-6789\n",
                                      "analysis.ipynb": json.dumps(NOTEBOOK).encode()})
    wait = sign_in(browser, gateway.server, gateway.tokens["rev1"])
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']"))
    browser.find_element(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".request-file")) == 3)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".request-file[data-name='people.csv'] td.finding"))
    marked = browser.find_elements(By.CSS_SELECTOR, ".request-file[data-name='people.csv'] td.finding")
    assert [cell.text for cell in marked] == ["212-45-6789"]  # the very cell the check found, and only it
    assert browser.find_elements(By.CSS_SELECTOR, ".request-file[data-name='notes.txt'] pre span.finding")[0].text == "ssn 212-45-6789"
    assert "print('hi')" in browser.find_element(By.CSS_SELECTOR, ".request-file[data-name='analysis.ipynb'] .notebook").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#request-files img")  # markup in a cell is text, never an element
    assert "<img src=x onerror=alert(1)>" in browser.find_element(By.ID, "request-files").text
    assert "findings of saferoom check" in browser.find_element(By.ID, "request-findings").text
    shot(browser, "request-review")
    browser.find_element(By.CSS_SELECTOR, ".file-comment[data-name='people.csv']").send_keys("ssn column is masked upstream")
    browser.find_element(By.ID, "approve").click()
    wait.until(lambda b: "approve recorded" in b.find_element(By.ID, "review-status").text)
    shown = gateway.ok("ana", "GET", f"/v1/requests/{request['id']}")
    assert shown["approvals"] == ["rev1"] and shown["reviews"][0]["comments"] == {"people.csv": "ssn column is masked upstream"}
    assert gateway.review("rev2", shown).json()["state"] == "released"


def test_the_requester_sees_their_request_without_review_controls(browser, gateway) -> None:  # noqa: F811
    request = gateway.release("ana", {"mine.csv": b"a,b\n1,2\n"})
    wait = sign_in(browser, gateway.server, gateway.tokens["ana"])
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']"))
    browser.find_element(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".request-file table"))
    assert not browser.find_element(By.ID, "review-controls").is_displayed()


def test_an_image_is_shown_from_the_page_own_fetch(browser, gateway) -> None:  # noqa: F811
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a4"
                        "5e0000000049454e44ae426082")
    request = gateway.release("ana", {"chart.png": png})
    wait = sign_in(browser, gateway.server, gateway.tokens["rev2"])
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']"))
    browser.find_element(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "img.request-image"))
    wait.until(lambda b: b.execute_script("return document.querySelector('img.request-image').naturalWidth") == 1)


PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a4"
                    "5e0000000049454e44ae426082")
SVG = ('<svg xmlns="http://www.w3.org/2000/svg" onload="window.svgRan = 1"><script>window.svgRan = 2</script>'
       '<circle r="5"/></svg>')


def test_notebook_image_outputs_are_drawn_and_svg_stays_text(browser, gateway) -> None:  # noqa: F811
    import base64

    outputs = [{"output_type": "display_data", "data": {"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"}},
               {"output_type": "display_data", "data": {"image/svg+xml": SVG}},
               {"output_type": "display_data", "data": {"image/png": base64.b64encode(b"<script>x</script>").decode()}}]
    notebook = {**NOTEBOOK, "cells": [{"cell_type": "code", "source": ["plot()"], "outputs": outputs}]}
    request = gateway.release("ana", {"plots.ipynb": json.dumps(notebook).encode()})
    wait = sign_in(browser, gateway.server, gateway.tokens["rev1"])
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']"))
    browser.find_element(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".notebook img.nb-image"))
    wait.until(lambda b: b.execute_script("return document.querySelector('.notebook img.nb-image').naturalWidth") == 1)
    images = browser.find_elements(By.CSS_SELECTOR, ".notebook img")
    assert len(images) == 1 and images[0].get_attribute("src").startswith("data:image/png;base64,")  # the PNG only
    assert SVG in browser.find_element(By.CSS_SELECTOR, ".notebook pre.nb-svg").text  # its source, as text
    assert not browser.find_elements(By.CSS_SELECTOR, "#request-files svg")
    assert browser.execute_script("return window.svgRan") is None  # its script never ran
    assert "says it is image/png but is not" in browser.find_element(By.CSS_SELECTOR, ".notebook").text
    shot(browser, "request-notebook-images")


def test_a_reviewer_delivers_again_a_release_the_outbox_refused(browser, gateway) -> None:  # noqa: F811
    outbox = gateway.outbox
    aside = outbox.with_name("outbox-aside")
    outbox.rename(aside)
    outbox.write_bytes(b"")  # a file where the outbox should be
    try:
        request = gateway.release("ana", {"late.csv": b"a,b\n1,2\n"})
        gateway.review("rev1", request)
        assert gateway.review("rev2", request).json()["state"] == "delivery-failed"
    finally:
        outbox.unlink()
        aside.rename(outbox)
    wait = sign_in(browser, gateway.server, gateway.tokens["rev1"])
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']"))
    browser.find_element(By.CSS_SELECTOR, f"tr.request-row[data-id='{request['id']}']").click()
    wait.until(lambda b: "delivery-failed" in b.find_element(By.ID, "request-title").text)
    assert not browser.find_element(By.ID, "review-controls").is_displayed()
    browser.find_element(By.ID, "deliver").click()
    wait.until(lambda b: "delivered: the request is released" in b.find_element(By.ID, "review-status").text)
    assert (outbox / request["id"] / "late.csv").read_bytes() == b"a,b\n1,2\n"
    assert not browser.find_element(By.ID, "deliver-controls").is_displayed()
