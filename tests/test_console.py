"""The web console in a real browser (Debian's chromium + chromium-driver, headless).

The agent is built in-process with its real HTTP server and console, a sample store seeded
with real training faces (their crops and int8 features from the shipped bundle), and a
deliberately bad site head in use, so that adapting on the labelled faces must win.
The browser logs in with the token, labels crops with the keyboard, adapts, accepts,
reverts, and leaves a screenshot in test-artifacts/ (or $MASKWATCH_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from maskwatch.agent.config import load
from maskwatch.agent.service import Agent
from maskwatch.agent.vision.classify import Classifier
from maskwatch.agent.vision.head import HEAD_FILE, Head, write_head
from maskwatch.agent.vision.predict import read_image_file
from maskwatch.agent.vision.preprocess import face_input, whole_image_box

from .conftest import free_port, need_module, need_tool
from .conftest import http_request as fetch

TOKEN = "console-test-token-1234"
ARTIFACTS = Path(os.environ.get("MASKWATCH_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))


def seed_store(agent: Agent, shared: Path, labelled: int, unlabelled: int) -> list[int]:
    """Real faces into the store; returns the unlabelled ids, newest first."""
    classifier = Classifier()
    store = agent.samples
    fresh = []
    for label in ("with_mask", "without_mask"):
        paths = sorted((shared / "data/train/jolignier" / label).glob("*.jpg"))
        for i, path in enumerate(paths[:labelled + unlabelled]):
            image = read_image_file(str(path))
            crop = face_input(image, whole_image_box(image, classifier.crop), classifier.crop)
            p = classifier.predict_crops(crop[None])[0]
            sample = store.add(crop, p.features, p.label, p.confidence,
                               p.scores["without_mask"], 100 + i, "near_threshold")
            if i < labelled:
                store.set_label([sample], label)
            else:
                fresh.append(sample)
    return sorted(fresh, reverse=True)


@pytest.fixture
def console_agent(tmp_path, shared, monkeypatch):
    monkeypatch.setenv("MW_CONSOLE_TOKEN", TOKEN)
    cfg = load(None, [f"state_dir={tmp_path}", "http.enabled=true", f"http.port={free_port()}",
                      "http.console=true", "http.token_env=MW_CONSOLE_TOKEN",
                      "adapt.collect=true", "mqtt.port=1", "device_id=console-test"])
    classifier = Classifier()
    bundle = classifier.bundle_head()
    write_head(tmp_path / HEAD_FILE, Head(bundle.weights, -50.0, 0.5, classifier.info.sha256,
                                          "site-everything-masked"))
    agent = Agent(cfg, publish=False)
    agent.unlabelled = seed_store(agent, shared, labelled=12, unlabelled=3)
    for listener in agent.on_event:  # one person for the chart and the recent list
        listener({"type": "new", "track_id": 7, "label": "without_mask", "confidence": 0.97,
                  "ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())})
    agent.http.start()
    yield agent
    agent.http.stop()


def base(agent: Agent) -> str:
    return f"http://127.0.0.1:{agent.http.port}"


def test_console_refuses_without_the_token_and_without_csrf(console_agent):
    url = base(console_agent)
    assert fetch(url + "/console/api/status")[0] == 401
    status, body = fetch(url + "/console/")
    assert status == 200 and b"needs the token" in body  # the login page, nothing else
    assert fetch(url + "/console/api/crops/1.jpg")[0] == 401
    bad = fetch(url + "/console/login", b"token=wrong")
    assert bad[0] == 401 and b"Wrong token" in bad[1]
    label = json.dumps({"ids": [1], "label": "with_mask"}).encode()
    # the bearer token alone reads, but a state change needs the session's CSRF token too
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert fetch(url + "/console/api/status", headers=bearer)[0] == 200
    assert fetch(url + "/console/api/label", label, bearer)[0] == 403
    assert fetch(url + "/console/api/revert", b"{}", bearer)[0] == 403
    assert (console_agent.cfg.state_dir and
            (Path(console_agent.cfg.state_dir) / HEAD_FILE).exists())  # nothing changed


@pytest.fixture
def browser():
    need_module("selenium", "the console test drives a real browser")
    chromium = need_tool("chromium", "the console test's browser (apt install chromium)")
    driver_path = need_tool("chromedriver", "the console test's driver (apt install "
                            "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,1400", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("timed out waiting in the browser")


def test_console_labels_with_the_keyboard_adapts_accepts_and_reverts(console_agent, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url = base(console_agent)
    store = console_agent.samples
    browser.set_window_size(1280, 1400)
    browser.get(url + "/console/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    tiles = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#grid .tile"))
    assert [int(t.get_attribute("data-id")) for t in tiles] == console_agent.unlabelled
    assert "site-everything-masked" in wait_for(
        lambda: browser.find_element(By.ID, "st-head").text.strip("…"))
    body = browser.find_element(By.TAG_NAME, "body")
    # the newest crops come first: three unmasked faces, then three masked ones
    for key in ("n", "x", Keys.ARROW_RIGHT, "m"):  # no mask, skip, pass one by, mask
        body.send_keys(key)
        time.sleep(0.3)
    ids = console_agent.unlabelled
    wanted = {ids[0]: "without_mask", ids[1]: "skip", ids[2]: None, ids[3]: "with_mask"}
    wait_for(lambda: {s.id: s.label for s in store.list() if s.id in wanted} == wanted)
    assert "mask 13" in browser.find_element(By.ID, "counts").text
    assert "no mask 13" in browser.find_element(By.ID, "counts").text

    browser.find_element(By.ID, "adapt").click()
    accept = browser.find_element(By.ID, "accept")
    wait_for(accept.is_displayed)
    table = browser.find_element(By.ID, "adapt-table").text
    assert "50.0 %" in table  # the bad head's site balanced accuracy, before
    accept.click()
    wait_for(lambda: "installed" in browser.find_element(By.ID, "message").text)
    installed = json.loads((Path(console_agent.cfg.state_dir) / HEAD_FILE).read_text())
    assert installed["provenance"]["site_samples"] == {"with_mask": 13, "without_mask": 13}
    running = console_agent.pipeline.classifier.heads
    running.refresh()
    assert running.current().id == installed["id"]  # the agent's own classifier uses it
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "console.png"))
    assert (ARTIFACTS / "console.png").stat().st_size > 10_000

    browser.find_element(By.ID, "revert").click()
    wait_for(lambda: "bundle's head" in browser.find_element(By.ID, "message").text)
    assert not (Path(console_agent.cfg.state_dir) / HEAD_FILE).exists()
    running.refresh()
    assert running.current() is None
    chart = browser.find_elements(By.CSS_SELECTOR, "#chart rect")
    assert chart and "person #7 new: no mask" in browser.find_element(By.ID, "recent").text
    assert "without_mask" not in browser.find_element(By.TAG_NAME, "body").text  # words only
    check_chart_layout(browser)
    browser.save_screenshot(str(ARTIFACTS / "console-1280.png"))
    browser.set_window_size(400, 1400)  # a phone
    wait_for(lambda: browser.execute_script(
        "return document.documentElement.scrollWidth") <= 400 + 1)  # nothing overflows
    check_chart_layout(browser)
    browser.save_screenshot(str(ARTIFACTS / "console-400.png"))


def check_chart_layout(browser) -> None:
    """The chart fills its box with "now" at the right edge, a count axis and times."""
    from selenium.webdriver.common.by import By

    def laid_out():
        return browser.execute_script("""
          const svg = document.getElementById("chart"), box = svg.getBoundingClientRect();
          const texts = [...svg.querySelectorAll("text")];
          const now = texts.find((t) => t.textContent === "now");
          const rects = [...svg.querySelectorAll("rect")].map((r) => r.getBoundingClientRect());
          return now && rects.length ? { width: box.width, right: box.right,
            nowRight: now.getBoundingClientRect().right,
            lastBar: Math.max(...rects.map((r) => r.right)), labels: texts.length } : null;""")

    layout = wait_for(laid_out)
    assert layout["right"] - layout["nowRight"] < 8, layout  # "now" is the right edge
    assert layout["right"] - layout["lastBar"] < 0.05 * layout["width"], layout
    assert layout["labels"] >= 5  # 0, half and top counts, hours, "now"
    legend = browser.find_element(By.ID, "legend").text
    assert "no mask: " in legend and "mask: " in legend  # counts in the legend


def test_login_page_is_one_card_that_holds_a_wrong_token_at_400_px(console_agent, browser):
    from selenium.webdriver.common.by import By

    browser.set_window_size(400, 900)
    browser.get(base(console_agent) + "/console/")
    browser.find_element(By.ID, "token").send_keys("wrong-" + "x" * 60)
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".login .error"))
    card, form = (browser.find_element(By.CSS_SELECTOR, selector).rect
                  for selector in ("main.login", ".login form"))
    assert form["x"] >= card["x"] and form["x"] + form["width"] <= card["x"] + card["width"] + 1
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 401
    assert browser.execute_script(
        "return getComputedStyle(document.querySelector('main.login')).display") == "block"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "console-login-400.png"))

