"""The web console in a real browser: Debian's headless Chromium driven by Playwright.

One journey signs in, drops a dataset, dry-runs it, creates a job on the tiny model, watches
its loss chart gain points while a worker trains it, opens a checkpoint and downloads adapters.
Another feeds the console hostile strings (a file name, a suffix, metadata) and finds no script
ran and no markup was injected. Screenshots of every page, at 1280x800 and 400 px wide, are
kept in test-artifacts/console/ (git-ignored; the path is printed at the end).
"""

from __future__ import annotations

import os
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from ftaas_core.db import get_database
from ftaas_core.events import add_event
from tests.conftest import Backend
from tests.support.data import taught_dataset
from tests.support.jobs import HYPERPARAMETERS, create_job, upload, wait_for_status
from tests.support.services import Process

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
WIDE, NARROW = {"width": 1280, "height": 800}, {"width": 400, "height": 800}
HOSTILE = "<img src=x onerror=alert(1)>"
UNNAMED_CONTROLS = """() => [...document.querySelectorAll("input, select, textarea, button, a[href]")]
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")
        && !el.textContent.trim())
    .map((el) => el.outerHTML.slice(0, 80))"""

pytestmark = pytest.mark.parametrize("backend", ["embedded"], indirect=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `make install` installs Debian's chromium (as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The folder of this run's screenshots, emptied first. In the repository rather than in
    pytest's temporary folders, which other runs on the same machine rotate away."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    yield ARTIFACTS
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nconsole screenshots: {ARTIFACTS}")


class Console:
    """A browser tab on the console, recording what must never happen: a dialog, a script
    error, a CSP or Trusted Types violation, or the key in a URL."""

    def __init__(self, page: object, url: str, folder: Path) -> None:
        self.page, self.url, self.folder = page, url, folder
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)
        page.on("request", lambda r: self.urls.append(r.url))

    def _console(self, message: object) -> None:
        if re.search(r"Content Security Policy|Trusted Type|Refused to", message.text):
            self.errors.append(message.text)

    def sign_in(self, key: str) -> None:
        self.page.goto(f"{self.url}/")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()

    def go(self, hash_route: str) -> None:
        self.page.goto(f"{self.url}/{hash_route}")

    def shot(self, name: str) -> None:
        """Screenshots of the page as it stands, wide and narrow; every control on it must
        have a name a screen reader can say."""
        unnamed = self.page.evaluate(UNNAMED_CONTROLS)
        assert not unnamed, f"controls without a label on {name}: {unnamed}"
        self.page.screenshot(path=self.folder / f"{name}-1280.png", full_page=True)
        self.page.set_viewport_size(NARROW)
        self.page.screenshot(path=self.folder / f"{name}-400.png", full_page=True)
        self.page.set_viewport_size(WIDE)

    def field_error(self, label: str) -> object:
        return self.page.locator(".field", has=self.page.get_by_label(label, exact=True)).locator(
            ".field-error"
        )

    def check_clean(self, key: str) -> None:
        assert not self.dialogs, self.dialogs
        assert not self.errors, self.errors
        assert not [u for u in self.urls if key in u]
        assert not self.page.context.cookies()


@pytest.fixture
def console(browser: object, api_url: str, api_key: str, screenshots: Path) -> Iterator[Console]:
    context = browser.new_context(viewport=WIDE, accept_downloads=True)
    tab = Console(context.new_page(), api_url, screenshots)
    yield tab
    tab.check_clean(api_key)
    context.close()


