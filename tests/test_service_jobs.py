"""The new job specs end to end through the local executor (real ``python -m lifelm`` workers).

Tiny synthetic inputs made here. Three chains run side by side (two CPU slots):

- genomes: ``genomes.pretrain`` (test preset) registers ``codon:1`` with a model card, then
  ``genomes.embed`` and ``genomes.score`` take it by ``name:version``;
- cells: ``cells.corpus.build`` registers its store as a dataset, ``cells.pretrain`` trains on
  that store and registers ``cellm:1``, ``cells.perturb`` uses it;
- lab: ``lab.run`` on a small synthetic screen: progress by rounds, per-round artifacts and the
  report.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service_helpers import owner_token, wait_for, write_cells

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from lifelm.cli.serve import check_argv
from lifelm.service.app import Settings, create_app


def _write_cds(path: Path, n: int = 24) -> Path:
    """In-frame CDS records (no internal stop codon) from two source genomes, gA and gB."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        body = "".join(rng.choice(list("ACG"), size=3 * 40))
        lines += [f">{'gA' if i % 3 else 'gB'}|cds{i}", "ATG" + body + "TAA"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_genomes(path: Path) -> Path:
    from lifelm.data.genomes.align import Reference

    ref = Reference.sarscov2().sequence
    d614g = ref[:23402] + "G" + ref[23403:]
    path.write_text(f">wuhan\n{ref}\n>d614g\n{d614g}\n")
    return path


def _write_screen(folder: Path, n: int = 60) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(n)]
    scores = rng.normal(0, 1, n)
    screen = folder / "screen.csv"
    pd.DataFrame({"Gene": genes, "Score": scores}).to_csv(screen, index=False)
    hits = folder / "hits.txt"
    hits.write_text("\n".join(np.array(genes)[np.argsort(-np.abs(scores))[:8]]))
    return screen, hits


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A server (SQLite, two CPU slots) with project ``lab``, its inputs uploaded and the
    first job of each chain submitted."""

    tmp = tmp_path_factory.mktemp("jobs")
    app = create_app(Settings(data_dir=tmp / "data", tick=0.2, cpu_slots=2, argv_check=check_argv))
    secret = owner_token(app, cpu_hours=50)
    screen, hits = _write_screen(tmp)
    files = {
        "cds.fa": _write_cds(tmp / "cds.fa"),
        "genomes.fa": _write_genomes(tmp / "genomes.fa"),
        "cells.h5ad": write_cells(tmp / "cells.h5ad", n_cells=80),
        "screen.csv": screen,
        "hits.txt": hits,
    }
    with TestClient(app) as http:
        http.headers["Authorization"] = f"Bearer {secret}"
        cards = {}
        for name, path in files.items():
            r = http.put(f"/v1/projects/lab/datasets/{name}", content=path.read_bytes())
            assert r.status_code == 201, r.text
            cards[name] = r.json()
        first = {
            "genomes": {"task": "genomes.pretrain", "datasets": ["cds.fa"], "model_name": "codon",
                        "preset": "test", "row_len": 64, "held_out": ["gB"], "steps": 3,
                        "batch_size": 2, "warmup": 1, "checkpoint_every": 1, "licence": "CC0"},
            "cells": {"task": "cells.corpus.build", "datasets": ["cells.h5ad"],
                      "store_name": "cells.corpus", "max_length": 32, "shard_cells": 64,
                      "min_genes": 5},
            "lab": {"task": "lab.run", "screen": "screen.csv", "hits": "hits.txt",
                    "strategies": ["random", "greedy"], "rounds": 2, "batch_size": 5},
        }  # fmt: skip
        ids = {}
        for key, spec in first.items():
            r = http.post("/v1/projects/lab/jobs", json={"spec": spec})
            assert r.status_code == 201, r.text
            ids[key] = r.json()["id"]
        yield {"http": http, "ids": ids, "cards": cards, "app": app}


def _done(http, job_id: int, timeout: float = 400) -> dict:
    def ended():
        j = http.get(f"/v1/projects/lab/jobs/{job_id}").json()
        return j if j["status"] in ("succeeded", "failed", "cancelled") else None

    j = wait_for(ended, timeout=timeout)
    assert j["status"] == "succeeded", http.get(f"/v1/projects/lab/jobs/{job_id}/logs").text
    return j


def _submit(http, spec: dict) -> int:
    r = http.post("/v1/projects/lab/jobs", json={"spec": spec})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _artifacts(http, job_id: int) -> list[str]:
    return [a["path"] for a in http.get(f"/v1/projects/lab/jobs/{job_id}/artifacts").json()]


def test_genomes_pretrain_registers_then_embed_and_score_by_name_version(lab) -> None:
    http, ids = lab["http"], lab["ids"]
    # before the model exists, a job naming it is refused at submission
    r = http.post("/v1/projects/lab/jobs",
                  json={"spec": {"task": "genomes.embed", "dataset": "genomes.fa",
                                 "model": "codon:2"}})  # fmt: skip
    assert r.status_code == 422
    assert "codon:2" in r.json()["detail"]
    job = _done(http, ids["genomes"])
    assert job["progress"] == 1.0
    models = {(m["name"], m["version"]): m for m in http.get("/v1/projects/lab/models").json()}
    card = models[("codon", 1)]["card"]
    assert card["architecture"] == "codon_transformer"
    assert card["task"] == "genomes.pretrain"
    assert card["training"]["steps"] == 3
    assert card["parameters"] > 0
    assert card["training_data"] == [
        {"dataset": "cds.fa", "sha256": lab["cards"]["cds.fa"]["sha256"]}
    ]
    metrics = card["metrics"]
    assert metrics["objective"].startswith("next-codon")
    assert math.isfinite(metrics["eval_loss"])
    assert metrics["baseline_uniform_guess_loss"] == pytest.approx(
        math.log(card["config"]["vocab_size"])
    )
    assert card["licence"] == "CC0"
    emb = _submit(http, {"task": "genomes.embed", "dataset": "genomes.fa", "model": "codon:1",
                         "context": 64})  # fmt: skip
    score = _submit(http, {"task": "genomes.score", "dataset": "genomes.fa", "model": "codon:1",
                           "context": 64})  # fmt: skip
    _done(http, emb)
    assert _artifacts(http, emb) == ["embeddings.tsv"]
    table = http.get(f"/v1/projects/lab/jobs/{emb}/artifacts/embeddings.tsv").text
    rows = [line.split("\t") for line in table.strip().splitlines() if not line.startswith("#")]
    assert [r[0] for r in rows[1:]] == ["wuhan", "d614g"]
    assert len(rows[0]) == len(rows[1]) > 8
    assert all(math.isfinite(float(x)) for x in rows[1][1:])
    # the table becomes a dataset of the project (for a genomes.lineages job), checked as an upload
    r = http.post("/v1/projects/lab/datasets/emb.tsv/from-artifact",
                  json={"job": emb, "path": "embeddings.tsv", "licence": "CC0"})  # fmt: skip
    assert r.status_code == 201, r.text
    kept = r.json()
    assert (kept["kind"], kept["card"]["rows"]) == ("table", 2)
    assert kept["sha256"] == hashlib.sha256(table.encode()).hexdigest()
    assert kept["card"]["source"] == f"job {emb} artifact embeddings.tsv"
    for bad in ("../job.json", "../../../../lifelm.db", "nope.tsv"):
        r = http.post("/v1/projects/lab/datasets/x.tsv/from-artifact",
                      json={"job": emb, "path": bad})  # fmt: skip
        assert r.status_code == 404, bad
    _done(http, score)
    assert set(_artifacts(http, score)) == {"scores.tsv", "scores.mutations.tsv"}
    muts = http.get(f"/v1/projects/lab/jobs/{score}/artifacts/scores.mutations.tsv").text
    assert "S:D614G" in muts


def test_corpus_build_feeds_pretrain_then_perturb(lab) -> None:
    http, ids = lab["http"], lab["ids"]
    _done(http, ids["cells"])
    store = http.get("/v1/projects/lab/datasets/cells.corpus").json()
    assert store["kind"] == "corpus"
    assert store["card"]["cells"] == 80
    assert store["card"]["genes"] > 0
    assert store["card"]["job"] == ids["cells"]
    assert store["card"]["sources"][0]["sha256"] == lab["cards"]["cells.h5ad"]["sha256"]
    # the same store name again is refused at submission
    r = http.post(
        "/v1/projects/lab/jobs",
        json={
            "spec": {
                "task": "cells.corpus.build",
                "datasets": ["cells.h5ad"],
                "store_name": "cells.corpus",
            }
        },
    )
    assert r.status_code == 422
    pre = _submit(http, {"task": "cells.pretrain", "datasets": ["cells.corpus"],
                         "model_name": "cellm", "preset": "test", "steps": 4, "batch_size": 4,
                         "warmup": 1, "checkpoint_every": 2})  # fmt: skip
    _done(http, pre)
    logs = http.get(f"/v1/projects/lab/jobs/{pre}/logs").text
    assert f"{store['sha256']}.corpus --out=out/run" in logs  # the stored store, content-addressed
    card = http.get("/v1/projects/lab/models/cellm/1").json()["card"]
    assert card["training_data"] == [{"dataset": "cells.corpus", "sha256": store["sha256"]}]
    assert card["metrics"]["objective"].startswith("masked-gene")
    pert = _submit(http, {"task": "cells.perturb", "dataset": "cells.h5ad", "model": "cellm:1",
                          "max_cells": 3})  # fmt: skip
    _done(http, pert)
    assert "perturb/perturb_genes.tsv" in _artifacts(http, pert)
    tsv = http.get(f"/v1/projects/lab/jobs/{pert}/artifacts/perturb/perturb_genes.tsv").text
    body = [line for line in tsv.splitlines() if line and not line.startswith("#")]
    assert len(body) > 2  # a header and one row per perturbed gene


def test_lab_run_rounds_artifacts_and_report(lab) -> None:
    http, ids = lab["http"], lab["ids"]
    job = _done(http, ids["lab"])
    assert job["progress"] == 1.0
    arts = _artifacts(http, ids["lab"])
    assert "lab/report.html" in arts
    for strategy in ("random", "greedy"):
        assert f"lab/{strategy}/state.json" in arts
        assert f"lab/{strategy}/ranking.csv" in arts
        rounds = [a for a in arts if a.startswith(f"lab/{strategy}/rounds/")]
        assert len([a for a in rounds if a.endswith("results.csv")]) == 2  # one per round
        state = http.get(f"/v1/projects/lab/jobs/{ids['lab']}/artifacts/lab/{strategy}/state.json")
        assert state.json()["rounds_done"] == 2
    report = http.get(f"/v1/projects/lab/jobs/{ids['lab']}/artifacts/lab/report.html").text
    assert "Discovery curves" in report
    ledger = http.get("/v1/projects/lab/ledger").json()
    assert any(e["job"] == ids["lab"] and e["seconds"] > 0 for e in ledger["entries"])
