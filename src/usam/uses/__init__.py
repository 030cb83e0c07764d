"""Uses of UncertainSAM's estimates in applications.

Modules:
    next_click: where to click next (strategies that propose a click's location, and the baselines).
    simulated_user: a simulated user who clicks where a strategy proposes; NoC, mIoU after k clicks, ask only when
        needed.
    click_report: the JSON, Markdown table and figure of a simulated-user run.
"""

from usam.uses.click_report import write_click_report
from usam.uses.next_click import ClickStrategy, MaskChoice, NextClick, propose_click, propose_next_click
from usam.uses.simulated_user import (
    ObjectRun,
    SimulationOptions,
    ask_when_needed,
    number_of_clicks,
    run_click_simulation,
    simulate_image,
    summarize_runs,
)

__all__ = [
    "ClickStrategy",
    "MaskChoice",
    "NextClick",
    "ObjectRun",
    "SimulationOptions",
    "ask_when_needed",
    "number_of_clicks",
    "propose_click",
    "propose_next_click",
    "run_click_simulation",
    "simulate_image",
    "summarize_runs",
    "write_click_report",
]