def test_hostile_strings_stay_text(console: Console, api_key: str, http: httpx2.Client) -> None:
    page = console.page
    console.go("")
    page.get_by_label("API key").fill("ftk_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(console.field_error("API key")).to_contain_text("does not know this key")
    console.shot("sign-in-refused")
    console.sign_in(api_key)

    console.go("#/files")
    name = f"{HOSTILE}.jsonl"
    page.locator("#file-input").set_input_files(
        {"name": name, "mimeType": "application/jsonl", "buffer": taught_dataset()}
    )
    expect(page.get_by_role("status").filter(has_text="Uploaded")).to_contain_text(name)
    expect(page.get_by_role("link", name=name)).to_be_visible()
    console.shot("files-hostile-name")

    console.go("#/new")
    file_id = next(f["id"] for f in http.get("/v1/files").json()["data"] if f["filename"] == name)
    page.get_by_label("Training file").select_option(file_id)
    page.get_by_label("Suffix").fill(HOSTILE)
    page.get_by_role("button", name="Create job").click()
    expect(console.field_error("Suffix")).to_contain_text("suffix")
    expect(page.get_by_label("Suffix")).to_have_attribute("aria-invalid", "true")
    console.shot("new-job-error")

    page.get_by_label("Suffix").fill("safe")
    page.get_by_role("button", name="Add metadata").click()
    page.get_by_label("Metadata key 1").fill("<b>team</b>")
    page.get_by_label("Metadata value 1").fill(HOSTILE)
    page.get_by_role("button", name="Create job").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator(".facts")).to_contain_text(f"<b>team</b> = {HOSTILE}")

    # The moves the job's status allows, with no worker to take it: queued, paused, cancelled.
    pause, resume, cancel = (
        page.get_by_role("button", name=n) for n in ("Pause", "Resume", "Cancel")
    )
    expect(pause).to_be_enabled()
    expect(resume).to_be_disabled()
    pause.click()
    expect(page.locator(".head-status")).to_have_text("paused")
    expect(pause).to_be_disabled()
    resume.click()
    expect(page.locator(".head-status")).to_have_text("queued")
    console.shot("job-queued")
    cancel.click()
    page.get_by_role("button", name="Confirm cancel").click()
    expect(page.locator(".head-status")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()

    for route in ("#/files", "#/jobs"):
        console.go(route)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.querySelectorAll('img, b, script:not([src])').length") == 0

    # Deleting asks twice, without a dialog.
    console.go("#/files")
    delete = page.get_by_role("button", name=f"Delete {name}")
    delete.click()
    delete.click()
    expect(page.get_by_role("status").filter(has_text="Deleted")).to_contain_text(name)
    expect(page.get_by_role("link", name=name)).to_have_count(0)

    # A key refused mid-session (revoked, say) leads back to the sign-in, saying why.
    page.evaluate("sessionStorage.setItem('ftaas.apiKey', 'ftk_revoked')")
    console.go("#/jobs")
    expect(page.get_by_role("alert")).to_contain_text("refused the key")
    assert page.evaluate("sessionStorage.length") == 0


def test_reward_curves_and_event_messages_come_from_the_events(
    console: Console, api_key: str, http: httpx2.Client
) -> None:
    """DPO's reward metrics get charts of their own once a job reports them; an event's
    message is text, whatever it holds."""
    job_id = create_job(http, training_file=upload(http, taught_dataset()))["id"]
    with get_database().session() as session:
        for step in range(1, 6):
            data = {
                "step": step,
                "total_steps": 10,
                "train_loss": 1 / step,
                "rewards/margins": 0.2 * step,
                "rewards/accuracies": 0.5 + 0.05 * step,
            }
            add_event(session, job_id, f"Step {step}/10", type="metrics", data=data)
        add_event(session, job_id, HOSTILE, level="warn")
    console.sign_in(api_key)
    console.go(f"#/jobs/{job_id}")
    page = console.page
    for chart, points in (("loss", "5"), ("rewards-margins", "5"), ("rewards-accuracies", "5")):
        expect(page.locator(f"[data-chart={chart}]")).to_have_attribute("data-points", points)
    expect(page.locator(".events .level-warn")).to_contain_text(HOSTILE)
    expect(page.locator(".facts")).to_contain_text("5/10")
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    console.shot("job-rewards")


@pytest.fixture
def worker(backend: Backend) -> Iterator[Process]:
    process = backend.start("worker")  # booting while the test drives the console
    yield process
    process.stop()


def test_a_job_from_upload_to_adapter(
    console: Console, api_key: str, http: httpx2.Client, worker: Process, tmp_path: Path
) -> None:
    page = console.page
    console.sign_in(api_key)
    console.shot("jobs")

    # Upload: the training file dropped on the zone, the validation file chosen.
    console.go("#/files")
    dropped = page.evaluate_handle(
        """([name, text]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], name, {type: "application/jsonl"}));
            return transfer;
        }""",
        ["train.jsonl", taught_dataset().decode()],
    )
    page.dispatch_event("[data-drop=files]", "drop", {"dataTransfer": dropped})
    expect(page.get_by_role("status").filter(has_text="Uploaded")).to_contain_text("train.jsonl")
    page.locator("#file-input").set_input_files(
        {"name": "valid.jsonl", "mimeType": "application/jsonl", "buffer": taught_dataset(1)}
    )
    expect(page.get_by_role("status").filter(has_text="Uploaded")).to_contain_text("valid.jsonl")
    page.locator("#file-input").set_input_files(
        {"name": "bad.jsonl", "mimeType": "application/jsonl", "buffer": b"{oops\n"}
    )
    expect(page.get_by_role("status").filter(has_text="not accepted")).to_contain_text("line 1")
    row = page.locator("tr", has=page.get_by_role("link", name="train.jsonl")).first
    expect(row.locator("[data-label=Examples]")).to_have_text("12")
    console.shot("files")

    # The dry run of the training file for the tiny model.
    row.get_by_role("link", name="train.jsonl").click()
    page.get_by_label("Model").select_option("tiny")
    page.get_by_role("button", name="Run the dry run").click()
    expect(page.get_by_role("heading", name="Report for tiny")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("heading", name="Tokens per example")).to_be_visible()
    expect(page.locator("pre.preview mark").first).to_be_visible()
    console.shot("file-report")

    # A job, with the settings under which the tiny model learns in seconds.
    page.get_by_role("link", name="Train on this file").click()
    page.get_by_label("Model").select_option("tiny")
    files = http.get("/v1/files").json()["data"]
    page.get_by_label("Validation file").select_option(
        next(f["id"] for f in files if f["filename"] == "valid.jsonl")
    )
    # Long enough (90 steps) that even a fast machine polls the chart several times mid-run.
    for name, value in (HYPERPARAMETERS | {"n_epochs": 30}).items():
        page.get_by_label(name, exact=True).fill(str(value))
    console.shot("new-job")
    page.get_by_role("button", name="Create job").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    job_id = page.url.rsplit("/", 1)[-1]

    # The chart gains points while the job trains.
    chart = page.locator("[data-chart=loss]")
    counts: list[int] = []
    deadline = time.monotonic() + 240
    while page.locator(".head-status").inner_text() != "succeeded":
        assert time.monotonic() < deadline, worker.output()[-3000:]
        assert page.locator(".head-status").inner_text() not in ("failed", "cancelled"), http.get(
            f"/v1/fine_tuning/jobs/{job_id}"
        ).json()["error"]
        points = int(chart.get_attribute("data-points"))
        if points and (not counts or points != counts[-1]):
            counts.append(points)
            if len(counts) == 2:
                console.shot("job-running")
        time.sleep(0.2)
    assert len(counts) >= 2, f"the chart never updated while training: {counts}"
    job = wait_for_status(http, job_id, {"succeeded"}, timeout=5)
    expect(chart.locator(".key-valid circle").first).to_be_attached()

    # Results: files, and the samples and retention figure when the run produced them.
    expect(page.get_by_role("heading", name="Result files")).to_be_visible()
    names = [http.get(f"/v1/files/{f}").json()["filename"] for f in job["result_files"]]
    if any(n.endswith("samples.jsonl") for n in names):
        expect(page.get_by_role("heading", name="Samples: base vs fine-tuned")).to_be_visible()
    manifest = http.get(f"/v1/fine_tuning/jobs/{job_id}/manifest").json()
    if "retention" in manifest:
        expect(page.get_by_role("heading", name="Retention")).to_be_visible()
    console.shot("job-succeeded")

    # A checkpoint opened, and its adapter and the final one downloaded as valid tar.gz files.
    checkpoint = page.locator("details.checkpoint").first
    checkpoint.locator("summary").click()
    expect(checkpoint.get_by_text("Model name")).to_be_visible()
    for button in (
        checkpoint.get_by_role("button", name="Download adapter"),
        page.locator(".actions").get_by_role("button", name="Download adapter"),
    ):
        with page.expect_download() as download:
            button.click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        with tarfile.open(saved, "r:gz") as tar:
            assert "adapter_config.json" in tar.getnames()
    console.shot("job-checkpoint")

    console.go("#/jobs?status=succeeded")
    expect(page.get_by_role("link", name=job_id)).to_be_visible()
    expect(page.locator("tr", has=page.get_by_role("link", name=job_id))).to_contain_text("done")
    console.go("#/jobs?status=running")
    expect(page.get_by_text("None of the")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
