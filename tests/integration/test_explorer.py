"""The explorer page in a real browser (Debian's Chromium, headless, through chromedriver) against
a real `smoothexplain serve` with the pretrained EfficientNet-Lite0 (`make model` builds it).

One server and one browser for the module. The tests run in order, as a user would: log in
with the printed link, explain the cat photograph, compare SmoothGrad with AdaptGrad, reproduce
the answer with the CLI the page offers, hit a server limit the form was made to let through,
abandon a long explanation. Screenshots go to build/explorer/ (docs/explorer.png is one).
"""

from __future__ import annotations

import base64
import io
import json
import shlex
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from aptget import ensure
from conftest import REPO_ROOT
from serveproc import ServeProcess
from tlscert import self_signed

from smoothexplain.explorer import ExplorerServer, ExplorerSettings, ModelFacts
from smoothexplain.explorer.samples import sample_files

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.integration

LITE0 = "efficientnet_lite0"
STORE = REPO_ROOT / "model_store"
SHOTS = REPO_ROOT / "build" / "explorer"
CAT_LABELS = {"Egyptian cat", "tabby", "tiger cat"}  # what Lite0 says of Chelsea (DESIGN §6)
SAMPLES = 16  # noise samples per explanation: a few seconds each on 2 cores


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    archive = STORE / f"{LITE0}.mar"
    assert archive.is_file(), f"{archive} is missing: run `make model`"
    root = tmp_path_factory.mktemp("explorer")
    with ServeProcess(root / "srv", STORE, [f"{LITE0}={LITE0}.mar"], explorer=True) as process:
        yield process


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    (chromium,) = ensure("chromium", "chromium")
    (driver_path,) = ensure("chromium-driver", "chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.add_argument("--window-size=1280,2000")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _explorer_url(serve: ServeProcess) -> str:
    return str(serve.endpoints["explorer"])


def _wait(browser: Any, condition: str, seconds: float = 180.0) -> Any:
    """Wait until the JavaScript expression `condition` is truthy; its value."""
    return WebDriverWait(browser, seconds, poll_frequency=0.25).until(
        lambda driver: driver.execute_script(f"return {condition}")
    )


def _status(browser: Any) -> str:
    return str(browser.find_element(By.ID, "status").text)


def _set(browser: Any, element_id: str, value: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def _explain(browser: Any, panels: int) -> None:
    browser.execute_script("document.getElementById('status').textContent = ''")
    browser.find_element(By.ID, "explain").click()
    _wait(browser, "document.getElementById('status').textContent.startsWith('done')")
    count = browser.execute_script("return document.querySelectorAll('#panels .panel').length")
    assert count == panels


# The overlay's alpha follows the map's intensity: a real map has both bright and faint parts.
_OVERLAY_STATS = """
const canvas = arguments[0];
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let bright = 0, faint = 0;
for (let i = 3; i < data.length; i += 4) {
  if (data[i] >= 200) bright++;
  if (data[i] <= 60) faint++;
}
return [bright, faint, canvas.width * canvas.height];
"""

_FETCH_BASE64 = """
const done = arguments[arguments.length - 1];
fetch(arguments[0]).then((r) => r.arrayBuffer()).then((buffer) => {
  let text = ''; const bytes = new Uint8Array(buffer);
  for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
  done(btoa(text));
});
"""


def _overlay_is_drawn(browser: Any, panel: Any) -> None:
    bright, faint, pixels = browser.execute_script(
        _OVERLAY_STATS, panel.find_element(By.CSS_SELECTOR, ".overlay")
    )
    assert pixels == 224 * 224
    assert bright > pixels // 200 and faint > pixels // 10, (bright, faint)


def test_the_page_needs_the_login_link(serve: ServeProcess, browser: Any) -> None:
    url = _explorer_url(serve)
    browser.get(url)
    assert "Log in to the explorer" in browser.page_source
    login = (serve.workdir / "explorer_login").read_text().strip()
    assert login.startswith(url + "?token=")
    browser.get(login)
    _wait(browser, "document.body.dataset.ready === 'true'")
    assert browser.current_url == url  # the token is gone from the address bar
    assert browser.get_cookies()[0]["httpOnly"] and browser.get_cookies()[0]["sameSite"] == "Strict"
    assert not (serve.workdir / "explorer_login").read_text().strip().endswith(login[-20:])


def test_every_control_has_a_label(browser: Any) -> None:
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select')]"
        ".filter((e) => !e.labels || e.labels.length === 0).map((e) => e.id)"
    )
    assert unlabelled == []


def test_the_cat_photograph_is_explained(browser: Any) -> None:
    Select(browser.find_element(By.ID, "model")).select_by_value(LITE0)
    _wait(browser, "document.getElementById('a-nt_samples').value !== ''")
    assert browser.find_element(By.ID, "a-nt_samples").get_attribute("value") == "50"  # default
    browser.find_element(By.CSS_SELECTOR, "#samples button[data-sample='cat']").click()
    _set(browser, "a-nt_samples", str(SAMPLES))
    _set(browser, "a-seed", "0")
    _explain(browser, panels=1)
    panel = browser.find_element(By.CSS_SELECTOR, "#panels .panel")
    top1 = panel.find_element(By.CSS_SELECTOR, ".topk li .label").text
    assert top1 in CAT_LABELS
    _overlay_is_drawn(browser, panel)
    facts = {
        e.get_attribute("data-fact"): e.text for e in panel.find_elements(By.CSS_SELECTOR, "dd")
    }
    assert facts["rows"] == str(SAMPLES) and facts["samples used"] == str(SAMPLES)
    assert facts["seed"] == "0" and facts["target"].endswith(f"({top1})")
    browser.save_screenshot(str(SHOTS / "cat.png"))


def test_the_cli_curl_and_python_lines_reproduce_the_answer(browser: Any, tmp_path: Path) -> None:
    panel = browser.find_element(By.CSS_SELECTOR, "#panels .panel")
    page_npy = panel.find_element(By.CSS_SELECTOR, ".npy").get_attribute("href")
    shown = np.load(
        io.BytesIO(base64.b64decode(browser.execute_async_script(_FETCH_BASE64, page_npy)))
    )
    assert shown.shape == (3, 224, 224) and shown.dtype == np.float32
    cli = panel.find_element(By.CSS_SELECTOR, ".command-cli").get_attribute("textContent")
    words = shlex.split(cli)
    assert words[:3] == ["smoothexplain", "explain", "chelsea.png"] and "--seed" in words
    shutil.copy(sample_files()["cat"], tmp_path / "chelsea.png")
    command = [sys.executable, "-m", "smoothexplain.client.cli", *words[1:]]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    again = np.load(tmp_path / "attributions.npy")
    np.testing.assert_array_equal(again, shown)  # same seed, same options: the same map
    curl = panel.find_element(By.CSS_SELECTOR, ".command-curl").get_attribute("textContent")
    assert f"/explanations/{LITE0}" in curl and '"seed":"0"' in curl
    done = subprocess.run(["bash", "-c", curl], cwd=tmp_path, capture_output=True, timeout=300)
    tensor = json.loads(done.stdout)["attribution"]
    raw = np.frombuffer(base64.b64decode(tensor["data"]), dtype="<f4").reshape(tensor["shape"])
    np.testing.assert_array_equal(raw, shown)
    python = panel.find_element(By.CSS_SELECTOR, ".command-python").get_attribute("textContent")
    assert "seed=0" in python and f'"{LITE0}"' in python
    python += '\nimport numpy\nnumpy.save("python.npy", numpy.asarray(attr))\n'
    done = subprocess.run(
        [sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "python.npy"), shown)


def test_smoothgrad_and_adaptgrad_side_by_side(browser: Any) -> None:
    browser.find_element(By.ID, "compare").click()
    assert Select(browser.find_element(By.ID, "b-noise")).first_selected_option.text == "adaptive"
    _set(browser, "b-nt_samples", str(SAMPLES))
    _set(browser, "b-seed", "0")
    _explain(browser, panels=2)
    panels = browser.find_elements(By.CSS_SELECTOR, "#panels .panel")
    titles = [p.find_element(By.CSS_SELECTOR, ".title").text for p in panels]
    assert "SmoothGrad" in titles[0] and "AdaptGrad" in titles[1], titles
    for panel in panels:
        _overlay_is_drawn(browser, panel)
    browser.set_window_size(1400, 1150)  # the view docs/explorer.png shows
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(SHOTS / "compare.png"))
    browser.set_window_size(1280, 2000)
    slider = browser.find_element(By.ID, "opacity")
    browser.execute_script(
        "arguments[0].value = 40; arguments[0].dispatchEvent(new Event('input'))", slider
    )
    assert (
        panels[0].find_element(By.CSS_SELECTOR, ".overlay").value_of_css_property("opacity")
        == "0.4"
    )


