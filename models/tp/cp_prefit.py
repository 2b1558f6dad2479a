"""Pre-fit the CP factors of a model's convolutions: run at image build or warm-up.

``python -m models.tp.cp_prefit --model sevennet-0 --rank 16 --rank 32`` fills the
factor cache (``$EQUISERVE_CACHE_DIR/cp``) for every convolution of the model, so
that replicas built from the same image never fit at start.
"""

from __future__ import annotations

import argparse
import logging

from models.registry import get_spec
from models.tp.cp import DEFAULT_MAX_ITER, DEFAULT_TOL, prefit

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, fit what is missing, log the cache files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--rank", type=int, action="append", required=True)
    parser.add_argument("--tol", type=float, default=DEFAULT_TOL)
    parser.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    for path in prefit(
        get_spec(args.model).conv_specs, args.rank, args.tol, args.max_iter
    ):
        logger.info("cp factors ready: %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
