"""The MLflow UI as a researcher first sees a study: a real tiny study, `nctune ui`, and Debian's
headless Chromium driven through its chromedriver (Selenium; Selenium Manager never runs, so
nothing is downloaded). Screenshots go to test-artifacts/ui/ (gitignored), failures included.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from mlflow.tracking import MlflowClient

from study.run.driver import run_study
from tests.study.studies import tiny_study
from tests.study.test_ui import REPO, UIProcess, free_port, start_ui

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = REPO / "test-artifacts" / "ui"
WAIT_S = 120  # first page loads compile MLflow's JS bundles; slow on a loaded 2-core machine
STUDY = "uitiny"
DESCRIPTION = "Does weight decay or label smoothing collapse features on the new classes?"
CHART_AREA = "[data-testid='experiment-view-compare-runs-chart-area']"
RUN_NAME_CELL = '[col-id="attributes.`Run Name`"]'


# ---- fixtures: the study, the UI server, the browser ------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory, local_ray) -> dict[str, Any]:
    """A 3-trial study with its report, as `nctune run` leaves it."""
    root = tmp_path_factory.mktemp("uistudy")
    state = run_study(tiny_study(root, name=STUDY, description=DESCRIPTION), report=True)
    assert state.status == "completed"
    client = MlflowClient(state.tracking_uri)
    trials = client.search_runs([state.experiment_id],
                                f"tags.mlflow.parentRunId = '{state.parent_run_id}'")
    assert len(trials) == 3
    return {"root": root, "state": state,
            "trials": sorted(r.info.run_name for r in trials)}


@pytest.fixture(scope="module")
def ui(study) -> Iterator[UIProcess]:
    """`nctune ui STUDY` on a free port; Ctrl-C at the end must stop it with status 0."""
    proc = start_ui(STUDY, "--root", str(study["root"]), "--port", str(free_port()))
    try:
        proc.wait_for("Ctrl-C")
        yield proc
        assert proc.interrupt() == 0, "\n".join(proc.lines)
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"no headless browser: {', '.join(missing)} missing; install Debian's "
                    "`chromium chromium-driver` (as .ci/run does) to run this test")
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")  # fresh: no saved UI choices
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1440,900"):
        options.add_argument(flag)
    # An explicit driver path makes Selenium skip Selenium Manager; SE_OFFLINE keeps it from
    # reaching the network should a future Selenium call it anyway.
    with mock.patch.dict(os.environ, {"SE_OFFLINE": "true", "SE_AVOID_STATS": "true"}):
        browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield browser
    browser.quit()


# ---- helpers ----------------------------------------------------------------------------------
def shot(driver: Any, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


@contextlib.contextmanager
def step(driver: Any, name: str) -> Iterator[None]:
    """On failure, a screenshot of what the page showed, beside the others."""
    try:
        yield
    except BaseException:
        shot(driver, f"FAILED-{name}")
        raise


def wait(driver: Any, what: str, cond: Callable[[Any], Any], timeout: float = WAIT_S) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(cond)
    except TimeoutException:
        raise AssertionError(f"{what}: not there after {timeout} s on {driver.current_url}; "
                             f"the page read:\n{page_text(driver)[:2000]}") from None


def page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").get_attribute("textContent"))


def run_link(driver: Any, name: str) -> Any:
    """The link that shows a run by its name, or None."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.XPATH, f"//a[normalize-space()={xpath_str(name)}]")
    return found[0] if found else None


def row_of(driver: Any, name: str) -> str:
    """The grid row id (= run id) of the run named `name` in the runs table."""
    from selenium.webdriver.common.by import By

    link = wait(driver, f"run '{name}' in the runs table", lambda d: run_link(d, name))
    return str(link.find_element(By.XPATH, "./ancestor::div[@role='row'][1]")
               .get_attribute("row-id"))


def with_text(driver: Any, text: str) -> list[Any]:
    """Elements whose own text is exactly `text` (tree nodes, headings, chart titles)."""
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.XPATH, f"//*[normalize-space(text())={xpath_str(text)}]"))


