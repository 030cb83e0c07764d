"""``usam calibrate``: calibrate the IoU heads of a heads file on a store and add conformal lower bounds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.calibration import DEFAULT_FIT_FRACTION, DEFAULT_MAX_BINS, DEFAULT_MIN_BIN_ROWS, EVALUATION_ALPHAS


def add_calibrate(subparsers: Any) -> None:
    """Add the ``calibrate`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "calibrate",
        help="calibrate the IoU heads (isotonic) and fit conformal lower bounds on a calibration store",
        description="Fit, on a token store of another split than the heads' training data, a monotone (isotonic) "
        "calibration of every IoU head (on all its rows) and split-conformal lower bounds (an isotonic map on one "
        "part of the images, quantiles of true minus that map on the rest; marginal and per bin), and write a copy "
        "of the heads file with them in its metadata (weights unchanged). "
        "The predictor then reports per mask the calibrated IoU and a lower bound iou_lower with "
        "P(true IoU >= iou_lower) >= 1 - alpha; the guarantee is marginal (over masks), not per mask.",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="STORE", help="calibration token store")
    parser.add_argument(
        "--heads", type=Path, required=True, help="heads file (usam train) or the authors' released heads folder"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="HEADS2", help="heads file to write (not one of the inputs)"
    )
    parser.add_argument("--only", nargs="+", metavar="HEAD", help="calibrate only these IoU heads (default: all)")
    parser.add_argument(
        "--fit-fraction",
        type=float,
        default=DEFAULT_FIT_FRACTION,
        help="share of the store's images whose rows fit the bound's map; the other images' rows give the "
        "conformal quantiles (the calibration map uses all rows; default %(default)s)",
    )
    parser.add_argument(
        "--min-bin-rows",
        type=int,
        default=DEFAULT_MIN_BIN_ROWS,
        help="fewest rows of a bin of the per-bin (Mondrian) bound (default %(default)s)",
    )
    parser.add_argument(
        "--max-bins", type=int, default=DEFAULT_MAX_BINS, help="most bins of the per-bin bound (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split of the images (default %(default)s)")
    parser.set_defaults(handler=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from usam.evaluation.reliability import calibrate_heads_file

    path, calibration = calibrate_heads_file(
        args.data,
        args.heads,
        args.out,
        args.only,
        fit_fraction=args.fit_fraction,
        seed=args.seed,
        min_bin_rows=args.min_bin_rows,
        max_bins=args.max_bins,
    )
    index = {alpha: calibration.alphas.index(alpha) for alpha in EVALUATION_ALPHAS}
    for name, head in calibration.heads.items():
        rows = calibration.source["rows"][name]
        quantiles = ", ".join(
            f"alpha {alpha:g}: {head.marginal.quantiles[position]:+.3f}" for alpha, position in index.items()
        )
        print(
            f"{name}: map fitted on {rows['fit'] + rows['conformal']} rows, {head.mapping.knots_x.size} knots; "
            f"bound: map on {rows['fit']} rows, quantiles on {rows['conformal']} rows, {len(head.bins)} bin(s); "
            f"marginal quantile of true - bound map: {quantiles}"
        )
    print(f"wrote {path}")
    return 0
