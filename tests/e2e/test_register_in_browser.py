"""A data scientist registers a version through the web form and finds it on the model page.

The page sends the file in resumable chunks (hashing it in the browser), then registers the
version by the upload's id; the tests make the chunks small so the iris model takes several.
"""

import hashlib
import json
import re

import pytest
from playwright.sync_api import expect

from portal.demo_models import iris_instances
from registry.models import ModelVersion, Upload

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHUNK = 256


@pytest.fixture
def small_chunks(settings):
    # The API answers chunk_size from this setting on each request; live_server runs in-process.
    settings.UPLOAD_CHUNK_BYTES = CHUNK


def record_requests(page) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    page.on("request", lambda request: seen.append((request.method, request.url)))
    return seen


def chunk_puts(seen) -> list[str]:
    return [url for method, url in seen if method == "PUT" and "/api/v1/uploads/" in url]


def fill_form(page, iris_file, *, version: str, sample_input: dict) -> None:
    page.get_by_label("Artifact").set_input_files(str(iris_file))
    page.get_by_label("Version").fill(version)
    page.get_by_label("Flavor").select_option("sklearn")
    page.get_by_label("Sample input").fill(json.dumps(sample_input))


def test_register_a_version_through_the_form(page, sign_in, member, team, iris_file, small_chunks):
    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team, description="Flowers")
    seen = record_requests(page)
    sign_in(page, member.username)
    page.get_by_role("link", name="Models").click()
    page.get_by_role("link", name="iris").click()
    expect(page.get_by_text("No versions yet.")).to_be_visible()
    page.get_by_role("link", name="Register a version").first.click()

    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": iris_instances()})
    page.get_by_label("Metrics").fill('{"accuracy": 0.93}')
    page.get_by_role("button", name="Upload and register").click()

    expect(page.get_by_role("heading", name="iris 1.0.0")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("This is the first version")).to_be_visible()
    page.get_by_role("link", name="iris", exact=True).click()
    expect(page.get_by_role("row", name=re.compile(r"^1\.0\.0 sklearn"))).to_be_visible()
    expect(page.get_by_role("table").filter(has_text="accuracy")).to_contain_text("0.93")
    version = ModelVersion.objects.get()
    assert version.created_by == member
    size = iris_file.stat().st_size
    assert len(chunk_puts(seen)) == -(-size // CHUNK) >= 3  # the file went in chunks, each once
    upload = Upload.objects.get()
    assert (upload.status, upload.version, upload.filename) == (Upload.Status.REGISTERED, version, "iris.joblib")
    assert version.artifact.sha256 == hashlib.sha256(iris_file.read_bytes()).hexdigest()


def test_the_form_shows_why_a_version_is_refused_and_a_fix_reuses_the_upload(
    page, sign_in, member, team, iris_file, small_chunks
):
    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team)
    seen = record_requests(page)
    sign_in(page, member.username)
    page.goto("/models/iris/versions/new")
    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": [{"a": 1}]})
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_role("alert").first).to_contain_text("fails on its sample input", timeout=60_000)
    assert not ModelVersion.objects.exists()
    sent = len(chunk_puts(seen))
    assert sent >= 3
    assert Upload.objects.get().status == Upload.Status.COMPLETE  # kept for a corrected retry

    page.get_by_label("Sample input").fill(json.dumps({"instances": iris_instances()}))
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_role("heading", name="iris 1.0.0")).to_be_visible(timeout=60_000)
    assert len(chunk_puts(seen)) == sent  # the file was not sent again
    upload = Upload.objects.get()
    assert (upload.status, upload.version) == (Upload.Status.REGISTERED, ModelVersion.objects.get())


