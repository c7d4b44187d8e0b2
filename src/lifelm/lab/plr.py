"""A round of experiments compiled into a PyLabRobot protocol and executed.

Layout (per 96-well assay plate): columns 1–11 hold the round's perturbations (88 per plate, in the
order the strategy chose them), column 12 holds the controls: non-targeting guides in A12–D12 and
either a positive-control guide (``positive_control=``) or more non-targeting guides in E12–H12.

Steps per plate, on a Hamilton STARlet deck (tip carrier on rail 1, plate carriers from rail 8, a
plate reader beside them):

1. the round's guide source plate (cherry-picked from the library in the same layout) and the assay
   plate (cells seeded, 95 µL per well) are placed on a plate carrier;
2. for each column: pick up tips on as many channels as the column has wells, aspirate 5 µL guide
   from the source column, dispense into the assay column, discard the tips;
3. the assay plate is moved to the plate reader, read (luminescence reporter), and moved back.

The liquid handler and plate reader backends are PyLabRobot's chatterbox simulators by default;
pass real backends (e.g. ``STARBackend()``, an Opentrons backend with its own deck) to run the same
protocol on hardware. With the chatterbox reader the simulated assay (:class:`SimulatedLab`) sets
the reader's readings, so every result still passes through the protocol's read-out step.

Every operation is recorded in ``RoundResult.protocol["operations"]`` (JSON) and the backends' own
printout in ``RoundResult.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lifelm._core.errors import InputError
from lifelm.lab.backends import RoundResult, SimulatedLab

ROWS = "ABCDEFGH"
SAMPLE_COLUMNS = 11  # column 12 holds the controls
PER_PLATE = 8 * SAMPLE_COLUMNS
MAX_PLATES = 4  # 2 plate carriers × (source + assay) × 2, 4 tip racks on one tip carrier
GUIDE_UL = 5.0
CELLS_UL = 95.0


def plate_layout(genes: Sequence[str], *, positive_control: str | None = None) -> pd.DataFrame:
    """Well assignment of a round: one row per well with plate, well, column, content and kind."""
    genes = list(genes)
    n_plates = max(1, math.ceil(len(genes) / PER_PLATE))
    if n_plates > MAX_PLATES:
        raise InputError(
            f"a round of {len(genes)} perturbations needs {n_plates} assay plates; the "
            f"PyLabRobot deck holds {MAX_PLATES} ({MAX_PLATES * PER_PLATE} perturbations a round). "
            "Use a smaller --batch-size."
        )
    rows = []
    for p in range(n_plates):
        chunk = genes[p * PER_PLATE : (p + 1) * PER_PLATE]
        for k, g in enumerate(chunk):
            col, row = divmod(k, 8)
            rows.append((p + 1, f"{ROWS[row]}{col + 1}", col + 1, g, "sample"))
        for r in range(8):
            if r >= 4 and positive_control:
                rows.append((p + 1, f"{ROWS[r]}12", 12, positive_control, "positive_control"))
            else:
                rows.append((p + 1, f"{ROWS[r]}12", 12, "non-targeting", "negative_control"))
    return pd.DataFrame(rows, columns=["plate", "well", "column", "content", "kind"])


def _z_prime(pos: np.ndarray, neg: np.ndarray) -> float | None:
    if len(pos) < 2 or len(neg) < 2:
        return None
    spread = abs(pos.mean() - neg.mean())
    if spread == 0:
        return None
    return float(1 - 3 * (pos.std(ddof=1) + neg.std(ddof=1)) / spread)


class PyLabRobotLab:
    """Runs each round as a PyLabRobot protocol (see the module docstring).

    Parameters
    ----------
    assay
        The simulated assay whose answers the chatterbox plate reader returns. With a real plate
        reader backend the readings come from the instrument and ``assay`` only checks the pool.
    positive_control
        A gene whose guide goes into E12–H12 of every plate (its reading is recorded for the plate's
        Z'-factor); ``None`` puts non-targeting guides there too.
    liquid_handler_backend, plate_reader_backend
        Factories of PyLabRobot backends; the chatterbox simulators when ``None``.
    """

    name = "pylabrobot"

    def __init__(
        self,
        assay: SimulatedLab,
        *,
        positive_control: str | None = None,
        liquid_handler_backend: Callable[[], Any] | None = None,
        plate_reader_backend: Callable[[], Any] | None = None,
    ) -> None:
        try:
            import pylabrobot  # noqa: F401
        except ImportError:
            raise InputError(
                "the pylabrobot lab backend needs PyLabRobot: pip install 'lifelm[lab]' "
                "(pylabrobot==0.2.2)"
            ) from None
        self.assay = assay
        if positive_control is not None:
            assay.check_pool([positive_control])
        self.positive_control = positive_control
        self._lh_backend = liquid_handler_backend
        self._pr_backend = plate_reader_backend

    def check_pool(self, genes: Sequence[str]) -> None:
        self.assay.check_pool(genes)
        if self.positive_control in set(genes):
            raise InputError(
                f"the positive control {self.positive_control} is also in the pool; remove it "
                "from the pool (its effect is known, it is not a discovery)."
            )

    def run(self, round_index: int, genes: Sequence[str]) -> RoundResult:
        layout = plate_layout(genes, positive_control=self.positive_control)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ops, readings = asyncio.run(self._execute(round_index, layout))
        layout = layout.copy()
        layout["reading"] = [
            readings[(p, w)] for p, w in zip(layout.plate, layout.well, strict=True)
        ]
        samples = layout[layout.kind == "sample"]
        table = pd.DataFrame(
            {
                "gene": samples.content.to_numpy(),
                "score": samples.reading.to_numpy(float),
                "plate": samples.plate.to_numpy(),
                "well": samples.well.to_numpy(),
            }
        )
        qc = []
        for p, grp in layout.groupby("plate"):
            neg = grp.loc[grp.kind == "negative_control", "reading"].to_numpy(float)
            pos = grp.loc[grp.kind == "positive_control", "reading"].to_numpy(float)
            qc.append(
                {
                    "plate": int(p),
                    "negative_control_mean": float(neg.mean()),
                    "negative_control_sd": float(neg.std(ddof=1)) if len(neg) > 1 else None,
                    "positive_control_mean": float(pos.mean()) if len(pos) else None,
                    "z_prime": _z_prime(pos, neg),
                }
            )
        protocol = {
            "backend": self.name,
            "round": int(round_index),
            "engine": "pylabrobot " + _plr_version(),
            "liquid_handler": ops[0]["liquid_handler_backend"],
            "plate_reader": ops[0]["plate_reader_backend"],
            "deck": "STARLetDeck",
            "n_experiments": len(genes),
            "layout": layout.drop(columns=["reading"]).to_dict(orient="records"),
            "operations": ops,
            "qc": qc,
            "assay_noise_model": self.assay.noise_model,
        }
        return RoundResult(table=table, protocol=protocol, log=buf.getvalue())

    def _lh(self) -> Any:
        from pylabrobot.liquid_handling.backends.chatterbox import LiquidHandlerChatterboxBackend

        return (
            self._lh_backend()
            if self._lh_backend
            else LiquidHandlerChatterboxBackend(num_channels=8)
        )

    def _pr(self) -> Any:
        from pylabrobot.plate_reading.chatterbox import PlateReaderChatterboxBackend

        return self._pr_backend() if self._pr_backend else PlateReaderChatterboxBackend()

    # Long because a PyLabRobot protocol is a linear script (deck, tips, transfers, read-out); splitting it would hide the order the robot follows.
    async def _execute(
        self, round_index: int, layout: pd.DataFrame
    ) -> tuple[list[dict[str, Any]], dict[tuple[int, str], float]]:
        from pylabrobot.liquid_handling import LiquidHandler
        from pylabrobot.plate_reading import PlateReader
        from pylabrobot.plate_reading.chatterbox import PlateReaderChatterboxBackend
        from pylabrobot.resources import (
            PLT_CAR_L5AC_A00,
            TIP_CAR_480_A00,
            Coordinate,
            STARLetDeck,
            cor_96_wellplate_360uL_Fb,
            hamilton_96_tiprack_50uL,
        )
        from pylabrobot.resources.tip_tracker import does_tip_tracking, set_tip_tracking
        from pylabrobot.resources.volume_tracker import (
            does_volume_tracking,
            set_volume_tracking,
        )

        ops: list[dict[str, Any]] = []
        readings: dict[tuple[int, str], float] = {}
        plates = sorted(layout.plate.unique())
        was_tips, was_vol = does_tip_tracking(), does_volume_tracking()
        set_tip_tracking(True)
        set_volume_tracking(True)
        deck = STARLetDeck()
        lh = LiquidHandler(backend=self._lh(), deck=deck)
        reader_backend = self._pr()
        reader = PlateReader(
            name="plate_reader", size_x=130.0, size_y=90.0, size_z=60.0, backend=reader_backend
        )
        tip_car = TIP_CAR_480_A00(name="tip_carrier")
        for i in range(len(plates)):
            tip_car[i] = hamilton_96_tiprack_50uL(name=f"tips_{i + 1}")
        deck.assign_child_resource(tip_car, rails=1)
        carriers = [PLT_CAR_L5AC_A00(name=f"plate_carrier_{k + 1}") for k in range(2)]
        sources, assays = {}, {}
        for i, p in enumerate(plates):
            car = carriers[i // 2]
            spot = (i % 2) * 2
            car[spot] = sources[p] = cor_96_wellplate_360uL_Fb(name=f"r{round_index}_guides_{p}")
            car[spot + 1] = assays[p] = cor_96_wellplate_360uL_Fb(name=f"r{round_index}_assay_{p}")
        for k, car in enumerate(carriers):
            deck.assign_child_resource(car, rails=8 + 7 * k)
        deck.assign_child_resource(reader, location=Coordinate(560.0, 80.0, 0.0))

        def record(op: str, **kw: Any) -> None:
            ops.append({"op": op, **kw})

        try:
            await lh.setup()
            await reader.setup()
            record(
                "setup",
                liquid_handler_backend=type(lh.backend).__name__,
                plate_reader_backend=type(reader_backend).__name__,
            )
            for p in plates:
                grp = layout[layout.plate == p]
                src, dst = sources[p], assays[p]
                for w in grp.well:
                    src.get_well(w).tracker.set_volume(2 * GUIDE_UL)
                for w in dst.get_all_items():
                    w.tracker.set_volume(CELLS_UL)
                record(
                    "load_plates",
                    plate=int(p),
                    source=src.name,
                    assay=dst.name,
                    guide_ul_per_well=2 * GUIDE_UL,
                    seeded_cells_ul_per_well=CELLS_UL,
                )
                rack = tip_car[plates.index(p)].resource
                for col, cg in grp.groupby("column", sort=True):
                    wells = list(cg.well)
                    channels = list(range(len(wells)))
                    tips = [rack.get_item(w) for w in wells]
                    await lh.pick_up_tips(tips, use_channels=channels)
                    await lh.aspirate(
                        [src.get_well(w) for w in wells],
                        vols=[GUIDE_UL] * len(wells),
                        use_channels=channels,
                    )
                    await lh.dispense(
                        [dst.get_well(w) for w in wells],
                        vols=[GUIDE_UL] * len(wells),
                        use_channels=channels,
                    )
                    await lh.discard_tips(use_channels=channels)
                    record(
                        "transfer",
                        plate=int(p),
                        column=int(col),
                        source=src.name,
                        target=dst.name,
                        wells=wells,
                        contents=list(cg.content),
                        volume_ul=GUIDE_UL,
                        channels=channels,
                    )
                home = dst.parent
                await lh.move_plate(dst, reader)
                record("move_plate", plate=dst.name, to="plate_reader")
                if isinstance(reader_backend, PlateReaderChatterboxBackend):
                    reader_backend.dummy_luminescence = self._simulated_readings(
                        round_index, p, grp
                    )
                out = await reader.read_luminescence(focal_height=13.0, use_new_return_type=True)
                data = out[0]["data"]
                for w in grp.well:
                    r, c = ROWS.index(w[0]), int(w[1:]) - 1
                    value = data[r][c]
                    if value is None or not np.isfinite(value):
                        raise InputError(f"plate reader returned no value for plate {p} well {w}")
                    readings[(int(p), w)] = float(value)
                record("read_luminescence", plate=dst.name, focal_height_mm=13.0, wells=len(grp))
                await lh.move_plate(dst, home)
                record("move_plate", plate=dst.name, to=home.name)
            await lh.stop()
            await reader.stop()
            record("stop", devices=["liquid_handler", "plate_reader"])
        finally:
            set_tip_tracking(was_tips)
            set_volume_tracking(was_vol)
        return ops, readings

    def _simulated_readings(
        self, round_index: int, plate: int, grp: pd.DataFrame
    ) -> list[list[float | None]]:
        grid: list[list[float | None]] = [[None] * 12 for _ in range(8)]
        samples = grp[grp.kind == "sample"]
        values = self.assay.measure(round_index, list(samples.content))
        for w, v in zip(samples.well, values, strict=True):
            grid[ROWS.index(w[0])][int(w[1:]) - 1] = float(v)
        neg = grp[grp.kind == "negative_control"]
        ctrl = self.assay.control_readings(round_index * 1000 + int(plate), len(neg))
        for w, v in zip(neg.well, ctrl, strict=True):
            grid[ROWS.index(w[0])][int(w[1:]) - 1] = float(v)
        pos = grp[grp.kind == "positive_control"]
        if len(pos):
            pv = self.assay.measure(
                round_index, list(pos.content), wells=list(range(1, len(pos) + 1))
            )
            # the positive control is known to the experimenter, not a discovery
            del self.assay.queried[-len(pos) :]
            for w, v in zip(pos.well, pv, strict=True):
                grid[ROWS.index(w[0])][int(w[1:]) - 1] = float(v)
        return grid


def _plr_version() -> str:
    try:
        from importlib.metadata import version

        return version("pylabrobot")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"
