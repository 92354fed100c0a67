"""The MLflow UI as a person sees it: a real headless Chromium on `orchestrate ui`.

The session's shared real run of a tiny hypothesis (conftest.py: Ray Tune, sqlite MLflow;
arms small, large and flaky) is the store, `orchestrate ui` serves it on 127.0.0.1, and
Chromium (driven by selenium + Debian's chromedriver) opens the printed URL: the runs
tree must list every trial under its arm with hyperparameter and
metric columns, and the compare view of two trials must put their parameters side by
side. Screenshots go to $ORCHESTRATE_TEST_ARTIFACTS/ui (else the test's tmp folder).

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; without
them the tests skip and say which is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=2200,1200",
]
WAIT_S = 120  # page loads on a busy 2-core machine
PLUS_ICON = "M7.25 7.25V4.5"  # the "+" (collapsed) icon of a parent run in the runs table


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium, fresh profile, loopback only; skips with the exact reason."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip(
            "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver); "
            f"found chromium={chromium}, chromedriver={driver_path}"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    try:
        # an explicit driver path: selenium never runs Selenium Manager (no download attempt)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium could not be started: {exc.msg}")
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def store(browser, shared_run):
    """The session's shared real run (conftest.py); `orchestrate ui` writes nothing to it.
    Asks for `browser` first: without Chromium the tests skip before any run starts."""
    assert shared_run.exit_code == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(shared_run.uri)
    experiment = client.get_experiment_by_name("tiny-test")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return shared_run.folder, shared_run.uri, runs


@pytest.fixture(scope="module")
def ui_url(store):
    """`orchestrate ui` as a subprocess on a free port; yields the URL it prints."""
    from orchestrator.cli.ui import free_port

    folder, uri, _ = store
    command = _ui_command() + ["--port", str(free_port()), "--tracking-uri", uri, "--hypothesis", "tiny-test"]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found = threading.Event()

    def drain() -> None:  # keep reading: the server shares this pipe and must never block on it
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "/#/experiments/" in line:
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not found.wait(240):
            pytest.fail("orchestrate ui printed no URL:\n" + "".join(lines[-40:]))
        url = re.search(r"http://127\.0\.0\.1:\d+/#/experiments/\S+", "".join(lines)).group(0)
        print(f"orchestrate ui answered in {time.monotonic() - started:.0f} s: {url}")
        yield url
    finally:
        # SIGTERM, not SIGINT: a child of a shell that ignores SIGINT (background jobs, some CI)
        # ignores it too; the command treats both alike and stops its server's process group
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, "".join(lines[-40:])


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    root = os.environ.get("ORCHESTRATE_TEST_ARTIFACTS")
    folder = Path(root) / "ui" if root else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


def _ui_command() -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "ui"]


# -- page helpers -----------------------------------------------------------------------
def _wait(driver, condition, what: str, timeout: float = WAIT_S):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, 0.5).until(condition)
    except TimeoutException:
        pytest.fail(
            f"timed out after {timeout:g} s waiting for {what}; page text:\n"
            f"{driver.find_element('tag name', 'body').text[:2000]}"
        )


def _open_runs_tree(driver, url: str) -> None:
    """Open the printed URL and expand every parent run (hypothesis, then arms)."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(
        driver, lambda d: d.find_elements(By.PARTIAL_LINK_TEXT, "tiny-test ["), "the hypothesis run in the runs table"
    )
    expander = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'
    for _ in range(10):
        collapsed = [
            b
            for b in driver.find_elements(By.CSS_SELECTOR, expander)
            if PLUS_ICON in (b.get_attribute("innerHTML") or "")
        ]
        if not collapsed:
            break
        before = len(driver.find_elements(By.CSS_SELECTOR, 'div[role="row"][row-index]'))
        collapsed[0].click()
        _wait(
            driver,
            lambda d, before=before: len(d.find_elements(By.CSS_SELECTOR, 'div[role="row"][row-index]')) > before,
            "child runs after expanding a parent",
            60,
        )


