"""The judging page in a real browser: Debian's headless Chromium, driven by Selenium through
chromium-driver, against `twostage serve` (uvicorn) on a tiny BM25 index with an XSS document.

Logs in with the judge token, searches, sees both arms' lists, grades three documents (two clicks, one
key press), finds the grades in the store and in the exported TREC qrels, checks that the XSS document
ran no script and is shown as text, and saves a screenshot (also to runs/artifacts/judging-page.png).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import TINY, need

need("fastapi", "service")
need("uvicorn", "service")
need("jinja2", "service")
need("pyserini", "lucene")
need("onnxruntime", "rerank")
need("selenium", "test")

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.service_helpers import Server, write_experiment
from twostage_search.cli import main
from twostage_search.service.judging.pairs import query_key
from twostage_search.service.judging.store import JudgementStore

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACT = Path(__file__).resolve().parent.parent / "runs" / "artifacts" / "judging-page.png"
JUDGE_TOKEN, ADMIN_TOKEN = "judge-browser-token", "admin-browser-token"
QUERY = "moon ocean tides"
XSS_TITLE = "<script>window.__xss_script = 1</script>Tides & <b>moons</b>"
XSS_TEXT = "<img src=x onerror=\"window.__xss = 1; document.title = 'pwned'\"> The moon pulls the ocean tides."
EXTRA = [
    {"_id": "x01", "title": XSS_TITLE, "text": XSS_TEXT},
    {"_id": "x02", "title": "Spring tides", "text": "Spring tides come when the Sun and the Moon pull together."},
    {"_id": "x03", "title": "Waves", "text": "Ocean waves are driven by the wind, not by the moon."},
    {"_id": "x04", "title": "Tides tides tides", "text": "Moon, ocean, tides: moon ocean tides, tides, tides."},
]


def _browser(user_data: Path) -> webdriver.Chrome:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1100",
        f"--user-data-dir={user_data}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))


def _status(driver: webdriver.Chrome, text: str) -> None:
    WebDriverWait(driver, 20).until(lambda d: text in d.find_element(By.ID, "status").text)


def test_judging_page_in_chromium(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text((TINY / "corpus.jsonl").read_text() + "".join(json.dumps(d) + "\n" for d in EXTRA))
    index = tmp_path / "bm25"
    argv = ["index", str(corpus), "--index", str(index), "--backend", "lucene-bm25", "--no-progress"]
    assert main(argv) == 0
    arms = [
        {"name": "first-stage", "weight": 0.5, "reranker": {"name": "identity"}, "depth": 10},
        {"name": "ce", "weight": 0.5, "reranker": {"name": "onnx-cross-encoder"}, "depth": 10, "rerank_depth": 10},
    ]
    exp = write_experiment(tmp_path / "exp.yaml", "judging", arms)
    data = tmp_path / "data"
    env = {"TWOSTAGE_JUDGE_TOKEN": JUDGE_TOKEN, "TWOSTAGE_ADMIN_TOKEN": ADMIN_TOKEN}
    server = Server(index, exp, data, tmp_path / "server.log", env=env)
    driver = None
    try:
        driver = _browser(tmp_path / "chromium-profile")
        driver.get(f"{server.base}/judge")
        driver.find_element(By.ID, "token").send_keys(JUDGE_TOKEN)
        driver.find_element(By.ID, "name").send_keys("alice")
        driver.find_element(By.ID, "login-submit").click()
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "q"))
        driver.find_element(By.ID, "q").send_keys(QUERY + Keys.ENTER)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "overlap"))

        columns = [driver.find_elements(By.CSS_SELECTOR, f"#arm-{i} li.hit") for i in (1, 2)]
        assert [len(c) for c in columns] == [len(columns[0])] * 2 and len(columns[0]) >= 3
        assert driver.find_element(By.CSS_SELECTOR, "#arm-1 h2").text == "first-stage"
        assert driver.find_element(By.CSS_SELECTOR, "#arm-2 h2").text == "ce"
        first = columns[0]
        ids = [li.get_attribute("data-doc-id") for li in first[:3]]
        first[0].find_element(By.CSS_SELECTOR, 'button.grade[data-grade="3"]').click()  # a click
        _status(driver, f"graded {ids[0]}: 3")
        first[1].find_element(By.CSS_SELECTOR, 'button.grade[data-grade="1"]').click()
        _status(driver, f"graded {ids[1]}: 1")
        first[2].find_element(By.CSS_SELECTOR, ".doc-id").click()  # focus the document, then a key
        webdriver.ActionChains(driver).send_keys("2").perform()
        _status(driver, f"graded {ids[2]}: 2")
        chosen = driver.find_elements(By.CSS_SELECTOR, f'li.hit[data-doc-id="{ids[2]}"] button.grade.chosen')
        assert [b.get_attribute("data-grade") for b in chosen] == ["2", "2"]  # in both columns

        # The XSS document: shown as text, and no script of it ran.
        xss = driver.find_element(By.CSS_SELECTOR, '#arm-1 li.hit[data-doc-id="x01"]')
        assert xss.find_element(By.CSS_SELECTOR, ".title").text == XSS_TITLE
        assert xss.find_element(By.CSS_SELECTOR, ".text").text == XSS_TEXT
        assert not xss.find_elements(By.TAG_NAME, "img") and not xss.find_elements(By.TAG_NAME, "b")
        state = driver.execute_script("return [document.title, typeof window.__xss, typeof window.__xss_script]")
        assert state == ["twostage judging", "undefined", "undefined"]

        shot = tmp_path / "judging-page.png"
        assert driver.save_screenshot(str(shot))
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ARTIFACT)
    finally:
        if driver is not None:
            driver.quit()
        server.stop()

    qid = query_key(QUERY)
    store = JudgementStore(data)
    got = {(j.query_id, j.doc_id, j.grade, j.source, j.judge) for j in store.judgements()}
    store.close()
    assert got == {(qid, doc, grade, "human", "alice") for doc, grade in zip(ids, (3, 1, 2), strict=True)}
    qrels = tmp_path / "judged.qrels"
    assert main(["judge", "export", "--data-dir", str(data), "--out", str(qrels)]) == 0
    expected = sorted(f"{qid} 0 {doc} {grade}" for doc, grade in zip(ids, (3, 1, 2), strict=True))
    assert qrels.read_text().splitlines() == expected
