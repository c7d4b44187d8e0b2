"""Job launch forms derived from the typed job specs (``lifelm.service.specs``).

Nothing here lists a task's options by hand: every input comes from a field of the spec model
(its type, default, bounds, choices and description), so the form offers exactly what the API
accepts. Inputs that name project objects (``dataset``, ``reference``, ``datasets``, ``model``,
the names :func:`lifelm.service.specs.input_datasets` reads) become choices of this project's
datasets of the task's kind and its registered models.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from lifelm.service import specs


@dataclass(frozen=True)
class FormField:
    """One input of a launch form."""

    name: str  # the form name: "batch_size", "resources.cpus"
    label: str
    kind: str  # int | float | text | choice | dataset | datasets | model
    default: Any
    required: bool
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    dataset_kinds: tuple[str, ...] = ()  # the dataset kinds a dataset(s) input accepts

    @property
    def input_id(self) -> str:
        return "f-" + self.name.replace(".", "-").replace("_", "-")

    @property
    def value(self) -> str:
        if self.default is None:
            return ""
        if isinstance(self.default, list):
            return ""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


def spec_models() -> dict[str, type[BaseModel]]:
    """Task name -> spec model, read from the ``JobSpec`` union."""
    union = typing.get_args(specs.JobSpec)[0]
    out: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        task = typing.get_args(model.model_fields["task"].annotation)[0]
        out[str(task)] = model
    return {t: out[t] for t in specs.TASKS if t in out}


def task_summary(task: str) -> str:
    """The spec's docstring: which command the task runs and what it writes."""
    doc = spec_models()[task].__doc__ or ""
    return " ".join(doc.replace("``", "").split())


def _bounds(info: FieldInfo) -> tuple[float | None, float | None, bool]:
    lo = hi = None
    excl = False
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo, excl = m.gt, True
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi = m.lt
    return lo, hi, excl


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _help(
    info: FieldInfo, kind: str, lo: float | None, hi: float | None, excl: bool, cli_help: str = ""
) -> str:
    text = info.description or cli_help
    parts = [text.rstrip(".") + "." if text else ""]
    if kind == "list":
        parts.append("Several values separated by commas or new lines.")
    if kind in ("int", "float") and (lo is not None or hi is not None):
        lo_s = f"{'>' if excl else '≥'} {_num(lo)}" if lo is not None else ""
        hi_s = f"≤ {_num(hi)}" if hi is not None else ""
        parts.append(
            f"{'Whole number' if kind == 'int' else 'Number'} {lo_s}{', ' if lo_s and hi_s else ''}{hi_s}."
        )
    default = info.get_default(call_default_factory=True)
    if default not in (None, PydanticUndefined) and not isinstance(default, BaseModel | list):
        parts.append(f"Default {_num(default) if isinstance(default, float) else default}.")
    return " ".join(p for p in parts if p)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _field(
    name: str,
    info: FieldInfo,
    inputs: dict[str, tuple[str, ...]] | None = None,
    models: tuple[str, ...] = (),
    cli: dict[str, dict[str, Any]] | None = None,
) -> FormField:
    tp, optional = _unwrap_optional(info.annotation)
    lo, hi, excl = _bounds(info)
    default = info.get_default(call_default_factory=True)
    if default is PydanticUndefined:
        default = None
    required = info.is_required()
    choices: tuple[str, ...] = ()
    dataset_kinds = (inputs or {}).get(name, ())
    if dataset_kinds:
        kind = "datasets" if typing.get_origin(tp) is list else "dataset"
    elif name in models:
        kind = "model"
    elif typing.get_origin(tp) is Literal:
        kind, choices = "choice", tuple(str(c) for c in typing.get_args(tp))
    elif tp is bool:
        kind, choices = "choice", ("true", "false")
    elif tp is int:
        kind = "int"
    elif tp is float:
        kind = "float"
    elif typing.get_origin(tp) is list:
        kind = "list"
    else:
        kind = "text"
    # the CLI's own help text and choices for the option this field becomes
    option = (cli or {}).get("--" + name.split(".")[-1].replace("_", "-"), {})
    if kind == "text" and option.get("choices"):
        kind, choices = "choice", tuple(option["choices"])
    label = name.split(".")[-1].replace("_", " ")
    if optional:
        label += " (optional)"
    return FormField(
        name=name, label=label, kind=kind, default=default, required=required,
        help=_help(info, kind, lo, hi, excl, option.get("help", "")), choices=choices, minimum=lo, maximum=hi,
        exclusive_minimum=excl, dataset_kinds=dataset_kinds,
    )  # fmt: skip


def form_fields(
    task: str, cli_options: Callable[[tuple[str, ...]], dict[str, dict[str, Any]]] | None = None
) -> list[FormField]:
    """The inputs of ``task``'s launch form, in the spec's field order (resources last).

    ``cli_options`` (the server's ``Settings.cli_options``) gives the CLI's help texts and
    choices for the command the task runs; without it the spec's own descriptions are shown.
    """
    model = spec_models()[task]
    cli = cli_options(tuple(task.split("."))) if cli_options is not None else {}
    inputs: dict[str, tuple[str, ...]] = dict(getattr(model, "inputs", {}))
    models: tuple[str, ...] = tuple(getattr(model, "uses_models", ()))
    fields: list[FormField] = []
    nested: list[FormField] = []
    for name, info in model.model_fields.items():
        if name == "task":
            continue
        tp = info.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            for sub, sub_info in tp.model_fields.items():
                nested.append(_field(f"{name}.{sub}", sub_info))
            continue
        fields.append(_field(name, info, inputs, models, cli))
    return fields + nested


def spec_from_form(task: str, form: dict[str, list[str]]) -> dict[str, Any]:
    """The JSON spec a submitted form describes (the API validates it; empty optional inputs
    are left out so the spec's defaults apply)."""
    spec: dict[str, Any] = {"task": task}
    for f in form_fields(task):
        values = [v for v in form.get(f.name, []) if v != ""]
        if f.kind == "datasets":
            value: Any = values
            if not values:
                continue
        elif f.kind == "list":
            value = [x.strip() for v in values for x in v.replace(",", "\n").splitlines()]
            value = [x for x in value if x]
            if not value:
                continue
        elif not values:
            continue
        else:
            value = values[0].strip()
            if f.kind == "int":
                value = _number(value, int)
            elif f.kind == "float":
                value = _number(value, float)
        target = spec
        *parents, leaf = f.name.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return spec


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        return text  # the API's validation names the field and the problem


def cost(form: dict[str, Any], budget: dict[str, float]) -> dict[str, float | bool]:
    """What a job holds of the budget (cpus × max_hours, gpus × max_hours) and what is left."""
    res = form.get("resources", {}) if isinstance(form.get("resources"), dict) else {}
    defaults = specs.Resources()
    try:
        cpus = float(res.get("cpus", defaults.cpus))
        gpus = float(res.get("gpus", defaults.gpus))
        hours = float(res.get("max_hours", defaults.max_hours))
    except (TypeError, ValueError):
        cpus, gpus, hours = defaults.cpus, defaults.gpus, defaults.max_hours
    cpu_h, gpu_h = cpus * hours, gpus * hours
    return {
        "cpu_hours": cpu_h,
        "gpu_hours": gpu_h,
        "cpu_hours_left": budget["cpu_hours_left"],
        "gpu_hours_left": budget["gpu_hours_left"],
        "fits": cpu_h <= budget["cpu_hours_left"] + 1e-9
        and gpu_h <= budget["gpu_hours_left"] + 1e-9,
    }
