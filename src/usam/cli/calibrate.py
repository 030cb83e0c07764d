"""``usam calibrate``: calibrate the IoU heads of a heads file on a store and add conformal lower bounds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.calibration import (
    DEFAULT_FIT_FRACTION,
    DEFAULT_MAP_FOLDS,
    DEFAULT_MAX_BINS,
    DEFAULT_MIN_BIN_ROWS,
    EVALUATION_ALPHAS,
    MapKind,
)


def add_calibrate(subparsers: Any) -> None:
    """Add the ``calibrate`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "calibrate",
        help="calibrate the IoU heads (monotone maps) and fit conformal lower bounds on a calibration store",
        description="Fit, on a token store of another split than the heads' training data, a monotone calibration "
        "map of every IoU head (on all its rows; identity, affine or isotonic, by default the kind that predicts "
        "held-out images best in a cross-validation) and split-conformal lower bounds (such a map on one part of "
        "the images, quantiles of true minus that map on the rest; marginal and per bin), and write a copy "
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
    parser.add_argument(
        "--map",
        choices=[str(kind) for kind in MapKind],
        default=str(MapKind.AUTO),
        help="kind of calibration map: auto (per head the kind with the least out-of-fold squared error), identity, "
        "affine or isotonic (default %(default)s)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=DEFAULT_MAP_FOLDS,
        help="folds over the images of the cross-validation of --map auto (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split of the images and of the folds (default %(default)s)"
    )
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
        map_kind=args.map,
        folds=args.folds,
    )
    index = {alpha: calibration.alphas.index(alpha) for alpha in EVALUATION_ALPHAS}
    for name, head in calibration.heads.items():
        rows = calibration.source["rows"][name]
        quantiles = ", ".join(
            f"alpha {alpha:g}: {head.marginal.quantiles[position]:+.3f}" for alpha, position in index.items()
        )
        chosen = ""
        if head.map_errors is not None:
            errors = ", ".join(f"{kind} {error:.5f}" for kind, error in head.map_errors.items())
            chosen = f" (out-of-fold squared error: {errors})"
        print(
            f"{name}: {head.map_kind} map{chosen} fitted on {rows['fit'] + rows['conformal']} rows, "
            f"{head.mapping.knots_x.size} knots; "
            f"bound: {head.bound_map_kind} map on {rows['fit']} rows, quantiles on {rows['conformal']} rows, "
            f"{len(head.bins)} bin(s); "
            f"marginal quantile of true - bound map: {quantiles}"
        )
    print(f"wrote {path}")
    return 0