def test_the_upload_resumes_after_a_network_error(page, sign_in, member, team, iris_file, small_chunks):
    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team)
    seen = record_requests(page)
    failed: list[str] = []

    def drop_the_second_chunk_once(route):
        request = route.request
        second = request.method == "PUT" and request.headers.get("content-range", "").startswith(f"bytes {CHUNK}-")
        if second and not failed:
            failed.append(request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(re.compile(r".*/api/v1/uploads/[^/]+$"), drop_the_second_chunk_once)
    sign_in(page, member.username)
    page.goto("/models/iris/versions/new")
    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": iris_instances()})
    page.get_by_role("button", name="Upload and register").click()

    expect(page.get_by_role("heading", name="iris 1.0.0")).to_be_visible(timeout=60_000)
    assert failed, "the second chunk was never sent"
    assert ("GET", failed[0]) in seen  # asked where the upload stood, then went on from there
    assert Upload.objects.get().status == Upload.Status.REGISTERED
    stored = ModelVersion.objects.get().artifact
    content = iris_file.read_bytes()
    assert (stored.size, stored.sha256) == (len(content), hashlib.sha256(content).hexdigest())


# Keeps what the page says about the upload in sessionStorage, which outlives the page: its
# messages come and go within milliseconds, and the last page is gone once the version shows.
RECORD_UPLOAD_TEXT = """
document.addEventListener("DOMContentLoaded", () => {
  const text = document.getElementById("upload-text");
  if (!text) return;
  new MutationObserver((records) => {
    const said = JSON.parse(sessionStorage.getItem("upload-texts") || "[]");
    for (const record of records) for (const node of record.addedNodes) said.push(node.textContent);
    sessionStorage.setItem("upload-texts", JSON.stringify(said));
  }).observe(text, { childList: true });
});
"""


def test_the_upload_resumes_after_the_page_is_reloaded(page, sign_in, member, team, iris_file, small_chunks):
    from registry import selectors, services

    services.registered_model_create(actor=member, name="iris", team=team)
    content = iris_file.read_bytes()
    chunks = -(-len(content) // CHUNK)
    assert chunks >= 4
    seen = record_requests(page)
    page.add_init_script(RECORD_UPLOAD_TEXT)
    page.on("dialog", lambda dialog: dialog.accept())  # "Leave the page?" while sending: yes

    def fail_after_two_chunks(route):
        request = route.request
        start = re.match(r"bytes (\d+)-", request.headers.get("content-range", ""))
        if request.method == "PUT" and start and int(start.group(1)) >= 2 * CHUNK:
            route.abort("connectionreset")
        else:
            route.continue_()

    uploads = re.compile(r".*/api/v1/uploads/[^/]+$")
    page.route(uploads, fail_after_two_chunks)
    sign_in(page, member.username)
    page.goto("/models/iris/versions/new")
    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": iris_instances()})
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_text(re.compile("Connection lost; trying again"))).to_be_visible()
    assert selectors.upload_parts(upload=Upload.objects.get()).offset == 2 * CHUNK

    # The tab is reloaded while the connection is down (the same as closing it and coming back).
    page.reload()
    page.unroute(uploads)
    puts_before = len(chunk_puts(seen))
    notice = page.get_by_role("status").filter(has_text="was interrupted")
    expect(notice).to_have_text(
        f"An upload of iris.joblib ({2 * CHUNK} B of {len(content)} B) was interrupted. "
        "Choose the same file and submit to resume it."
    )

    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": iris_instances()})
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_role("heading", name="iris 1.0.0")).to_be_visible(timeout=60_000)

    resent = chunk_puts(seen)[puts_before:]
    assert 0 < len(resent) < chunks  # only the chunks the portal did not have yet
    said = page.evaluate("JSON.parse(sessionStorage.getItem('upload-texts') || '[]')")
    assert f"Resuming the upload from {2 * CHUNK} B…" in said
    upload = Upload.objects.get()  # the same upload, resumed: no second one was started
    version = ModelVersion.objects.get()
    assert (upload.status, upload.version) == (Upload.Status.REGISTERED, version)
    assert (version.artifact.size, version.artifact.sha256) == (len(content), hashlib.sha256(content).hexdigest())
    remembered = page.evaluate("Object.keys(localStorage).filter((name) => name.startsWith('portal.register-upload'))")
    assert remembered == []  # registered: nothing left to resume


