"""``lifelm wetware …``: the simulated organoid neuroplatform (serve its API, play Pong)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(
    help="Simulated organoid-on-MEA neuroplatform: remote API and closed-loop tasks.",
    no_args_is_help=True,
)


@app.command("serve")
def serve(
    preset_name: str = typer.Option("finalspark-4x8", "--preset", help="Platform preset."),
    neurons: int | None = typer.Option(None, "--neurons", help="Neurons per organoid."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulation."),
    db: Path | None = typer.Option(None, "--db", help="SQLite event database (default: memory)."),
    realtime: bool = typer.Option(
        False, "--realtime", help="Pad simulated time to the wall clock."
    ),
    port: int = typer.Option(8765, "--port", help="Port on 127.0.0.1."),
) -> None:
    """Serve the wetware API on 127.0.0.1 (FastAPI + uvicorn, from the 'serve' extra)."""
    import uvicorn

    from lifelm.wetware.api import create_app
    from lifelm.wetware.config import preset
    from lifelm.wetware.platform import Neuroplatform

    cfg = preset(preset_name, realtime=realtime, **({"n_neurons": neurons} if neurons else {}))
    plat = Neuroplatform(cfg, seed=seed, db=str(db) if db else ":memory:")
    uvicorn.run(create_app(plat), host="127.0.0.1", port=port)


@app.command("pong")
def pong(
    feedback: str = typer.Option("fep", "--feedback", help="fep, dopamine or none (control)."),
    duration: float = typer.Option(120.0, "--duration", help="Simulated seconds of play."),
    neurons: int | None = typer.Option(None, "--neurons", help="Neurons per organoid."),
    preset_name: str = typer.Option("finalspark-4x8", "--preset", help="Platform preset."),
    seed: int = typer.Option(0, "--seed", help="Seed of organoid and game."),
    window: float = typer.Option(30.0, "--window", help="Seconds per point of the learning curve."),
    out: Path | None = typer.Option(None, "--out", help="Write the outcomes as JSON here."),
) -> None:
    """Play DishBrain-like Pong on a simulated organoid and print the hit-rate curve."""
    from lifelm._core.errors import NumericalError
    from lifelm.wetware.pong import PongConfig, run_local

    cfg = PongConfig(duration_s=duration, feedback=feedback, window_s=window)
    res = run_local(cfg, platform=preset_name, n_neurons=neurons, seed=seed)
    if not res.outcomes:
        raise NumericalError("the ball never reached the paddle; play longer (--duration)")
    for row in res.curve():
        rate = "n/a" if row["arrivals"] == 0 else f"{row['hit_rate']:.3f}"
        typer.echo(f"t={row['t0_s']:6.0f}s  arrivals={row['arrivals']:3d}  hit_rate={rate}")
    typer.echo(
        f"hit rate {res.hit_rate():.3f} over {len(res.outcomes)} arrivals; mean rally {res.mean_rally():.2f}"
    )
    if out is not None:
        payload = {"config": res.config, "outcomes": res.outcomes, "curve": res.curve()}
        out.write_text(json.dumps(payload, indent=1))


@app.command("presets")
def presets() -> None:
    """List the platform presets."""
    from lifelm.wetware.config import PRESETS

    for name, cfg in PRESETS.items():
        typer.echo(
            f"{name}: {cfg.n_sites} site(s) x {cfg.electrodes_per_site} electrodes ({cfg.layout}), "
            f"{cfg.network.n_neurons} neurons per organoid"
        )