def xpath_str(text: str) -> str:
    return f'"{text}"' if "'" in text else f"'{text}'"


def click(driver: Any, element: Any) -> None:
    """A JS click: grid overlays (the row hover toolbar) would intercept a pointer click."""
    driver.execute_script("arguments[0].click();", element)


def close_assistant(driver: Any) -> None:
    """Close the 'MLflow Assistant' side panel a fresh profile opens; it hides half the page."""
    from selenium.webdriver.common.by import By

    if "MLflow Assistant" in page_text(driver):
        for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
            with contextlib.suppress(Exception):
                click(driver, button)


def open_study_runs(driver: Any, ui: UIProcess, study: dict[str, Any]) -> None:
    """The study's runs URL `nctune ui` printed; expand the study's run to list its trials."""
    from selenium.webdriver.common.by import By

    driver.get(ui.url(f"study '{STUDY}' runs"))
    parent = row_of(driver, STUDY)
    close_assistant(driver)
    if not run_link(driver, study["trials"][0]):
        click(driver, driver.find_element(
            By.CSS_SELECTOR, f"div[row-id='{parent}'] {RUN_NAME_CELL} button"))
    for name in study["trials"]:
        wait(driver, f"trial run '{name}' nested under '{STUDY}'", partial(run_link, name=name))


# ---- what a researcher does first -----------------------------------------------------------
def test_experiment_page_lists_every_trial_and_charts_cdnv_target(driver, ui, study):
    from selenium.webdriver.common.by import By

    with step(driver, "runs-table"):
        open_study_runs(driver, ui, study)
        assert "Runs" in driver.title, driver.title  # the training-runs view, not GenAI's
        shot(driver, "1-study-runs")
    with step(driver, "charts"):
        click(driver, driver.find_element(By.CSS_SELECTOR, "input[value='CHART']"))
        search = wait(driver, "the metric chart search box", lambda d: d.find_elements(
            By.CSS_SELECTOR, "input[placeholder='Search metric charts']"))[0]
        search.send_keys("cdnv/target")
        area = wait(driver, "chart area", lambda d: d.find_element(By.CSS_SELECTOR, CHART_AREA))
        legend = [f"{name} (cdnv/target)" for name in study["trials"]]
        wait(driver, "a cdnv/target chart with one line per trial", lambda d: all(
            item in area.get_attribute("textContent") for item in legend) and len(
            area.find_elements(By.CSS_SELECTOR, "svg .js-line")) >= len(legend))
        assert area.find_elements(By.XPATH, ".//*[normalize-space(text())='cdnv/target']")
        shot(driver, "2-study-charts-cdnv-target")