def test_a_server_limit_comes_back_naming_its_field(browser: Any) -> None:
    browser.find_element(By.ID, "compare").click()  # back to one setting
    # Bypass the form's own check (as a user with the developer tools could).
    browser.execute_script(
        "const n = document.getElementById('a-nt_samples');"
        "n.removeAttribute('max'); delete n.dataset.high; n.value = '100000';"
    )
    browser.find_element(By.ID, "explain").click()
    _wait(browser, "!document.getElementById('error').hidden", 60)
    error = browser.find_element(By.ID, "error")
    assert error.find_element(By.CSS_SELECTOR, ".field").text == "options.nt_samples"
    message = error.find_element(By.CSS_SELECTOR, ".message").text
    assert "max_nt_samples" in message and "100000" in message, message
    assert browser.find_element(By.ID, "a-nt_samples").get_attribute("aria-invalid") == "true"
    browser.save_screenshot(str(SHOTS / "field-error.png"))


def test_the_form_checks_the_limits_itself(browser: Any) -> None:
    _set(browser, "a-confidence", "1")  # [0.04, 1): the open end
    browser.find_element(By.ID, "explain").click()
    error = browser.find_element(By.ID, "error")
    assert error.find_element(By.CSS_SELECTOR, ".field").text == "options.confidence"
    _set(browser, "a-confidence", "0.95")


