"""``equiserve``: submit screening campaigns, watch them, fetch their results.

::

    equiserve submit set.extxyz --model sevennet-0 --task relax --fmax 0.05 --watch
    equiserve status [ID]
    equiserve watch ID
    equiserve results ID -o out.extxyz      # or .parquet, .csv
    equiserve cancel ID
    equiserve models
    equiserve top                           # live throughput/latency per backend
    equiserve report ID -o report/          # PNG plots (services.cli.report)

The server address and API key come from ``--address`` / ``--api-key`` or the
environment (``EQUISERVE_ADDRESS``, default ``127.0.0.1:50051``;
``EQUISERVE_API_KEY``). Exit status: 0 on success, 1 when a watched campaign ends
other than completed, 2 when a call fails (the gRPC status is printed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from services.cli import report, top
from services.cli.campaigns import (
    ACTIVE,
    DEFAULT_CHUNK,
    STATE_NAMES,
    TASKS,
    CampaignClient,
    RelaxOptions,
)

logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:50051"
WATCH_INTERVAL_S = 1.0


def build_parser() -> argparse.ArgumentParser:
    """The command line: global connection flags and one sub-command each."""
    parser = argparse.ArgumentParser(
        prog="equiserve", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--address", default=os.environ.get("EQUISERVE_ADDRESS", DEFAULT_ADDRESS),
        help="gateway host:port (env EQUISERVE_ADDRESS; default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--api-key", default=os.environ.get("EQUISERVE_API_KEY", ""),
        help="API key (env EQUISERVE_API_KEY)",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="upload structures as a new campaign")
    submit.add_argument("files", nargs="*", type=Path, help="structure files (ASE)")
    submit.add_argument("--model", default="sevennet-0")
    submit.add_argument("--backend", default="", help="default: the model's")
    submit.add_argument("--task", choices=list(TASKS), default="single_point")
    submit.add_argument("--fmax", type=float, help="relax: force threshold, eV/Å")
    submit.add_argument("--max-steps", type=int, help="relax: FIRE steps at most")
    submit.add_argument("--relax-cell", action="store_true", help="relax the cell too")
    submit.add_argument("--pressure", type=float, default=0.0, help="eV/Å^3")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--name", default="", help="default: the first file's name")
    submit.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
    submit.add_argument(
        "--server-file", default="", help="read this file server-side instead"
    )
    submit.add_argument("--watch", action="store_true", help="then watch it")

    status = sub.add_parser("status", help="one campaign, or all of yours")
    status.add_argument("campaign", nargs="?")
    watch = sub.add_parser("watch", help="live progress until the campaign ends")
    watch.add_argument("campaign")
    watch.add_argument("--interval", type=float, default=WATCH_INTERVAL_S)
    results = sub.add_parser("results", help="write finished results to a file")
    results.add_argument("campaign")
    results.add_argument("-o", "--output", type=Path, required=True)
    cancel = sub.add_parser("cancel", help="stop a campaign")
    cancel.add_argument("campaign")
    sub.add_parser("models", help="the served models and their backends")
    top.add_parser(sub)
    report.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``equiserve`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    commands = {
        "submit": cmd_submit, "status": cmd_status, "watch": cmd_watch,
        "results": cmd_results, "cancel": cmd_cancel, "models": cmd_models,
        "top": top.run, "report": report.run,
    }  # fmt: skip
    try:
        return int(commands[args.command](args))
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _client(args: argparse.Namespace) -> CampaignClient:
    return CampaignClient(args.address, args.api_key)


def read_structures(files: Sequence[Path]) -> Iterator[Any]:
    """Every frame of every file (any format ASE reads), labelled ``file:k``."""
    from ase.io import iread

    for path in files:
        for k, atoms in enumerate(iread(str(path), index=":")):
            label = atoms.info.get("id") or f"{path.stem}:{k}"
            atoms.info["id"] = str(label)
            yield atoms


def cmd_submit(args: argparse.Namespace) -> int:
    """Create a campaign and upload its structures in chunks, with progress."""
    from tqdm import tqdm

    if not args.files and not args.server_file:
        raise ValueError("give structure files, or --server-file for a server-side one")
    relax = RelaxOptions(args.fmax, args.max_steps, args.relax_cell, args.pressure)
    name = args.name or (args.files[0].name if args.files else args.server_file)
    with _client(args) as client:
        campaign = client.submit(
            name, args.model, args.backend, args.task, relax, args.priority,
            source=args.server_file,
        )  # fmt: skip
        print(f"campaign {campaign.id}", file=sys.stderr)
        if args.files:
            structures = read_structures(args.files)
            with tqdm(desc="upload", unit="structure", file=sys.stderr) as bar:
                total = client.upload(
                    campaign.id, structures, args.chunk_size, bar.update
                )
            print(f"uploaded {total} structures", file=sys.stderr)
        print(campaign.id)
        if args.watch:
            return _watch(client, campaign.id, WATCH_INTERVAL_S)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print one campaign, or a table of the caller's campaigns."""
    with _client(args) as client:
        if args.campaign:
            c = client.get(args.campaign)
            for key, value in _describe(c).items():
                print(f"{key:>12}: {value}")
            return 0
        print(f"{'id':32}  {'state':9}  {'done':>9}  {'total':>9}  {'failed':>7}  name")
        for c in client.list():
            done = c.succeeded + c.failed
            print(
                f"{c.id:32}  {STATE_NAMES[c.state]:9}  {done:>9}  {c.total:>9}  "
                f"{c.failed:>7}  {c.name}"
            )
    return 0


