"""`python -m finetune.review` as a user runs it: the real server process over a store a real tiny run built, driven
by a real headless browser (Debian's chromium through Selenium and chromium-driver).

The store is the witness: the outputs page shows the texts `candidates` holds, and a key press on the Rate page comes
back as a `judgments` row of `rater:NAME`, the same row `finetune.rate import` writes, which the rater's report reads.
Set REVIEW_SCREENSHOTS=docs/review to keep a PNG of each page."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from store import Store

ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def review(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune.review", *args], capture_output=True, text=True, env=ENV,
                          timeout=60, **kw)


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError:
        return 0  # not answering yet


def test_bad_flags_and_stores_are_one_line_exit_2(tmp_path):
    """A missing store, a bad port and a port in use: one line on stderr, exit 2, no traceback, nothing created."""
    missing = review("--db", str(tmp_path / "none.duckdb"))
    assert missing.returncode == 2 and "no store at" in missing.stderr and tmp_path.exists()
    assert not (tmp_path / "none.duckdb").exists()
    Store(tmp_path / "t.duckdb").close()
    for port, message in (("http", "--port must be a number"), ("70000", "--port must be from 1 to 65535")):
        out = review("--db", str(tmp_path / "t.duckdb"), "--port", port)
        assert out.returncode == 2 and message in out.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = review("--db", str(tmp_path / "t.duckdb"), "--port", str(taken.getsockname()[1]))
    assert out.returncode == 2 and "is in use" in out.stderr
    for out in (missing, out):
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """The README's main job on the tiny profile (imitation, then DPO on the critic's feedback, then evaluation):
    a warm start and a feedback student, with the critic's verdicts on both."""
    tmp = tmp_path_factory.mktemp("review")
    db = tmp / "t.duckdb"
    out = subprocess.run([sys.executable, "-m", "programs.compile", "--profile", "tiny", "--limit", "2", "--max-steps",
                          "2", "--db", str(db), "--out", str(tmp / "out")], capture_output=True, text=True, env=ENV,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return db


@pytest.fixture(scope="module")
def server(tiny_store):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "finetune.review", "--db", str(tiny_store), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
        assert match, f"no URL printed: {line!r}"
        base, token = match.groups()
        deadline = time.monotonic() + 60
        while status(f"{base}?token={token}") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "the server never answered"
            time.sleep(0.2)
        yield {"base": base, "token": token, "db": tiny_store}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromium-driver are needed (apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def shoot(driver, name: str) -> None:
    folder = os.environ.get("REVIEW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


@pytest.mark.slow
def test_review_pages_in_a_browser_and_a_key_press_is_a_stored_rating(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, token = server["base"], server["token"]
    assert status(base) == 403 and status(f"{base}outputs") == 403  # no token
    assert status(f"{base}outputs?token=not-{token}") == 403
    assert status(f"{base}training/x.png") == 403

    store = Store(server["db"], create=False)
    wait = WebDriverWait(browser, 30)
    browser.get(f"{base}?token={token}")  # the URL the command printed; a cookie carries the token on
    assert "run " in browser.find_element(By.CSS_SELECTOR, ".run h2").text
    shoot(browser, "runs")

    # outputs: every student's output for an input, as the store holds it
    browser.get(f"{base}outputs?split=test")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.item")
    assert rows
    expected = store.query("SELECT c.producer, c.text FROM candidates c WHERE c.role = 'student' AND c.rank = 0 "
                           "AND c.input_id = ?", [rows[0].get_attribute("data-input")])
    assert len(expected) == 2  # the warm start and the DPO student
    shown = {td.get_attribute("data-student"): td.find_element(By.CSS_SELECTOR, ".text").text
             for td in rows[0].find_elements(By.CSS_SELECTOR, "td.output")}
    assert shown == {e["producer"]: " ".join(e["text"].split()) for e in expected}
    shoot(browser, "outputs")

    browser.get(f"{base}training")
    curves = browser.find_elements(By.CSS_SELECTOR, "img")
    assert curves and all(browser.execute_script("return arguments[0].naturalWidth", img) > 100 for img in curves)
    shoot(browser, "training")

    # rate: a blind pair of the warm start against the teacher, one key press, read back from the store
    student = store.query("SELECT DISTINCT producer FROM candidates WHERE role = 'student' ORDER BY 1")[0]["producer"]
    browser.get(f"{base}rate")
    browser.find_element(By.ID, "rater").send_keys("alice")
    Select(browser.find_element(By.NAME, "x")).select_by_value(student)
    Select(browser.find_element(By.NAME, "y")).select_by_value("teacher")
    shoot(browser, "rate-start")
    browser.find_element(By.ID, "start").click()
    a_text = wait.until(ec.presence_of_element_located((By.ID, "A"))).text.split("\n", 1)[1]
    assert student not in browser.page_source  # labels hidden
    shoot(browser, "rate")
    counter = browser.find_element(By.CSS_SELECTOR, "p.muted").text
    browser.find_element(By.TAG_NAME, "body").send_keys("a")
    wait.until(lambda d: d.find_elements(By.ID, "done") or d.find_element(By.CSS_SELECTOR, "p.muted").text != counter)

    judged = store.query("SELECT j.*, c.text AS first_text FROM judgments j JOIN candidates c "
                         "ON c.candidate_id = j.first_id WHERE j.judge = 'rater:alice'")
    assert len(judged) == 1
    j = judged[0]
    assert (j["method"], j["source"], j["choice"], j["p_first"]) == ("rating", "rating", 1, 1.0)
    assert " ".join(j["first_text"].split()) == a_text
    verdicts = store.query("SELECT * FROM verdicts WHERE judge = 'rater:alice' AND method = 'rating'")
    assert len(verdicts) == 1 and verdicts[0]["p_a"] in (0.0, 1.0)

    from finetune.rate import report

    r = report(store, "alice", student, "teacher")  # the file import's report reads the page's rating
    assert r["n"] >= 1 and r["rater"] == "rater:alice"
