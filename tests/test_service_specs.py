"""Every job spec builds a command the real ``lifelm`` CLI parser accepts (no worker started).

Each task has a minimal spec and a full one (every optional field set, so every flag the spec
can write is parsed); the commands are parsed by :func:`lifelm.cli.serve.check_argv`, the same
parser the server holds every submission to. A spec whose choice the CLI refuses is refused with
the CLI's own message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service_helpers import owner_token

pytest.importorskip("fastapi")
from pydantic import TypeAdapter, ValidationError

from lifelm.cli.serve import check_argv
from lifelm.service import specs

M = "m:1"
EXAMPLES: dict[str, list[dict]] = {
    "cells.embed": [
        {"dataset": "c.h5ad", "model": M},
        {"dataset": "c.h5ad", "model": M, "batch_size": 8, "key_added": "X_e", "layer": "counts"},
    ],
    "cells.annotate": [
        {"dataset": "c.h5ad", "model": M},
        {"dataset": "c.h5ad", "model": M, "reference": "r.h5ad", "label_key": "cell type",
         "method": "model", "mode": "knn", "min_confidence": 0.3, "epochs": 1,
         "query_label_key": "ct", "seed": 3, "layer": "X", "save_model": "clf"},
    ],
    "cells.pretrain": [
        {"datasets": ["c.h5ad"], "model_name": "n"},
        {"datasets": ["c.h5ad", "r.h5ad"], "model_name": "n", "preset": "test", "steps": 3,
         "batch_size": 2, "lr": 0.01, "warmup": 1, "max_length": 16, "checkpoint_every": 1,
         "layer": "counts", "processes": 2, "seed": 1, "resources": {"cpus": 2}},
        {"datasets": ["s.corpus"], "model_name": "n"},
    ],
    "cells.evaluate": [
        {"dataset": "c.h5ad", "model": M},
        {"dataset": "c.h5ad", "model": M, "label_key": "t", "query": "r.h5ad",
         "query_label_key": "u", "label_map": "map.tsv", "test_fraction": 0.3,
         "finetune_steps": 2, "seed": 2, "layer": "raw"},
    ],
    "cells.perturb": [
        {"dataset": "c.h5ad", "model": M},
        {"dataset": "c.h5ad", "model": M, "genes": "CD3E,CD4+CD8A", "kind": "knockdown",
         "fraction": 0.5, "method": "screen", "screen": "rank", "top": 5, "max_cells": 3,
         "gene_shifts": True, "layer": "counts", "max_tokens": 1024},
    ],
    "cells.targets": [
        {"dataset": "c.h5ad", "model": M, "label_key": "state", "start": "ctrl", "goal": "stim"},
        {"dataset": "c.h5ad", "model": M, "label_key": "state", "start": "--help",
         "goal": "a b", "kind": "delete", "fraction": 0.5, "genes": "A,B", "donor_key": "donor",
         "groupby": "cell_type", "method": "de", "n_cells": 5, "min_detection": 0.1,
         "max_candidates": 9, "n_null": 2, "n_permutations": 10, "pairs_top": 2, "seed": 1,
         "layer": "X", "max_tokens": 100},
    ],
    "cells.corpus.build": [
        {"datasets": ["c.h5ad"], "store_name": "s.corpus"},
        {"datasets": ["c.h5ad", "r.h5ad"], "store_name": "s.corpus", "max_length": 32,
         "shard_cells": 10, "jobs": 2, "resources": {"cpus": 2}, "min_genes": 1, "layer": "counts",
         "tokenizer_model": M, "bins_per_decade": 10},
    ],
    "genomes.qc": [{"dataset": "g.fa"}, {"dataset": "g.fa", "jobs": 2, "resources": {"cpus": 2}}],
    "genomes.mutations": [{"dataset": "g.fa"}, {"dataset": "g.fa", "jobs": 2, "resources": {"cpus": 2}}],
    "genomes.pretrain": [
        {"datasets": ["cds.fa"], "model_name": "codon"},
        {"datasets": ["cds.fa", "g.fa"], "model_name": "codon", "preset": "test", "row_len": 64,
         "held_out": ["gB", "gC"], "max_genes": 10, "dedupe": False, "steps": 2,
         "batch_size": 2, "lr": 0.01, "warmup": 1, "checkpoint_every": 1, "seed": 4},
    ],
    "genomes.finetune": [
        {"dataset": "g.fa", "model": M, "model_name": "ft"},
        {"dataset": "g.fa", "model": M, "model_name": "ft", "held_out_list": "names.txt",
         "mode": "genome", "row_len": 128, "steps": 2, "batch_size": 2, "lr": 0.01,
         "warmup": 1, "checkpoint_every": 1, "seed": 1},
    ],
    "genomes.embed": [{"dataset": "g.fa", "model": M},
                      {"dataset": "g.fa", "model": M, "context": 64, "mode": "genome"}],
    "genomes.score": [{"dataset": "g.fa", "model": M},
                      {"dataset": "g.fa", "model": M, "context": 64, "mode": "genome"}],
    "genomes.lineages": [
        {"embeddings": "emb.tsv", "labels": "labels.tsv"},
        {"embeddings": "emb.tsv", "labels": "labels.tsv", "genomes": "g.fa",
         "columns": ["clade", "Nextclade_pango"], "id_column": "name", "train_list": "names.txt",
         "method": "hamming_nn", "probe": "knn", "min_confidence": 0.4,
         "novelty_quantile": 0.9, "holdout": 0.3, "empty_labels": "refuse", "seed": 1},
    ],
    "bench.perturbation": [
        {},
        {"benchmarks": ["norman19"], "seeds": 1, "model": M, "response_epochs": 2},
    ],
    "lab.run": [
        {"screen": "screen.csv"},
        {"screen": "screen.csv", "hits": "hits.txt", "direction": "up",
         "strategies": ["greedy", "diversity"], "rounds": 2, "batch_size": 4,
         "expression": "c.h5ad", "model": M, "pool": "pool.txt", "backend": "pylabrobot",
         "positive_control": "-x", "noise_sd": 0.1, "seed": 2},
        {"screen": "ps.h5ad", "setting": "perturbseq", "strategies": ["greedy"],
         "surrogate": "mc_dropout", "mc_samples": 8, "perturbation_key": "perturbation",
         "control": ["ctrl", "NT"], "gi_map": "gi.csv", "top_fraction": 0.2},
    ],
}  # fmt: skip
COMMAND = {t: t.split(".") for t in specs.TASKS}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> specs.Paths:
    """Every dataset name of the examples as an existing file (a corpus as a folder)."""
    tmp = tmp_path_factory.mktemp("spec_paths")
    names = {n for exs in EXAMPLES.values() for ex in exs for n in _names(ex)}
    datasets = {}
    for n in names:
        p = tmp / n
        if n.endswith(".corpus"):
            p.mkdir()
        else:
            p.write_text("x\n")
        datasets[n] = str(p)
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{}")
    (tmp / "bench").mkdir()
    return specs.Paths(datasets, {M: str(tmp / "model")}, str(tmp / "bench"))


def _names(ex: dict) -> list[str]:
    out = []
    for k, v in ex.items():
        if k in ("model", "tokenizer_model", "model_name", "save_model", "store_name"):
            continue
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, str) and "." in x and x.split(".")[-1] in (
                "h5ad", "fa", "tsv", "txt", "csv", "corpus"
            ):  # fmt: skip
                out.append(x)
    return out


def test_every_task_has_examples() -> None:
    assert set(EXAMPLES) == set(specs.TASKS)
    assert len(specs.TASKS) == 16


CASES = [(t, i) for t, exs in EXAMPLES.items() for i in range(len(exs))]


@pytest.mark.parametrize(("task", "i"), CASES, ids=[f"{t}-{i}" for t, i in CASES])
def test_spec_builds_a_command_the_cli_accepts(task: str, i: int, paths: specs.Paths) -> None:
    spec = TypeAdapter(specs.JobSpec).validate_python({"task": task, **EXAMPLES[task][i]})
    for resume in (False, True):
        argv = spec.argv(paths, resume=resume)
        assert argv[: len(COMMAND[task])] == COMMAND[task]
        check_argv(argv)  # raises ValueError with the CLI's message if the CLI refuses it
        outs = [a for a in argv if a.startswith("--out=")]
        assert len(outs) == 1
        assert outs[0].startswith("--out=out/")
        assert ("--resume" in argv) == (resume and spec.resumes == "flag")
    # every input the spec names is on the command line, as its stored path
    for name, kinds in specs.input_datasets(spec):
        assert kinds
        assert any(paths.datasets[name] in a for a in argv), name


def test_full_examples_write_every_field(paths: specs.Paths) -> None:
    """Every field a full example sets shows up on the command line (as its value, or as the
    flag of a boolean), so a field the command forgets to pass fails here."""
    skip = {"model", "tokenizer_model", "model_name", "save_model", "store_name", "resources"}
    for task, ex in [(t, ex) for t, exs in EXAMPLES.items() for ex in exs[1:]]:
        argv = (
            TypeAdapter(specs.JobSpec)
            .validate_python({"task": task, **ex})
            .argv(paths, resume=False)
        )
        for key, value in ex.items():
            if key in skip:
                continue
            if isinstance(value, bool):
                assert any(key.replace("_", "-") in a for a in argv), (task, key)
                continue
            for v in value if isinstance(value, list) else [value]:
                v = paths.datasets.get(v, v) if isinstance(v, str) else v
                assert any(str(v) in a for a in argv), (task, key, v)


@pytest.mark.parametrize(
    ("task", "field", "value", "message"),
    [
        ("cells.perturb", "kind", "zap", "'zap' is not one of 'delete', 'overexpress'"),
        ("cells.targets", "method", "magic", "'magic' is not one of"),
        ("genomes.lineages", "probe", "svm", "'svm' is not one of 'logreg', 'knn'"),
        ("lab.run", "direction", "sideways", "'sideways' is not one of 'both', 'up', 'down'"),
        ("lab.run", "surrogate", "gp", "'gp' is not one of 'forest', 'mc_dropout'"),
        ("genomes.finetune", "mode", "codon", "'codon' is not one of 'orf', 'genome'"),
    ],
)
def test_a_choice_the_cli_refuses_is_refused_with_its_message(
    task: str, field: str, value: str, message: str, paths: specs.Paths
) -> None:
    ex = {**EXAMPLES[task][0], field: value}
    spec = TypeAdapter(specs.JobSpec).validate_python({"task": task, **ex})
    with pytest.raises(ValueError, match=message):
        check_argv(spec.argv(paths, resume=False))


def test_ranges_and_presets_are_checked_by_the_spec() -> None:
    ta = TypeAdapter(specs.JobSpec)
    for bad in (
        {"task": "cells.pretrain", "datasets": ["c.h5ad"], "model_name": "m", "preset": "huge"},
        {"task": "genomes.pretrain", "datasets": ["c.fa"], "model_name": "m", "preset": "small!"},
        {"task": "cells.corpus.build", "datasets": ["c.h5ad"], "store_name": "s.tar"},
        {"task": "cells.evaluate", "dataset": "c.h5ad", "model": M, "test_fraction": 1.5},
        {"task": "lab.run", "screen": "s.csv", "strategies": []},
        {"task": "genomes.qc", "dataset": "g.fa", "jobs": 4, "resources": {"cpus": 2}},
        {"task": "cells.pretrain", "datasets": ["c.h5ad"], "model_name": "m", "processes": 2},
        {"task": "cells.targets", "dataset": "c.h5ad", "model": M, "label_key": "s",
         "start": "a\nb", "goal": "c"},
    ):  # fmt: skip
        with pytest.raises(ValidationError):
            ta.validate_python(bad)


def test_bench_needs_the_servers_benchmark_data(paths: specs.Paths) -> None:
    spec = TypeAdapter(specs.JobSpec).validate_python({"task": "bench.perturbation"})
    with pytest.raises(KeyError, match="--bench-data"):
        spec.argv(specs.Paths(paths.datasets, paths.models, None), resume=False)


def test_paths_in_values_cannot_become_options(tmp_path: Path, paths: specs.Paths) -> None:
    """Free-text values are written ``--name=value``: a value that looks like an option stays a
    value (the CLI parses it as the start label, not as --help)."""
    spec = TypeAdapter(specs.JobSpec).validate_python(
        {"task": "cells.targets", **EXAMPLES["cells.targets"][1]}
    )
    argv = spec.argv(paths, resume=False)
    assert "--start=--help" in argv
    check_argv(argv)


def test_finish_registers_what_each_training_spec_trains(tmp_path: Path) -> None:
    """The registration step after a successful attempt: an annotate job with save_model
    registers its classifier (clf:1), a fine-tune names its base model, a plain annotate job
    registers nothing, and a second call (a restart after the commit) adds nothing."""
    import torch

    from lifelm.io.checkpoint import save_checkpoint
    from lifelm.service.db import (
        Dataset,
        Job,
        Model,
        Project,
        User,
        make_engine,
        session_factory,
        upgrade,
    )
    from lifelm.service.scheduler import finish

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    with session_factory(make_engine(url))() as s:
        u, p = User(name="u"), Project(name="p", cpu_hours=1)
        s.add_all([u, p])
        s.flush()
        s.add(Dataset(project_id=p.id, name="c.h5ad", kind="h5ad", sha256="ab" * 32, size=1,
                      path="/x", card={}))  # fmt: skip
        s.add(Dataset(project_id=p.id, name="g.fa", kind="fasta", sha256="cd" * 32, size=1,
                      path="/y", card={}))  # fmt: skip
        s.add(Model(project_id=p.id, name="m", version=1, path="/m", card={}))
        cases = [
            ({"task": "cells.annotate", "dataset": "c.h5ad", "model": "m:1", "reference": "c.h5ad",
              "save_model": "clf", "licence": "CC0"}, "out/classifier/model", "cell_classifier"),
            ({"task": "genomes.finetune", "dataset": "g.fa", "model": "m:1", "model_name": "ft"},
             "out/run/model", "codon_transformer"),
            ({"task": "cells.annotate", "dataset": "c.h5ad", "model": "m:1"}, None, None),
        ]  # fmt: skip
        for i, (raw, rel, kind) in enumerate(cases):
            spec = TypeAdapter(specs.JobSpec).validate_python(raw)
            job = Job(project_id=p.id, user_id=u.id, task=spec.task,
                      spec=spec.model_dump(mode="json"), status="running")  # fmt: skip
            s.add(job)
            s.flush()
            folder = tmp_path / f"job{i}"
            (folder / "out").mkdir(parents=True)
            (folder / "out" / "annotated.h5ad").write_bytes(b"x")
            if rel:
                side = {"model_type": kind, "model": {"vocab_size": 20}, "step": 30,
                        "eval_loss": 1.5, "tokenizer": {"kind": "t", "sha256": "00"}}  # fmt: skip
                save_checkpoint(folder / rel, {"w": torch.zeros(4, 5)}, side)
            finish(s, job, folder)
            finish(s, job, folder)  # idempotent
            s.commit()
        got = {(m.name, m.version): m for m in s.query(Model).all()}
        assert set(got) == {("m", 1), ("clf", 1), ("ft", 1)}
        clf = got[("clf", 1)].card
        assert clf["architecture"] == "cell_classifier"
        assert clf["task"] == "cells.annotate"
        assert clf["parameters"] == 20
        assert clf["training_data"] == [{"dataset": "c.h5ad", "sha256": "ab" * 32}]
        assert clf["licence"] == "CC0"
        assert clf["training"]["base_model"] == "m:1"
        ft = got[("ft", 1)].card
        assert ft["metrics"]["objective"].startswith("next-codon")
        assert ft["metrics"]["baseline_uniform_guess_loss"] == pytest.approx(np.log(20))
        assert got[("ft", 1)].path.endswith("job1/out/run/model")


def test_a_job_whose_input_was_deleted_fails_instead_of_hanging(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from lifelm.service.app import Settings, create_app
    from service_helpers import write_fasta

    app = create_app(Settings(data_dir=tmp_path, run_scheduler=False, argv_check=check_argv))
    secret = owner_token(app, cpu_hours=5)
    with TestClient(app) as http:
        http.headers["Authorization"] = f"Bearer {secret}"
        f = write_fasta(tmp_path / "g.fa")
        assert http.put("/v1/projects/lab/datasets/g.fa", content=f.read_bytes()).status_code == 201
        job = http.post("/v1/projects/lab/jobs", json={"spec": {"task": "genomes.qc",
                                                                "dataset": "g.fa"}}).json()  # fmt: skip
        r = http.delete("/v1/projects/lab/datasets/g.fa")
        assert r.status_code == 409  # the API refuses while a job reads it ...
        assert f"input of job {job['id']}" in r.json()["detail"]
        from lifelm.service.db import Dataset

        with app.state.sessions() as s:  # ... but a database edited by hand must not hang a job
            s.query(Dataset).filter(Dataset.name == "g.fa").delete()
            s.commit()
        app.state.scheduler.step()
        j = http.get(f"/v1/projects/lab/jobs/{job['id']}").json()
    assert j["status"] == "failed"
    assert "(g.fa)" in j["error"]
    assert "deleted since submission" in j["error"]