def test_compare_two_trials_shows_params_and_a_cdnv_target_chart(driver, ui, study):
    from selenium.webdriver.common.by import By

    first, second = study["trials"][:2]
    with step(driver, "compare"):
        open_study_runs(driver, ui, study)
        click(driver, driver.find_element(By.CSS_SELECTOR, "input[value='TABLE']"))
        for name in (first, second):
            click(driver, driver.find_element(
                By.CSS_SELECTOR, f"div[row-id='{row_of(driver, name)}'] input.ag-checkbox-input"))
        compare = wait(driver, "the Compare button", lambda d: [
            b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Compare"])
        click(driver, compare[0])
        wait(driver, "the compare page", lambda d: "Comparing 2 Runs" in page_text(d))
        text = page_text(driver)
        # Flat params side by side; the searched ones differ between the two trials.
        for key in ("weight_decay", "label_smoothing", "epochs", "lr"):
            assert key in text, key
        shot(driver, "3-compare-two-trials")
    with step(driver, "compare-cdnv-target"):
        link = wait(driver, "cdnv/target in the compare page's metrics",
                    lambda d: d.find_elements(By.XPATH, "//a[normalize-space()='cdnv/target']"))
        click(driver, link[0])
        wait(driver, "a cdnv/target chart of both trials over epochs", lambda d: len(
            d.find_elements(By.CSS_SELECTOR, "svg .js-line")) >= 2 and all(
            f"{n} (cdnv/target)" in page_text(d) for n in (first, second)))
        # A per-epoch series: the table under the chart gives first and last step.
        text = page_text(driver)
        assert "(step=1)" in text and "(step=2)" in text, text[-800:]
        assert with_text(driver, "cdnv/target"), "no chart titled cdnv/target"
        shot(driver, "4-compare-cdnv-target-chart")


def test_parent_run_has_the_description_and_the_report_as_artifacts(driver, ui, study):
    from selenium.webdriver.common.by import By

    with step(driver, "parent-run"):
        driver.get(ui.url("parent run"))
        wait(driver, "the study's description", lambda d: DESCRIPTION in page_text(d))
        text = page_text(driver)
        assert "Result. Best: t00" in text, "the headline result under the study's question"
        for name in study["trials"]:  # "Child runs" in About this run
            assert name in text, name
        close_assistant(driver)
        shot(driver, "5-parent-run")
    with step(driver, "parent-artifacts"):
        tab = wait(driver, "the Artifacts tab", lambda d: d.find_elements(
            By.XPATH, "//*[@role='tab' or self::a or self::button][normalize-space()='Artifacts']"))
        tab[0].click()  # a pointer click: Radix tabs switch on mousedown, not on a JS click()
        for folder in ("analysis", "figures"):
            node = wait(driver, f"artifact folder '{folder}'", partial(with_text, text=folder))
            click(driver, node[0])
        wait(driver, "report.html among the artifacts", lambda d: "report.html" in page_text(d))
        figure = wait(driver, "a figure", partial(with_text, text="cdnv_over_epochs.png"))
        click(driver, figure[0])
        # The UI fetches the artifact through the server and shows it from a blob: URL.
        wait(driver, "the figure rendered from the artifact store", lambda d: d.execute_script(
            "return [...document.images].some(i => i.src.startsWith('blob:') "
            "&& i.complete && i.naturalWidth > 100)"))
        assert "analysis/figures/cdnv_over_epochs.png" in page_text(driver)
        shot(driver, "6-parent-artifacts-figure")


# ---- optuna-dashboard: the Optuna view of the same study ---------------------------------------
@pytest.fixture(scope="module")
def dashboard(study) -> Iterator[UIProcess]:
    """`nctune dashboard STUDY` on a free port; Ctrl-C at the end must stop it with status 0."""
    proc = UIProcess(subprocess.Popen(
        [sys.executable, "-m", "study.cli", "dashboard", STUDY, "--root", str(study["root"]),
         "--port", str(free_port())], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
    try:
        proc.wait_for("Ctrl-C")
        yield proc
        assert proc.interrupt() == 0, "\n".join(proc.lines)
    finally:
        proc.kill()


def plotted_points(driver: Any, plot_id: str) -> list[int]:
    """Points per trace of a plotly chart on the page ([] while it is not drawn)."""
    return list(driver.execute_script(
        "const p = document.getElementById(arguments[0]);"
        "return p && p.data ? p.data.map(t => (t.x || []).length) : [];", plot_id))


def test_optuna_dashboard_shows_the_history_and_every_trial(driver, dashboard, study):
    metric = study["state"].metric
    with step(driver, "dashboard-history"):
        driver.get(dashboard.url(f"study '{STUDY}'"))
        wait(driver, "the history plot with one point per trial",
             lambda d: max(plotted_points(d, "plot-history"), default=0) == 3)
        text = page_text(driver)
        assert "History" in text and f"{STUDY} (id=" in text
        assert metric in text  # the objective is named after the metric, not "Objective 0"
        assert max(plotted_points(driver, "graph-intermediate-values"), default=0) == 2  # epochs
        shot(driver, "7-optuna-dashboard-history")
    with step(driver, "dashboard-trials"):
        driver.get(dashboard.url(f"study '{STUDY}'") + "/trials")
        wait(driver, "the trial list", lambda d: "3 Trials" in page_text(d))
        text = page_text(driver)
        for number in range(3):
            assert f"Trial {number}Complete" in text
        assert "nctune.trial_id" in text  # the key to the trial's MLflow run
        shot(driver, "8-optuna-dashboard-trials")