def _describe(c: Any) -> dict[str, Any]:
    eta = f"{c.eta_seconds:.0f} s" if c.eta_seconds >= 0 else "unknown"
    return {
        "id": c.id, "name": c.name, "model": f"{c.model} {c.backend}".strip(),
        "state": STATE_NAMES[c.state], "total": c.total,
        "done": c.succeeded + c.failed, "succeeded": c.succeeded, "failed": c.failed,
        "running": c.running, "throughput": f"{c.throughput:.2f} structures/s",
        "eta": eta, "message": c.message,
    }  # fmt: skip


def cmd_watch(args: argparse.Namespace) -> int:
    """Live progress (done/total, structures/s, ETA) until the campaign ends."""
    with _client(args) as client:
        return _watch(client, args.campaign, args.interval)


def _watch(client: CampaignClient, campaign_id: str, interval: float) -> int:
    from tqdm import tqdm

    c = client.get(campaign_id)
    with tqdm(total=c.total, desc=c.name or campaign_id[:8], unit="structure",
              file=sys.stderr) as bar:  # fmt: skip
        while True:
            done = c.succeeded + c.failed
            bar.total = c.total
            bar.update(done - bar.n)
            eta = f"{c.eta_seconds:.0f}s" if c.eta_seconds >= 0 else "?"
            bar.set_postfix_str(
                f"{c.throughput:.2f}/s eta {eta} failed {c.failed} "
                f"{STATE_NAMES[c.state]}"
            )
            if c.state not in ACTIVE:
                break
            time.sleep(interval)
            c = client.get(campaign_id)
    print(f"{campaign_id} {STATE_NAMES[c.state]}: {c.succeeded} succeeded, "
          f"{c.failed} failed of {c.total}", file=sys.stderr)  # fmt: skip
    return 0 if STATE_NAMES[c.state] == "completed" else 1


def cmd_results(args: argparse.Namespace) -> int:
    """Fetch every finished result and write it as extxyz, Parquet or CSV."""
    from services.cli.output import output_format, write_results

    output_format(args.output)
    with _client(args) as client:
        table = client.fetch(args.campaign)
    rows = write_results(table, args.output)
    print(f"wrote {rows} results to {args.output}", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a campaign."""
    with _client(args) as client:
        c = client.cancel(args.campaign)
    print(f"{c.id} {STATE_NAMES[c.state]}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the served models with their backends."""
    from services.client import EquiserveClient

    with EquiserveClient(args.address, api_key=args.api_key) as client:
        reply = client.list_models()
    for m in reply.models:
        print(
            f"{m.name} {m.version}  cutoff {m.cutoff:g} Å  {len(m.elements)} elements"
        )
        for b in m.backends:
            flags = ("exact" if b.exact else "approximate") + (
                ", served" if b.served else ""
            )
            default = " (default)" if b.name == m.default_backend else ""
            print(f"    {b.name}{default}: {flags}  {b.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