def test_a_finished_upload_is_reused_after_the_page_is_reloaded(page, sign_in, member, team, iris_file, small_chunks):
    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team)
    seen = record_requests(page)
    sign_in(page, member.username)
    page.goto("/models/iris/versions/new")
    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": [{"a": 1}]})
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_role("alert").first).to_contain_text("fails on its sample input", timeout=60_000)
    assert Upload.objects.get().status == Upload.Status.COMPLETE

    page.reload()
    sent = len(chunk_puts(seen))
    expect(page.get_by_role("status").filter(has_text="no version was registered")).to_have_text(
        f"An upload of iris.joblib ({iris_file.stat().st_size} B) finished, but no version was registered with it. "
        "Choose the same file and submit to register it without sending it again."
    )
    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": iris_instances()})
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_role("heading", name="iris 1.0.0")).to_be_visible(timeout=60_000)
    assert len(chunk_puts(seen)) == sent  # nothing was sent again
    upload = Upload.objects.get()
    assert (upload.status, upload.version) == (Upload.Status.REGISTERED, ModelVersion.objects.get())


def test_an_expired_upload_is_said_to_be_gone_and_sent_again(page, sign_in, member, team, iris_file, small_chunks):
    from datetime import timedelta

    from django.utils import timezone

    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team)
    seen = record_requests(page)
    sign_in(page, member.username)
    page.goto("/models/iris/versions/new")
    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": [{"a": 1}]})
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_role("alert").first).to_contain_text("fails on its sample input", timeout=60_000)
    Upload.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # idle too long

    page.reload()
    sent = len(chunk_puts(seen))
    expect(page.get_by_role("status").filter(has_text="is gone")).to_have_text(
        "An upload of iris.joblib started earlier is gone (uploads left idle for a day are removed). "
        "Choosing it again sends the whole file."
    )
    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": iris_instances()})
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_role("heading", name="iris 1.0.0")).to_be_visible(timeout=60_000)
    assert len(chunk_puts(seen)) - sent == -(-iris_file.stat().st_size // CHUNK)  # every chunk again
    assert Upload.objects.filter(status=Upload.Status.REGISTERED).count() == 1


def test_cancel_an_upload(page, sign_in, member, team, iris_file, small_chunks):
    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team)
    # Every chunk fails, so the page keeps retrying until the person gives up.
    page.route(
        re.compile(r".*/api/v1/uploads/[^/]+$"),
        lambda route: route.abort("connectionreset") if route.request.method == "PUT" else route.continue_(),
    )
    sign_in(page, member.username)
    page.goto("/models/iris/versions/new")
    fill_form(page, iris_file, version="1.0.0", sample_input={"instances": iris_instances()})
    page.get_by_role("button", name="Upload and register").click()
    expect(page.get_by_text(re.compile("Connection lost; trying again"))).to_be_visible()
    expect(page.get_by_role("button", name="Upload and register")).to_be_disabled()
    page.get_by_role("button", name="Cancel upload").click()

    expect(page.get_by_text("Upload cancelled. Nothing was registered.")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel upload")).to_be_hidden()
    expect(page.get_by_role("button", name="Upload and register")).to_be_enabled()
    for _ in range(50):  # the page deletes the upload after it stops sending
        if not Upload.objects.exists():
            break
        page.wait_for_timeout(100)
    assert not Upload.objects.exists()  # the half-sent upload was deleted
    assert not ModelVersion.objects.exists()


def test_the_browser_sha256_agrees_with_hashlib(page, sign_in, member, team):
    from registry import services

    services.registered_model_create(actor=member, name="iris", team=team)
    sign_in(page, member.username)
    page.goto("/models/iris/versions/new")
    lengths = [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 1024 * 1024 + 3]
    # The same bytes built on both sides; each fed whole and in uneven pieces.
    digests = page.evaluate(
        """(lengths) => lengths.map((n) => {
            const data = new Uint8Array(n);
            for (let i = 0; i < n; i++) data[i] = (i * 31 + (i >> 8) * 7) & 255;
            const whole = new Sha256().update(data).hexdigest();
            const pieces = new Sha256();
            const sizes = [1, 2, 3, 60, 64, 7, 100000, 0, 65];
            for (let pos = 0, j = 0; pos < n; j++) {
              const take = Math.min(sizes[j % sizes.length], n - pos);
              pieces.update(data.subarray(pos, pos + take));
              pos += take;
            }
            return [whole, pieces.hexdigest()];
        })""",
        lengths,
    )
    for n, (whole, pieces) in zip(lengths, digests, strict=True):
        expected = hashlib.sha256(bytes((i * 31 + (i >> 8) * 7) & 255 for i in range(n))).hexdigest()
        assert (n, whole, pieces) == (n, expected, expected)
