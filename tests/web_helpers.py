"""Fixtures shared by the web page's tests (tests/test_web_*.py): a service with three users
(alice owns lab_a, vera views lab_a, bob owns lab_b), sign-in, and a tiny registered model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

USERS = {"alice": ("lab_a", "owner"), "vera": ("lab_a", "viewer"), "bob": ("lab_b", "owner")}


def make_service(tmp: Path, **settings: Any) -> tuple[Any, Any, dict[str, str]]:
    """An app with alice/vera/bob and projects lab_a/lab_b; returns (app, settings, tokens by
    user). Imports the service lazily, so test modules can skip when FastAPI is absent."""
    from lifelm.service import auth
    from lifelm.service.app import Settings, create_app
    from lifelm.service.db import Membership, Project, User

    s_ = Settings(data_dir=tmp / "data", **settings)
    app = create_app(s_)
    tokens: dict[str, str] = {}
    with app.state.sessions() as s:
        projects = {}
        for name in ("lab_a", "lab_b"):
            p = Project(name=name, cpu_hours=5.0)
            s.add(p)
            projects[name] = p
        s.flush()
        for name, (proj, role) in USERS.items():
            u = User(name=name)
            s.add(u)
            s.flush()
            s.add(Membership(user_id=u.id, project_id=projects[proj].id, role=role))
            _, tokens[name] = auth.issue(s, u)
        s.commit()
    return app, s_, tokens


def tiny_model(tmp: Path, *, n_cells: int = 200, seed: int = 0) -> Path:
    """A few steps of pretraining on synthetic cells (the genes the test's uploads use)."""
    import lifelm.cells as lc
    from lifelm.training.loop import TrainConfig

    fast = TrainConfig(max_steps=8, batch_size=16, lr=2e-3, warmup_steps=2, checkpoint_every=0,
                       log_every=4, progress=False)  # fmt: skip
    data = lc.synthetic_cells(n_cells, 200, n_types=3, seed=seed)
    return lc.pretrain(data, tmp / f"tiny_run_{seed}", preset="test", train_config=fast,
                       max_length=64).model_dir  # fmt: skip


def hidden(html: str, name: str) -> str:
    """The value of a hidden input in a page."""
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no hidden input {name!r} in the page"
    return m.group(1)