def _show_columns(driver, names: list[str]) -> None:
    """Tick columns in the "Columns" menu (searching each by its exact name)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    (button,) = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Columns"]
    button.click()
    box = _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, 'input[placeholder="Search columns"]'),
        "the column search box",
    )[0]
    for name in names:
        box.send_keys(Keys.CONTROL + "a", Keys.DELETE)
        box.send_keys(name)
        xpath = (
            '//div[@data-testid="column-selector-tree"]//div[contains(@class,"tree-treenode")]'
            f'[.//span[contains(@class,"tree-title") and normalize-space(.)="{name}"]]'
            '//span[contains(@class,"tree-checkbox")]'
        )
        _wait(
            driver, lambda d, xpath=xpath: d.find_elements(By.XPATH, xpath), f"column {name!r} in the column menu", 30
        )[0].click()
    box.send_keys(Keys.ESCAPE)

    def headers(d) -> set[str]:
        return {
            (h.get_attribute("textContent") or "").strip() for h in d.find_elements(By.CSS_SELECTOR, ".ag-header-cell")
        }

    _wait(driver, lambda d: set(names) <= headers(d), f"columns {names} in the table", 30)


def _close_assistant(driver) -> None:
    """MLflow 3.17 may open its "MLflow Assistant" side panel over a third of the page."""
    from selenium.webdriver.common.by import By

    xpath = (
        '//*[normalize-space(text())="MLflow Assistant"]'
        '/ancestor::div[.//button[@aria-label="Close"]][1]//button[@aria-label="Close"]'
    )
    for button in driver.find_elements(By.XPATH, xpath):
        if button.is_displayed():
            button.click()


def _widen_run_names(driver, pixels: int = 260) -> None:
    """Drag the Run Name column wider so the screenshot shows whole trial names."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    handles = driver.find_elements(
        By.CSS_SELECTOR, '.ag-header-cell[col-id="attributes.`Run Name`"] .ag-header-cell-resize'
    )
    if handles:
        ActionChains(driver).click_and_hold(handles[0]).move_by_offset(pixels, 0).release().perform()


def _table_rows(driver) -> list[dict[str, str]]:
    """Rows of the runs table in display order: {col-id: text, "name": run name}.
    ag-grid splits a row between its pinned and scrolling parts; merge by row-index."""
    from selenium.webdriver.common.by import By

    rows: dict[int, dict[str, str]] = {}
    for part in driver.find_elements(By.CSS_SELECTOR, 'div[role="row"][row-index]'):
        row = rows.setdefault(int(part.get_attribute("row-index")), {})
        for cell in part.find_elements(By.CSS_SELECTOR, '[role="gridcell"]'):
            col = cell.get_attribute("col-id")
            row[col] = cell.text.strip()
            if col == "attributes.`Run Name`":
                row["name"] = cell.find_element(By.TAG_NAME, "a").text.strip()
    return [rows[i] for i in sorted(rows)]


def _by_level(runs, level):
    return [r for r in runs if r.data.tags.get("orchestrate.level") == level]


