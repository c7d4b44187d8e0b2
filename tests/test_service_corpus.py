"""Corpus-store archive uploads: extracted safely, checked by LifeLM's store reader, stored by
content address, usable as ``cells.pretrain`` input. Hostile or damaged archives get 422 and
leave nothing on disk."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from service_helpers import owner_token, write_cells

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from lifelm.cli.serve import check_argv
from lifelm.service.app import Settings, create_app


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from lifelm.data.store.build import CorpusConfig, build_corpus

    tmp = tmp_path_factory.mktemp("corpus")
    cells = write_cells(tmp / "cells.h5ad", n_cells=60)
    store = build_corpus(
        [cells], tmp / "mystore", config=CorpusConfig(max_length=32, shard_cells=32, min_genes=5)
    )
    settings = Settings(data_dir=tmp / "data", run_scheduler=False, max_upload_bytes=5_000_000,
                        argv_check=check_argv)  # fmt: skip
    app = create_app(settings)
    secret = owner_token(app, cpu_hours=50)
    with TestClient(app) as http:
        http.headers["Authorization"] = f"Bearer {secret}"
        assert http.put("/v1/projects/lab/datasets/cells.h5ad",
                        content=cells.read_bytes()).status_code == 201  # fmt: skip
        yield {"http": http, "store": Path(store), "tmp": tmp, "data": tmp / "data"}


def _tar(store: Path, *, gz: bool, top: str | None, extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        tar.add(store, arcname=top or ".", recursive=True)
        for info, data in extra or []:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _nothing_left(env) -> None:
    assert not list((env["data"] / "tmp").iterdir())


def test_store_archive_is_extracted_checked_and_usable_for_pretraining(env) -> None:
    http = env["http"]
    from lifelm.data.store.store import CorpusStore

    expected = CorpusStore(env["store"])
    for name, gz, top in (("a.tar.gz", True, "mystore"), ("b.tar", False, None)):
        body = _tar(env["store"], gz=gz, top=top)
        r = http.put(f"/v1/projects/lab/datasets/{name}?licence=CC0", content=body)
        assert r.status_code == 201, r.text
        d = r.json()
        assert d["kind"] == "corpus"
        assert d["sha256"] == hashlib.sha256(body).hexdigest()
        assert d["card"]["cells"] == len(expected) == 60
        assert d["card"]["genes"] == len(expected.tokenizer().genes)
        assert d["card"]["tokens"] == expected.info["n_tokens"]
        assert d["card"]["tokenizer_sha256"] == expected.tokenizer().hash()
        assert d["card"]["licence"] == "CC0"
        folder = next((env["data"] / "projects").rglob(f"{d['sha256']}.corpus"))
        assert (folder / "corpus.json").is_file()
        assert len(CorpusStore(folder)) == 60
    _nothing_left(env)
    # a store is a pretraining input, alone
    spec = {"task": "cells.pretrain", "datasets": ["a.tar.gz"], "model_name": "m",
            "preset": "test", "steps": 2}  # fmt: skip
    r = http.post("/v1/projects/lab/jobs", json={"spec": spec})
    assert r.status_code == 201, r.text
    spec["datasets"] = ["a.tar.gz", "cells.h5ad"]
    r = http.post("/v1/projects/lab/jobs", json={"spec": spec})
    assert r.status_code == 422
    assert "one corpus store" in r.json()["detail"]
    r = http.post("/v1/projects/lab/jobs", json={"spec": {
        "task": "cells.embed", "dataset": "a.tar.gz", "model": "m:1"}})  # fmt: skip
    assert r.status_code == 422  # a store is not an h5ad
    # a store is a folder: no download; deleting the record removes it
    assert http.get("/v1/projects/lab/datasets/b.tar/content").status_code == 409
    b = http.get("/v1/projects/lab/datasets/b.tar").json()
    assert http.delete("/v1/projects/lab/datasets/b.tar").status_code == 204
    assert not list((env["data"] / "projects").rglob(f"{b['sha256']}.corpus"))


def _member(name: str, kind: bytes, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in kw.items():
        setattr(info, k, v)
    return info


HOSTILE = {
    "absolute": ([(_member("/tmp/lifelm-evil", tarfile.REGTYPE, size=4), b"evil")],
                 "absolute path"),
    "dotdot": ([(_member("mystore/../../lifelm-evil", tarfile.REGTYPE, size=4), b"evil")],
               "'..'"),
    "symlink": ([(_member("mystore/link", tarfile.SYMTYPE, linkname="/etc/passwd"), None)],
                "is a link"),
    "hardlink": ([(_member("mystore/hard", tarfile.LNKTYPE, linkname="mystore/corpus.json"),
                   None)], "is a link"),
    "device": ([(_member("mystore/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
               "device"),
    "fifo": ([(_member("mystore/fifo", tarfile.FIFOTYPE), None)], "device, FIFO"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_and_nothing_stays(env, case: str) -> None:
    extra, message = HOSTILE[case]
    body = _tar(env["store"], gz=True, top="mystore", extra=extra)
    r = env["http"].put(f"/v1/projects/lab/datasets/{case}.tar.gz", content=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert f"{case}.tar.gz" in r.json()["detail"]
    _nothing_left(env)
    assert not Path("/tmp/lifelm-evil").exists()
    assert not list(env["tmp"].rglob("lifelm-evil"))
    assert not list((env["data"] / "projects").rglob(f"{hashlib.sha256(body).hexdigest()}*"))
    assert env["http"].get(f"/v1/projects/lab/datasets/{case}.tar.gz").status_code == 404


def test_damaged_or_unfinished_stores_and_non_archives_are_refused(env, tmp_path: Path) -> None:
    import shutil

    http = env["http"]
    broken = tmp_path / "broken"
    shutil.copytree(env["store"], broken)
    shard = sorted((broken / "shards").iterdir())[0]
    tokens = next(p for p in shard.iterdir() if p.suffix == ".bin")
    tokens.write_bytes(tokens.read_bytes()[:-8])  # truncated: the store's checksums catch it
    r = http.put("/v1/projects/lab/datasets/broken.tar", content=_tar(broken, gz=False, top=None))
    assert r.status_code == 422
    assert "not a finished corpus store" in r.json()["detail"]
    (broken / "corpus.json").unlink()  # an interrupted build
    r = http.put("/v1/projects/lab/datasets/unfinished.tar",
                 content=_tar(broken, gz=False, top=None))  # fmt: skip
    assert r.status_code == 422
    assert "corpus.json" in r.json()["detail"]
    r = http.put("/v1/projects/lab/datasets/junk.tgz", content=b"not a tar archive at all")
    assert r.status_code == 422
    assert "not a tar archive" in r.json()["detail"]
    _nothing_left(env)
