"""The one registry class (workbench.core.registry) and the five registries built on it.

Each registry must hold every entry whatever was imported first: each check runs in a fresh interpreter that
imports only the module defining the registry.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.core.errors import WorkbenchError
from workbench.core.registry import Registry, UnknownNameError

ROOT = Path(__file__).resolve().parents[1]


def test_register_get_names_and_one_line_unknown_name():
    reg: Registry[int] = Registry("colour")
    assert reg.register("red", 1) == 1
    reg.register("green", 2)

    @reg.register("blue")
    def blue():
        return 3

    assert reg.names() == ["red", "green", "blue"] and list(reg) == reg.names() and len(reg) == 3
    assert reg.get("green") == 2 and reg["red"] == 1 and reg.get("blue") is blue and "red" in reg
    with pytest.raises(UnknownNameError) as err:
        reg.get("purple")
    msg = str(err.value)
    assert msg == "unknown colour 'purple': choose one of red, green, blue" and "\n" not in msg
    assert isinstance(err.value, WorkbenchError) and isinstance(err.value, KeyError)


def test_duplicate_names_are_refused_unless_replaced():
    reg: Registry[int] = Registry("colour")
    reg.register("red", 1)
    reg.register("red", 1)  # the same entry again is harmless
    with pytest.raises(WorkbenchError, match="registered twice"):
        reg.register("red", 2)
    reg.register("red", 2, replace=True)
    assert reg.get("red") == 2


def test_lazy_entries_import_on_first_get_only():
    reg: Registry = Registry("thing")
    reg.register("dumps", lazy="json:dumps")
    reg.register("module", lazy="json")
    assert reg.names() == ["dumps", "module"] and reg.module_of("dumps") == "json"
    assert reg.get("dumps") is json.dumps and reg.get("module") is json


def test_a_registry_can_raise_its_callers_error_type():
    class UnknownColour(UnknownNameError):
        pass

    reg: Registry[int] = Registry("colour", error=UnknownColour)
    with pytest.raises(UnknownColour, match="choose one of \\(none\\)"):
        reg.get("red")


REGISTRIES = {
    # module imported alone -> (registry attribute, names it must hold, in order)
    "workbench.core.kernels": ("BACKENDS", ["cpu-flash", "cuda-flash", "cuda-efficient", "cuda-flex", "reference"]),
    "workbench.core.presets": ("PRESETS", ["smollm2-135m", "gemma3-270m", "digits-vlm", "effnet-smollm2-vqa"]),
    "workbench.report.census": ("SECTIONS", ["attention", "sinks", "retrieval", "head_types", "vision"]),
    "workbench.interventions.registry": ("INTERVENTIONS", ["head ablation", "act calibration", "var", "vhr",
                                                           "massive activation edit"]),
    "workbench.cli": ("COMMANDS", ["sinks", "retrieval", "circuits", "study", "probes", "dashboard", "vision",
                                   "reproduce"]),
}


@pytest.mark.parametrize("module", sorted(REGISTRIES))
def test_registry_is_complete_whatever_is_imported_first(module):
    """Import only the registry's module in a fresh interpreter: every entry is listed, and every lazy entry
    resolves (its module imports and has the attribute)."""
    attr, names = REGISTRIES[module]
    code = (f"import json, importlib; reg = getattr(importlib.import_module({module!r}), {attr!r}); "
            "names = reg.names(); [reg.get(n) for n in names]; print(json.dumps(names))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == names