# -- tests ------------------------------------------------------------------------------
def test_trials_are_listed_under_their_arms_with_param_and_metric_columns(browser, store, ui_url, shots):
    _, _, runs = store
    assert "/runs?workflowType=machine_learning" in ui_url
    _open_runs_tree(browser, ui_url)
    _close_assistant(browser)
    _show_columns(browser, ["val_accuracy", "flops_ratio", "r", "lr"])
    _close_assistant(browser)
    _widen_run_names(browser)
    time.sleep(0.5)
    browser.save_screenshot(str(shots / "runs_tree.png"))

    rows = _table_rows(browser)
    names = [row.get("name", "") for row in rows]
    assert len(rows) == len(runs), names  # every run of the experiment is in the tree
    arm_rows = {r.data.tags["orchestrate.arm"]: r.info.run_name for r in _by_level(runs, "arm")}
    assert sorted(arm_rows) == ["flaky", "large", "small"]
    arm_positions = sorted((names.index(name), arm) for arm, name in arm_rows.items())
    for trial in _by_level(runs, "trial"):
        arm = trial.data.tags["orchestrate.arm"]
        position = names.index(trial.info.run_name)
        under = [a for p, a in arm_positions if p < position][-1]  # nearest arm row above it
        assert under == arm, (trial.info.run_name, names)
        row = rows[position]
        assert row["params.`r`"] == trial.data.params["r"] == {"small": "2", "large": "8", "flaky": "2"}[arm]
        if arm == "flaky":  # the `failing` method's space searches `mode` only: no lr, an empty cell
            assert "lr" not in trial.data.params and not re.search(r"\d", row["params.`lr`"]), row
        else:
            assert float(row["params.`lr`"]) == pytest.approx(float(trial.data.params["lr"]))
        for metric in ("val_accuracy", "flops_ratio"):
            cell = row[f"metrics.`{metric}`"]
            if metric in trial.data.metrics:
                assert float(cell) == pytest.approx(trial.data.metrics[metric], abs=1e-3), (
                    trial.info.run_name,
                    metric,
                )
            else:  # only the flaky arm's failed trials may lack it; their cell shows no number
                assert arm == "flaky" and trial.info.status == "FAILED", (trial.info.run_name, metric)
                assert not re.search(r"\d", cell), (trial.info.run_name, metric, cell)
    # the column groups say which columns are hyperparameters and which are metrics
    from selenium.webdriver.common.by import By

    groups = {g.text for g in browser.find_elements(By.CSS_SELECTOR, ".ag-header-group-cell")}
    assert {"Metrics", "Parameters"} <= groups


def test_compare_view_puts_two_trials_parameters_side_by_side(browser, store, ui_url, shots):
    from selenium.webdriver.common.by import By

    _, _, runs = store
    trials = _by_level(runs, "trial")
    picked = [next(t for t in trials if t.data.tags["orchestrate.arm"] == arm) for arm in ("small", "large")]
    _open_runs_tree(browser, ui_url)
    names = [row.get("name", "") for row in _table_rows(browser)]
    for trial in picked:
        index = names.index(trial.info.run_name)
        box = browser.find_elements(By.CSS_SELECTOR, f'div[role="row"][row-index="{index}"] input[type="checkbox"]')[0]
        browser.execute_script("arguments[0].click()", box)
    compare = _wait(
        browser,
        lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Compare"],
        "the Compare button",
    )
    compare[0].click()
    _wait(
        browser,
        lambda d: (
            "compare-runs" in d.current_url and d.find_elements(By.CSS_SELECTOR, "table.mlflow-compare-run-table")
        ),
        "the compare view",
    )

    def section_rows(title: str) -> dict[str, list[str]]:
        xpath = (
            '//div[contains(@class,"collapse-item")]'
            f'[.//div[contains(@class,"collapse-header") and normalize-space(.)="{title}"]]//table//tr'
        )
        out = {}
        for tr in browser.find_elements(By.XPATH, xpath):
            cells = [c.text.strip() for c in tr.find_elements(By.XPATH, "./th|./td")]  # label, then one per run
            if len(cells) > 1:
                out[cells[0].rstrip(":")] = cells[1:]
        return out

    details = _wait(browser, lambda d: section_rows("Run details"), "the run details table")
    params = _wait(browser, lambda d: section_rows("Parameters"), "the parameters table")
    # run names (Run details) and parameters in one picture
    header = browser.find_elements(
        By.XPATH, '//div[contains(@class,"collapse-header") and normalize-space(.)="Run details"]'
    )[0]
    _close_assistant(browser)
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", header)
    time.sleep(0.5)
    browser.save_screenshot(str(shots / "compare_params.png"))

    order = details["Run ID"]
    assert sorted(order) == sorted(t.info.run_id for t in picked), (details, [t.info.run_name for t in picked])
    by_id = {t.info.run_id: t for t in picked}
    columns = [by_id[run_id] for run_id in order]  # the page's column order
    assert params["r"] == [t.data.params["r"] for t in columns] and sorted(params["r"]) == ["2", "8"]
    for name in ("lr", "lora_alpha", "lora_dropout"):
        assert params[name] == [t.data.params[name] for t in columns], name
    assert details["Run Name"] == [t.info.run_name for t in columns]
