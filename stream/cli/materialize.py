"""`sluice materialize`: `feast materialize` for the batch feature views of a Sluice repo."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        msg = f"not an ISO 8601 time: {text!r} (e.g. 2026-11-01 or 2026-11-01T12:00:00+00:00; no zone means UTC)"
        raise argparse.ArgumentTypeError(msg) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "materialize",
        help="load the batch feature views into the online store (what `feast materialize` cannot do on a repo with windowed stream views)",
        description=(
            "Materialize the repo's online batch feature views (every view without windowed aggregations) into the "
            "online store, as `feast materialize -v VIEW ...` would. Stream views with aggregations are left out: "
            "the worker computes them and writes them online."
        ),
    )
    p.add_argument("--repo", dest="repo_path", help="Feast feature repository (env SLUICE_REPO; default feature_repo)")
    p.add_argument(
        "-v", "--views", action="append", metavar="VIEW", help="materialize only this batch view (repeat for more; default: all)"
    )
    p.add_argument("start", nargs="?", type=_moment, metavar="START", help="start of the interval (ISO 8601; no zone means UTC)")
    p.add_argument("end", nargs="?", type=_moment, metavar="END", help="end of the interval")
    p.add_argument(
        "--incremental",
        type=_moment,
        metavar="END",
        help="instead of START END: each view from where it was last materialized (never materialized: from now minus its ttl, as Feast does) up to END",
    )
    p.set_defaults(func=run, parser=p)


def run(args) -> int:
    from stream.feast.materialize import materialize, materialize_incremental
    from stream.settings import Settings

    if args.incremental is not None:
        if args.start is not None:
            args.parser.error("give either START END or --incremental END, not both")
    elif args.start is None or args.end is None:
        args.parser.error("give START and END (or --incremental END)")
    repo = Settings.from_env(repo_path=args.repo_path).repo_path
    if args.incremental is not None:
        done = materialize_incremental(repo, args.incremental, args.views)
    else:
        done = materialize(repo, args.start, args.end, args.views)
    count = 0
    for result in done:
        print(result.line(), flush=True)
        count += 1
    if count == 0:
        print(f"feature repo {repo} has no online batch feature views: nothing to materialize")
    return 0
