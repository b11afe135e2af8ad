"""Screenshots of the MLflow UI in a real browser (Debian's chromium, driven by playwright), as in
docs/screenshots/: the run list with the newest parent run and its stage and model runs expanded, the
compare view of four model runs, and a registered model version.

    python scripts/ui_screenshots.py http://127.0.0.1:5000 EXPERIMENT_ID OUT_DIR RUN_ID,RUN_ID,... MODEL VERSION

Needs `pip install playwright` (any venv; no browser download: it drives /usr/bin/chromium) and a running
`mlflow ui`. Not part of the test suite.
"""

import json
import sys
import urllib.parse

from playwright.sync_api import sync_playwright

base, exp, out, compare_ids, model, version = sys.argv[1:7]
ids = compare_ids.split(",")
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1700, "height": 1250})
    page.goto(f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning")
    page.wait_for_timeout(5000)
    try:  # close the assistant side panel
        page.get_by_role("button", name="Close").last.click(timeout=2000)
    except Exception as exc:
        print("no assistant panel to close:", exc)
    page.wait_for_timeout(500)
    try:
        page.locator("div[role='gridcell'] button").first.click(timeout=3000)  # the newest parent's +
        page.wait_for_timeout(1500)
        for name in ("distill", "transfer"):  # and its stages that hold model runs
            row = page.locator("div[role='row']", has=page.get_by_role("link", name=name, exact=True)).first
            row.locator("button").first.click(timeout=3000)
            page.wait_for_timeout(1000)
    except Exception as exc:
        print("expanding failed:", exc)
    page.wait_for_timeout(2500)
    page.screenshot(path=f"{out}/mlflow-runs.png")
    q = urllib.parse.urlencode(
        {"runs": json.dumps(ids), "experiments": json.dumps([exp]), "workflowType": "machine_learning"}
    )
    page.goto(f"{base}/#/compare-runs?{q}")
    page.wait_for_timeout(6000)
    page.get_by_text("Visualizations").first.click()  # fold the plots away: the tables show what differs
    page.wait_for_timeout(800)
    page.get_by_text("Show diff only").first.click()
    page.wait_for_timeout(800)
    page.screenshot(path=f"{out}/mlflow-compare.png")
    page.goto(f"{base}/#/models/{model}/versions/{version}?workflowType=machine_learning")
    page.wait_for_timeout(5000)
    page.screenshot(path=f"{out}/mlflow-model-version.png", full_page=True)
    browser.close()
