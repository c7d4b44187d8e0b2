"""The web page in a real browser: Playwright driving Debian's Chromium against a real server.

One server (uvicorn on 127.0.0.1, real worker subprocesses) and one browser serve the module.
Paths: sign in through a deep link, upload an h5ad with the progress bar, see a log-normalised
upload refused with the validator's message, launch an embed job from the form (cost estimate
shown and updated), watch it finish live (server-sent events), see the UMAP, download the h5ad;
a viewer sees no controls and is refused writes; another project's user sees none of it.
Every page is screenshotted at 1280 and 390 px into artifacts/screenshots/ (git ignores it)
and scanned with axe-core (the copy inside axe-playwright-python; nothing from the network):
no serious or critical violation is allowed.

Skips with the reason when Playwright or Chromium is absent (`.ci/services.sh` installs
Chromium; `pip install -e '.[web]'` installs Playwright; `playwright install` is never run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service_helpers import wait_for, write_cells
from web_helpers import make_service, tiny_model

pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[web]')"
)
axe_mod = pytest.importorskip(
    "axe_playwright_python.sync_playwright",
    reason="axe-playwright-python is not installed (pip install -e '.[web]')",
)
CHROMIUM = os.environ.get("LIFELM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/services.sh does) or set "
        "LIFELM_CHROMIUM",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
WIDTHS = (1280, 390)
BAD_IMPACTS = ("serious", "critical")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Any:
    import uvicorn

    from lifelm.service.app import register_model_folder

    tmp = tmp_path_factory.mktemp("web_browser")
    # UMAP's numba functions compile once per machine (then NUMBA_CACHE_DIR holds them): start
    # that now, beside the model training and the uploads, not when the page first asks
    # (in a process of its own: concurrent first imports in threads of one process can fail)
    warm = subprocess.Popen([sys.executable, "-c", WARM_UMAP], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    app, settings, tokens = make_service(tmp, cpu_slots=2, tick=0.2)
    model = tiny_model(tmp)
    register_model_folder(settings, "lab_a", "tiny", model, licence="CC0", intended_use="tests")
    register_model_folder(settings, "lab_a", "tiny", model, licence="CC0", intended_use="tests")
    port = _port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, timeout=60, every=0.1)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "tokens": tokens, "tmp": tmp, "app": app,
               "settings": settings}  # fmt: skip
    finally:
        srv.should_exit = True
        thread.join(30)
        try:
            warm.wait(timeout=120)
        except subprocess.TimeoutExpired:
            warm.kill()
            warm.wait()


WARM_UMAP = """
import anndata as ad, numpy as np, scanpy as sc
a = ad.AnnData(obs={"i": np.arange(40).astype(str)})
a.obsm["rep"] = np.random.default_rng(0).normal(size=(40, 8)).astype("float32")
sc.pp.neighbors(a, use_rep="rep", n_neighbors=5, random_state=0)
sc.tl.umap(a, random_state=0)
"""


@pytest.fixture(scope="module")
def browser(server) -> Any:
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "timings.txt").unlink(missing_ok=True)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


AXE = None
T0 = [time.monotonic()]


def mark(what: str) -> None:
    """Phase timings, written beside the screenshots (how long each part of the path took)."""
    now = time.monotonic()
    with open(SHOTS / "timings.txt", "a") as fh:
        fh.write(f"{what}\t{now - T0[0]:.1f} s\n")
    T0[0] = now


def look(page, name: str) -> None:
    """Screenshot the page at both widths and assert axe finds nothing serious."""
    global AXE
    if AXE is None:
        AXE = axe_mod.Axe()
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
        # nothing may stick out sideways on a phone: the page scrolls vertically only
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} at {width} px is {overflow} px wider than the window"
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})
    result = AXE.run(page)
    bad = [v for v in result.response["violations"] if v.get("impact") in BAD_IMPACTS]
    assert not bad, f"{name}: {result.generate_report()}"


def sign_in(browser, server, who: str, deep_link: str) -> Any:
    ctx = browser.new_context(accept_downloads=True)
    page = ctx.new_page()
    page.goto(server["url"] + deep_link)
    assert "/web/signin" in page.url  # not signed in: the sign-in page, remembering the link
    page.fill("#token", server["tokens"][who])
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url == server["url"] + deep_link, "the deep link survives sign-in"
    return page


def _annotate_and_mutations(server, tmp: Path) -> tuple[Any, int, int]:
    from lifelm.client import Client
    from lifelm.tasks.genomes.qc import Reference

    c = Client(server["url"], server["tokens"]["alice"], timeout=60)
    ref = Reference.sarscov2().sequence
    g1 = ref[:240] + "T" + ref[241:23402] + "G" + ref[23403:]  # C241T, A23403G
    (tmp / "sc2.fa").write_text(f">g1\n{g1}\n>g2\n{ref}\n")
    c.upload("lab_a", "sc2.fa", tmp / "sc2.fa", source="Wuhan-Hu-1 with two substitutions")
    mut = c.submit("lab_a", {"task": "genomes.mutations", "dataset": "sc2.fa",
                             "resources": {"max_hours": 0.25}})  # fmt: skip
    ann = c.submit("lab_a", {"task": "cells.annotate", "dataset": "pbmc3k.h5ad", "model": "tiny:1",
                             "reference": "pbmc3k.h5ad", "mode": "knn",
                             "resources": {"max_hours": 0.25}})  # fmt: skip
    return c, ann["id"], mut["id"]


def wait_for_job(page, timeout_s: float = 240) -> None:
    """Wait, without reloading, until the job page shows the job finished; it must succeed."""
    page.wait_for_function(
        "() => ['succeeded', 'failed', 'cancelled'].includes("
        "(document.getElementById('job-status') || {}).textContent)",
        timeout=timeout_s * 1000,
    )
    page.wait_for_load_state()  # the page reloads itself once the job ended
    status = page.inner_text("#job-status")
    assert status == "succeeded", page.inner_text("#job-log")[-3000:]
    # the results link is rendered by the server: it is there because the script followed
    # the job over server-sent events and reloaded the page when it ended
    page.wait_for_selector("#results-link", timeout=30_000)


def test_sign_in_upload_launch_watch_umap_download(browser, server, tmp_path) -> None:
    url = server["url"]
    mark("setup (server, tiny model, browser)")
    ctx = browser.new_context(accept_downloads=True)
    page = ctx.new_page()
    page.goto(url + "/web/projects/lab_a")
    look(page, "signin")
    page.fill("#token", "llm_not-a-token")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("[role=alert]")
    page.fill("#token", server["tokens"]["alice"])
    page.keyboard.press("Enter")  # the form works from the keyboard
    page.wait_for_url(url + "/web/projects/lab_a")
    look(page, "dashboard-empty")

    # upload: progress bar to 100 %, the card in the dashboard
    page.click("text=Upload a dataset")
    look(page, "upload")
    cells = write_cells(tmp_path / "pbmc3k.h5ad", n_cells=150)
    page.set_input_files("#file", str(cells))
    assert page.input_value("#name") == "pbmc3k.h5ad"
    page.fill("#source", "synthetic, made by the test")
    page.click("text=Upload and check")
    page.wait_for_selector("#upload-status:has-text('stored and checked')", timeout=60_000)
    assert page.eval_on_selector("#progress", "e => e.value") == 100
    look(page, "upload-accepted")

    # a log-normalised matrix: refused with the validator's own message
    bad = write_cells(tmp_path / "lognorm.h5ad", log=True)
    page.set_input_files("#file", str(bad))
    page.fill("#name", "lognorm.h5ad")
    page.click("text=Upload and check")
    page.wait_for_selector("#upload-error:not([hidden])", timeout=60_000)
    import anndata as ad

    from lifelm.data.cells.counts import NotCountsError, find_counts

    with pytest.raises(NotCountsError) as expected:
        find_counts(ad.read_h5ad(bad))
    assert page.inner_text("#upload-error") == str(expected.value)
    look(page, "upload-refused")

    mark("sign in, two uploads")
    page.goto(url + "/web/projects/lab_a")
    assert "pbmc3k.h5ad" in page.inner_text("main")
    assert "lognorm.h5ad" not in page.inner_text("main")

    # launch an embed job from the form generated from the spec
    page.click("text=Launch a job")
    look(page, "launch-index")
    page.click("text=cells.embed")
    assert page.input_value("#f-batch-size") == "64"  # the spec's default
    page.select_option("#f-dataset", "pbmc3k.h5ad")
    page.select_option("#f-model", "tiny:1")
    assert page.inner_text("#cost-cpu") == "1"
    page.fill("#f-resources-cpus", "3")
    page.fill("#f-resources-max-hours", "2")
    assert page.inner_text("#cost-cpu") == "6"
    assert "does not fit" in page.inner_text("#cost-verdict")  # 6 CPU h > the 5 h budget
    look(page, "launch-form")
    page.fill("#f-resources-cpus", "1")
    page.fill("#f-resources-max-hours", "0.5")
    assert "It fits" in page.inner_text("#cost-verdict")
    page.click("text=Submit job")
    page.wait_for_url("**/web/projects/lab_a/jobs/*")
    job_url = page.url
    job_id = int(job_url.rsplit("/", 1)[1])
    look(page, "job-running")
    mark("launch form, submit")
    # meanwhile, through the API: an annotation and a genome mutation call, for their pages
    others = _annotate_and_mutations(server, tmp_path)
    # nobody reloads: the page follows the job over server-sent events and shows the
    # results link (rendered by the server) once it succeeded
    wait_for_job(page)
    assert "lifelm cells embed" in page.inner_text("#job-log")
    mark("embed job ran (watched live)")
    look(page, "job-succeeded")
    page.reload()  # a deep link to a finished job survives a reload
    assert page.inner_text("#job-status") == "succeeded"

    # results: the UMAP, coloured by an .obs column, cached in the job folder
    page.click("#results-link")
    page.wait_for_function("() => document.getElementById('umap').complete", timeout=120_000)
    assert page.eval_on_selector("#umap", "i => i.naturalWidth") > 100
    page.select_option("#color", "cell_type")
    page.click("text=Show")
    page.wait_for_url("**/results?color=cell_type")
    page.wait_for_function("() => document.getElementById('umap').complete", timeout=120_000)
    assert page.eval_on_selector("#umap", "i => i.naturalWidth") > 100
    folder = Path(server["settings"].data_dir) / "projects" / "1" / "jobs" / str(job_id) / "web"
    assert (folder / "umap_X_lifelm__cell_type.svg").is_file()
    svg = (folder / "umap_X_lifelm__cell_type.svg").read_text()
    assert "type_0" in svg  # the legend names the categories
    mark("UMAP (computed, then coloured)")
    look(page, "results-embed")

    with page.expect_download() as dl:
        page.click("text=Download embedded.h5ad")
    got = tmp_path / "downloaded.h5ad"
    dl.value.save_as(got)
    adata = ad.read_h5ad(got)
    assert adata.n_obs == 150
    import numpy as np

    emb = adata.obsm["X_lifelm"]
    assert emb.shape[0] == 150
    assert np.isfinite(emb).all()

    # the model registry, a card, the comparison
    page.goto(url + "/web/projects/lab_a/models")
    look(page, "models")
    page.click("text=tiny:1")
    assert "Model card: tiny:1" in page.inner_text("h1")
    look(page, "model-card")
    page.goto(url + "/web/projects/lab_a/models/compare?a=tiny%3A1&b=tiny%3A2")
    assert page.locator("table.compare tbody tr").count() > 5
    look(page, "models-compare")
    page.goto(url + "/web/projects/lab_a/")  # a trailing slash works too
    assert f"#{job_id}" in page.inner_text("main")
    look(page, "dashboard")
    mark("download, models, dashboard")

    # the annotation: the model next to its baselines, the confusion matrix
    client, ann_id, mut_id = others
    for jid in (ann_id, mut_id):
        done = client.wait("lab_a", jid, timeout=300)
        assert done["status"] == "succeeded", client.logs("lab_a", jid)[-3000:]
    page.goto(f"{url}/web/projects/lab_a/jobs/{ann_id}/results")
    table = page.inner_text(
        "table[aria-label='Model and baselines'], [aria-label='Model and baselines'] table"
    )
    for method in ("majority class (baseline)", "PCA + logistic regression (baseline)",
                   "LifeLM model"):  # fmt: skip
        assert method in table
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
    assert page.eval_on_selector("img[src$='confusion.svg']", "i => i.naturalWidth") > 100
    look(page, "results-annotate")
    # the genome run: its mutation table, with the substitutions the test put in
    page.goto(f"{url}/web/projects/lab_a/jobs/{mut_id}/results")
    text = page.inner_text("main")
    assert "mutations.tsv" in text
    assert "A23403G" in text
    assert "C241T" in text
    look(page, "results-mutations")
    mark("annotation and mutation results")
    ctx.close()


def test_a_viewer_sees_no_controls_and_is_refused(browser, server) -> None:
    page = sign_in(browser, server, "vera", "/web/projects/lab_a")
    main = page.inner_text("main")
    assert "you can read everything here" in main
    assert page.locator("a[href$='/upload'], a[href$='/launch']").count() == 0
    look(page, "dashboard-viewer")
    jobs = page.locator("main a[href*='/jobs/']")
    if jobs.count():
        jobs.first.click()
        assert page.locator("button:has-text('Cancel'), button:has-text('Retry')").count() == 0
    page.goto(server["url"] + "/web/projects/lab_a/launch/cells.embed")
    assert "Not allowed" in page.inner_text("h1")
    look(page, "error-403")
    # even with a valid session and CSRF token the server refuses the write
    csrf = page.get_attribute("form.signout input[name=csrf]", "value")
    r = page.request.post(server["url"] + "/web/projects/lab_a/launch/genomes.qc",
                          form={"csrf": csrf, "dataset": "pbmc3k.h5ad"})  # fmt: skip
    assert r.status == 403
    r = page.request.post(server["url"] + "/web/projects/lab_a/upload?name=v.fa",
                          data=b">a\nACGT\n", headers={"X-CSRF-Token": csrf})  # fmt: skip
    assert r.status == 403
    page.context.close()


def test_another_projects_user_sees_nothing_of_it(browser, server) -> None:
    page = sign_in(browser, server, "bob", "/web/projects")
    assert "lab_b" in page.inner_text("main")
    assert "lab_a" not in page.inner_text("main")
    look(page, "projects")
    for path in ("/web/projects/lab_a", "/web/projects/lab_a/jobs/1",
                 "/web/projects/lab_a/jobs/1/results", "/web/projects/lab_a/models"):  # fmt: skip
        resp = page.goto(server["url"] + path)
        assert resp is not None
        assert resp.status == 404
        text = page.inner_text("main")
        assert "no project 'lab_a'" in text
        assert "pbmc3k" not in text
        assert "tiny" not in text
    resp = page.goto(server["url"] + "/web/projects/no_such_lab")
    assert resp is not None
    assert resp.status == 404
    look(page, "error-404")
    # sign-out ends the session: the same cookie no longer opens anything
    page.goto(server["url"] + "/web/projects")
    page.click("text=Sign out")
    page.wait_for_url("**/web/signin")
    page.goto(server["url"] + "/web/projects/lab_b")
    assert "/web/signin" in page.url
    page.context.close()


@pytest.mark.data
def test_real_pbmc3k_upload_pretrain_embed_umap(browser, server) -> None:
    """The path with the real pbmc3k counts (2,638 cells × 13,714 genes): accepted with its
    card; a few pretraining steps on it from the form (the loss curve and the registered model
    on its results page); that model embeds it; the UMAP coloured by the published cell types.
    (The synthetic tiny model is refused on pbmc3k: it knows too few of its genes.)"""
    from conftest import shared_file

    pbmc = shared_file("singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad")
    url = server["url"]
    page = sign_in(browser, server, "alice", "/web/projects/lab_a/upload")
    page.set_input_files("#file", str(pbmc))
    page.fill("#source", "pbmc3k (10x Genomics), Seurat tutorial counts")
    page.click("text=Upload and check")
    page.wait_for_selector("#upload-status:has-text('stored and checked')", timeout=120_000)
    page.goto(url + "/web/projects/lab_a")
    assert "2638 cells × 13714 genes" in page.inner_text("main")

    page.goto(url + "/web/projects/lab_a/launch/cells.pretrain")
    page.select_option("#f-datasets", ["pbmc3k_seurat_counts.h5ad"])
    for field, value in (("model-name", "pbmc_tiny"), ("steps", "8"), ("batch-size", "8"),
                         ("max-length", "64"), ("warmup", "1"), ("checkpoint-every", "8"),
                         ("resources-max-hours", "0.25")):  # fmt: skip
        page.fill(f"#f-{field}", value)
    page.fill("#f-preset", "test")
    page.click("text=Submit job")
    page.wait_for_url("**/web/projects/lab_a/jobs/*")
    wait_for_job(page, 300)
    page.click("#results-link")
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
    assert page.eval_on_selector("img[src$='loss.svg']", "i => i.naturalWidth") > 100
    assert "pbmc_tiny:1" in page.inner_text("main")
    look(page, "results-pretrain-pbmc3k")

    page.goto(url + "/web/projects/lab_a/launch/cells.embed")
    page.select_option("#f-dataset", "pbmc3k_seurat_counts.h5ad")
    page.select_option("#f-model", "pbmc_tiny:1")
    page.fill("#f-resources-max-hours", "0.25")
    page.click("text=Submit job")
    page.wait_for_url("**/web/projects/lab_a/jobs/*")
    wait_for_job(page, 300)
    page.goto(page.url + "/results?color=cell_type")
    page.wait_for_function("() => document.getElementById('umap').complete", timeout=180_000)
    assert page.eval_on_selector("#umap", "i => i.naturalWidth") > 100
    svg = page.request.get(url + page.get_attribute("#umap", "src")).text()
    assert "Memory CD4 T" in svg
    assert "B (" in svg
    look(page, "results-embed-pbmc3k")
    page.context.close()