def test_a_long_explanation_can_be_abandoned(browser: Any) -> None:
    # A deadline the work fits in: with a shorter one, once the worker has learned its rate,
    # admission by cost answers 504 at once and there is nothing left to abandon.
    _set(browser, "a-nt_samples", "500")
    _set(browser, "seconds", "120")
    try:
        browser.find_element(By.ID, "explain").click()
        _wait(browser, "!document.getElementById('progress').hidden", 30)
        assert "rows, about" in _status(browser)
        browser.find_element(By.ID, "abandon").click()
        _wait(browser, "document.getElementById('status').textContent.startsWith('abandoned')", 30)
        assert browser.find_element(By.ID, "explain").is_enabled()
    finally:  # the next tests run with the usual settings whatever happened here
        _set(browser, "a-nt_samples", str(SAMPLES))
    _explain(browser, panels=1)  # after the abandoned work, which the server finishes


def test_clicking_a_class_explains_that_class(browser: Any) -> None:
    second = browser.find_elements(By.CSS_SELECTOR, "#panels .panel .topk button")[1]
    label = second.find_element(By.CSS_SELECTOR, ".label").text
    browser.execute_script("document.getElementById('status').textContent = ''")
    second.click()
    _wait(browser, "document.getElementById('status').textContent.startsWith('done')")
    chosen = browser.find_element(By.CSS_SELECTOR, "#panels .topk button[aria-pressed='true']")
    assert chosen.find_element(By.CSS_SELECTOR, ".label").text == label
    target = browser.find_element(By.CSS_SELECTOR, "#panels dd[data-fact='target']").text
    assert target.endswith(f"({label})")


def test_integrated_gradients_shows_its_own_settings(browser: Any) -> None:
    assert not browser.find_element(By.ID, "a-n_steps").is_displayed()
    Select(browser.find_element(By.ID, "a-method")).select_by_value("integrated_gradients")
    _set(browser, "a-nt_samples", "2")
    _set(browser, "a-n_steps", "4")
    browser.find_element(By.ID, "a-return_convergence_delta").click()
    _explain(browser, panels=1)
    facts = browser.find_element(By.CSS_SELECTOR, "#panels .facts")
    assert facts.find_element(By.CSS_SELECTOR, "dd[data-fact='rows']").text == "8"
    delta = facts.find_element(By.CSS_SELECTOR, "dd[data-fact='convergence delta']").text
    assert delta != "—"
    Select(browser.find_element(By.ID, "a-method")).select_by_value("gradient")
    _set(browser, "a-nt_samples", str(SAMPLES))


def test_the_page_fits_a_narrow_window(browser: Any) -> None:
    browser.set_window_size(420, 2000)
    try:
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        browser.save_screenshot(str(SHOTS / "narrow.png"))
    finally:
        browser.set_window_size(1280, 2000)


def test_requests_from_elsewhere_are_refused(serve: ServeProcess) -> None:
    url = _explorer_url(serve)
    port = url.rstrip("/").rsplit(":", 1)[-1]
    rebound = requests.get(url, headers={"Host": f"attacker.example:{port}"}, timeout=10)
    assert rebound.status_code == 403
    anonymous = requests.post(f"{url}api/explain", json={}, timeout=10)
    assert anonymous.status_code == 401 and "session" in anonymous.json()["error"]["message"]
    # TorchServe's own CORS stays off: no browser page elsewhere may read its answers.
    preflight = requests.options(
        f"{serve.endpoints['rest']}/explanations/{LITE0}",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_over_tls_the_session_cookie_is_secure(tmp_path: Path) -> None:
    certificate, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    settings = ExplorerSettings(
        host="127.0.0.1",
        port=0,
        models={"m": ModelFacts()},
        upstream_url="https://127.0.0.1:9",
        key_file=None,
        tls=context,
    )
    explorer = ExplorerServer(settings).start()
    try:
        assert explorer.login_url.startswith("https://127.0.0.1:")
        login = requests.get(
            explorer.login_url, verify=str(certificate), allow_redirects=False, timeout=10
        )
        assert login.status_code == 303
        cookie = login.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        with pytest.raises(requests.ConnectionError):
            requests.get(explorer.url.replace("https", "http"), timeout=5)
    finally:
        explorer.stop()


def test_serve_refuses_a_plain_http_explorer_beyond_loopback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "smoothexplain.client.cli", "serve", "--host", "0.0.0.0"]
    command += ["--workdir", str(tmp_path / "srv")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "without TLS" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "srv" / "endpoints.json").exists()
