"""The newcomer's path on real data, through ``lifelm serve`` and :class:`lifelm.client.Client`.

One command starts the server (SQLite, local executor); an administrator token comes from
``lifelm serve admin create-user``. A small cell model is pretrained on pbmc3k's genes as a job
and registered (``pbmc-tiny:1``); pbmc3k (all 2,638 cells) is embedded with it by
``name:version`` while the client follows the job's progress and log events; the embedded h5ad
is fetched and checked. The GenBank 1,000 SARS-CoV-2 genomes (all of them) are uploaded and
``genomes mutations`` runs on them; the fetched table has one row per genome, joined to the
metadata by accession.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared_file
from service_helpers import free_port, healthy, lifelm, serve, wait_for

pytest.importorskip("uvicorn")
pytestmark = [pytest.mark.data, pytest.mark.slow]


def test_newcomer_runs_pbmc3k_embed_and_genbank_mutations(tmp_path: Path) -> None:
    from lifelm.client import Client

    pbmc = shared_file("singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad")
    genbank = shared_file("genomes/sarscov2/genbank_1000_lapis_silo/sequences.fasta.xz")
    meta = shared_file("genomes/sarscov2/genbank_1000_lapis_silo/metadata.tsv")
    data, port, log = tmp_path / "srv", free_port(), tmp_path / "server.log"
    token = lifelm("serve", "--data-dir", str(data), "admin", "create-user", "admin", "--admin")
    token = token.stdout.strip()
    server = serve(data, port, log)
    try:
        c = Client(f"http://127.0.0.1:{port}", token, timeout=60)
        wait_for(lambda: healthy(c), timeout=120)
        c.create_project("lab", cpu_hours=10)
        card = c.upload("lab", "pbmc3k.h5ad", pbmc, source="10x Genomics pbmc3k (Seurat)",
                        licence="CC-BY-4.0")["card"]  # fmt: skip
        assert (card["cells"], card["genes"]) == (2638, 13714)
        assert card["counts"]
        g = c.upload("lab", "genbank1000.fasta.xz", genbank, source="GenBank via LAPIS-SILO",
                     licence="public GenBank records")["card"]  # fmt: skip
        assert g["genomes"] == 1000
        # a model that reads pbmc3k's genes: pretrained here as a job, registered by the server
        pre = c.submit("lab", {"task": "cells.pretrain", "datasets": ["pbmc3k.h5ad"],
                               "model_name": "pbmc-tiny", "preset": "test", "steps": 4,
                               "batch_size": 8, "warmup": 1, "max_length": 64,
                               "checkpoint_every": 2, "licence": "CC-BY-4.0"})  # fmt: skip
        mut = c.submit("lab", {"task": "genomes.mutations", "dataset": "genbank1000.fasta.xz"})
        done = c.wait("lab", pre["id"], progress=True, timeout=600)
        assert done["status"] == "succeeded", c.logs("lab", pre["id"])
        assert done["progress"] == 1.0
        (model,) = c.models("lab")
        assert (model["name"], model["version"]) == ("pbmc-tiny", 1)
        assert model["card"]["training_data"][0]["dataset"] == "pbmc3k.h5ad"

        emb = c.submit("lab", {"task": "cells.embed", "dataset": "pbmc3k.h5ad",
                               "model": "pbmc-tiny:1"})  # fmt: skip
        statuses, lines = [], []
        for event, payload in c.events("lab", emb["id"]):  # what `wait(progress=True)` shows
            if event == "status":
                statuses.append(payload["status"])
            else:
                lines.append(payload)
        assert statuses[-1] == "succeeded", "\n".join(lines)
        assert "running" in statuses
        assert any("lifelm cells embed" in x for x in lines)
        got = c.fetch("lab", emb["id"], tmp_path / "embed")
        assert [p.name for p in got] == ["embedded.h5ad"]
        import anndata as ad

        a = ad.read_h5ad(got[0])
        x = np.asarray(a.obsm["X_lifelm"])
        assert x.shape == (2638, model["card"]["config"]["d_model"])
        assert np.isfinite(x).all()
        assert len(np.unique(x.round(5), axis=0)) > 2600  # one embedding per cell, not a constant
        assert a.obs["cell_type"].value_counts()["Naive CD4 T"] == 697  # the cells, unchanged

        done = c.wait("lab", mut["id"], timeout=600)
        assert done["status"] == "succeeded", c.logs("lab", mut["id"])
        (path,) = c.fetch("lab", mut["id"], tmp_path / "mut")
        table = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
        assert len(table) == 1000
        accessions = pd.read_csv(meta, sep="\t", dtype=str, usecols=["genbankAccession"])
        assert set(table["seqName"]) == set(accessions["genbankAccession"])
        assert table["qc.overallStatus"].isin(["good", "mediocre", "bad"]).all()
        assert (table["qc.overallStatus"] == "good").mean() > 0.8
        ledger = c.ledger("lab")
        assert {e["job"] for e in ledger["entries"]} == {pre["id"], mut["id"], emb["id"]}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    assert token not in log.read_text()
