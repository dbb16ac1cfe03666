"""The ``chunkmill`` command line.

Exit codes: 0 every file ok (rejected records alone do not fail a run; see ``_errors``),
1 at least one file failed, 2 usage error (bad option, missing input), 4 output locked by
another run, 70 internal error, 74 the output cannot be written (disk full, read-only, no
permission), 130 interrupted. Output cut short by a closed pipe (``| head``) is not an error.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from pipeline import config
from pipeline.errors import ChunkmillError
from pipeline.options import (
    COMPRESSIONS,
    LAYOUTS,
    TABLE_FORMATS,
    IngestOptions,
    parse_storage_options,
)

log = logging.getLogger("chunkmill")


def _print(*values: object, file: TextIO | None = None) -> None:
    """``print``, except that a reader that went away (``chunkmill status OUT | head``) is
    not an error: the rest of the output is dropped and the exit code is the command's own."""
    stream = file or sys.stdout
    try:
        print(*values, file=stream, flush=True)
    except BrokenPipeError:
        # Point the descriptor at /dev/null so the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def _size(text: str) -> int:
    try:
        return config.parse_size(text)
    except ChunkmillError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _default(key: str) -> str:
    """A default from ``chunkmill.ingest.*`` (the shipped chunkmill.yaml, or the user's)."""
    return str(config.get(f"ingest.{key}"))


def _dialect(p: argparse.ArgumentParser) -> None:
    """CSV/TSV dialect options (DuckDB's read_csv names in brackets)."""
    p.add_argument("--delimiter", metavar="CHAR",
                   help="field delimiter (default: sniffed among , ; tab | from the head) "
                        "[delim]; e.g. --delimiter ';' or --delimiter $'\\t'")
    p.add_argument("--quote", metavar="CHAR",
                   help="quote character (default \"; '' turns quoting off) [quote]")
    p.add_argument("--escape", metavar="CHAR",
                   help="escape character, e.g. '\\' (default: none, quotes are escaped "
                        "by doubling) [escape]")
    p.add_argument("--null-values", metavar="TOKEN[,TOKEN]",
                   help="values read as NULL, replacing the default empty value [nullstr]")
    p.add_argument("--skip-rows", type=int, metavar="N",
                   help="lines to skip before the header [skip]")
    p.add_argument("--comment", metavar="CHAR",
                   help="skip lines starting with this character [comment]")
    p.add_argument("--null-padding", action="store_true", default=None,
                   help="records with missing trailing fields get NULLs instead of going "
                        "to _errors [null_padding]")


def _no_default(key: str) -> str:
    return "in chunkmill.yaml"


def _common(p: argparse.ArgumentParser, default: Callable[[str], str] = _default) -> None:
    p.add_argument("paths", nargs="+", metavar="INPUT",
                   help="files, directories (recursive), globs or fsspec URLs")
    p.add_argument("--table", help="table name for text inputs (default: input's name)")
    p.add_argument("--format", help="force a reader (csv, tsv, jsonl, ...) instead of sniffing")
    p.add_argument("--no-header", dest="header", action="store_false",
                   help="CSV/TSV files have no header row (columns are f0, f1, ...)")
    _dialect(p)
    p.add_argument("--chunk-size", type=_size,
                   help="bytes per chunk task, e.g. 64MB, 256MiB (default "
                        f"{default('chunk-size')}; {default('partitioned-chunk-size')} with "
                        "--partition-by)")
    p.add_argument("--small-file-size", type=_size,
                   help="files up to this size are read many to a task and share output "
                        f"fragments (default {default('small-file-size')}; 0 turns bundling "
                        "off)")
    p.add_argument("--max-record-bytes", type=_size,
                   help="longest record accepted when seeking boundaries (default "
                        f"{default('max-record-bytes')})")
    p.add_argument("--partition-by", default="", metavar="COL[,COL]",
                   help="hive-partition the output by these columns")
    p.add_argument("--follow-symlinks", action="store_true", default=None,
                   help="also read files whose symbolic links lead outside the input "
                        "directories (default: such links are refused and reported)")
    p.add_argument("--max-partitions", type=int, metavar="N",
                   help="stop (exit 2) before --partition-by writes more than N partitions "
                        f"per table in one run (default {default('max-partitions')}; 0: no "
                        "limit)")
    p.add_argument("--schema", action="append", metavar="COL=TYPE[,COL=TYPE]",
                   help="declare column types of CSV/TSV/JSON-lines tables (repeatable): "
                        "varchar, bigint, integer, double, boolean, date, timestamp, "
                        "timestamptz, decimal(P,S), blob, ... (DuckDB's names)")
    p.add_argument("--allow-missing-columns", action="store_true", default=None,
                   help="a --schema column missing from a file is NULL there (default: a "
                        "usage error naming the file)")
    p.add_argument("--columns", action="append", metavar="COL[,COL]",
                   help="keep only these columns of CSV/TSV/JSON-lines tables (repeatable); "
                        "the others are not converted")
    p.add_argument("--encoding", metavar="NAME",
                   help="character encoding of CSV/TSV/JSON-lines inputs, transcoded to "
                        "UTF-8: latin-1, cp1252, utf-16, ... (default: UTF-8; a file that "
                        "is not UTF-8 fails and names this option)")
    p.add_argument("--derive", action="append", metavar="NAME=FUNC(COL)",
                   help="add a column computed per row (repeatable): date, year, month, day, "
                        "hour of a timestamp/date, or bucket(COL, N); e.g. --derive "
                        "day=date(ts) --partition-by day")
    _storage(p)
    _verbosity(p)


def _verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="count", default=0)


def _storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-option", dest="storage_option", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="fsspec storage option for inputs and OUT (repeatable), e.g. "
                        "endpoint_url=http://127.0.0.1:9000; the S3 endpoint also comes from "
                        "AWS_ENDPOINT_URL")


class _Version(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("chunkmill")
        except PackageNotFoundError:  # run from a checkout that was never installed
            text = "unknown (not installed)"
        _print(f"chunkmill {text}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; for ``command`` status or report, without the defaults in the help of
    ingest and plan (reading them loads Dask's config, which those commands never show)."""
    default = _no_default if command in ("status", "report") else _default
    parser = argparse.ArgumentParser(
        prog="chunkmill", description="Very large files -> hive-partitioned Parquet on Dask.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="ingest inputs into OUT")
    _common(ingest, default)
    ingest.add_argument("--out", required=True, help="output directory or fsspec URL")
    ingest.add_argument("--compression", choices=COMPRESSIONS,
                        help=f"Parquet codec (default {default('compression')})")
    ingest.add_argument("--table-format", choices=TABLE_FORMATS,
                        help="hive: Parquet fragments in hive directories; delta: Delta Lake "
                             "tables, each file committed in one transaction (default "
                             f"{default('table-format')})")
    ingest.add_argument("--scheduler", metavar="ADDR",
                        help="use a running Dask scheduler (tcp://host:8786) instead of an "
                             "embedded cluster")
    ingest.add_argument("--workers", type=int, help="embedded cluster: worker processes "
                        "(default: one per core)")
    ingest.add_argument("--threads-per-worker", type=int,
                        help="embedded cluster: threads per worker (default: 1 per process; "
                             "one per core with --layout threads)")
    ingest.add_argument("--layout", choices=LAYOUTS,
                        help="embedded cluster: worker processes, or threads of this process; "
                             "auto (default) picks threads when every input is text and "
                             "--workers/--threads-per-worker are not given, and runs a small "
                             "text job (--small-job-size) in this process without a cluster")
    ingest.add_argument("--small-job-size", type=_size,
                        help="--layout auto: a text job reading at most this many bytes runs "
                             "in this process without starting a Dask cluster (default "
                             f"{default('small-job-size')}; 0: always start the cluster)")
    ingest.add_argument("--memory-limit",
                        help="embedded cluster: memory per worker, e.g. 2GB (default "
                             f"{default('memory-limit')})")
    ingest.add_argument("--dashboard", action="store_true",
                        help="start the Dask dashboard (on 127.0.0.1:8787) and print its "
                             "address; without it no HTTP server is started")
    ingest.add_argument("--dashboard-address", metavar="HOST:PORT",
                        help="start the dashboard on this address (e.g. 0.0.0.0:8787 to "
                             "serve it to other machines)")
    ingest.add_argument("--retries", type=int,
                        help="retries of a chunk after a transient failure or a lost worker "
                             f"(default {default('retries')})")
    ingest.add_argument("--force", action="store_true",
                        help="re-ingest files even when unchanged since the last run")
    ingest.add_argument("--prune", action="store_true",
                        help="forget files ingested before that are no longer among the "
                             "inputs (their rows are deleted from OUT)")
    ingest.add_argument("--chunk-timeout", type=float, metavar="SECONDS",
                        help="give up on a chunk that runs longer (an _errors row)")
    ingest.add_argument("--json", action="store_true", help="print the run report as JSON")
    ingest.add_argument("--no-progress", dest="progress", action="store_false", default=None)

    plan = sub.add_parser("plan", help="dry run: files, formats, chunks, bytes, tables; "
                                       "writes nothing")
    _common(plan, default)
    plan.add_argument("--out", help="plan an ingest into this output directory: it is not "
                                    "read as input, and files it holds keep their tables")
    plan.add_argument("--force", action="store_true", default=None,
                      help="group files into tables as on a first run (as ingest --force)")
    plan.add_argument("--json", action="store_true")

    st = sub.add_parser("status", help="done / pending / failed files of an output directory")
    st.add_argument("out", help="the --out directory of earlier runs")
    st.add_argument("--json", action="store_true")
    _storage(st)
    _verbosity(st)

    rep = sub.add_parser("report", help="a run's summary; --html writes its plots as one page")
    rep.add_argument("out", metavar="OUT", help="the --out directory of the run")
    rep.add_argument("--run", dest="run_id", metavar="RUN_ID",
                     help="default: the latest run that did work (not an unchanged re-run)")
    rep.add_argument("--list", action="store_true", help="list the runs of OUT")
    rep.add_argument("--html", metavar="FILE", help="standalone HTML page (works offline)")
    rep.add_argument("--json", action="store_true")
    _storage(rep)
    _verbosity(rep)

    demo = sub.add_parser("demo", help="write sample data and ingest it on an embedded cluster")
    demo.add_argument("--dir", default="sample_data", help="where to write the sample inputs")
    demo.add_argument("--out", default="lake", help="output directory (default: lake)")
    demo.add_argument("--rows", type=int, default=200_000)
    _verbosity(demo)
    return parser


def _report(args: argparse.Namespace) -> int:
    import json

    from pipeline.report.plots import format_runs, list_runs, load_errors, load_report, save_html
    from pipeline.report.run_report import RunReport

    storage = parse_storage_options(args.storage_option)
    if args.list:
        runs = list_runs(args.out, storage)
        _print(json.dumps(runs, indent=2, default=str) if args.json else format_runs(runs))
        return 0
    data = load_report(args.out, args.run_id, storage)
    if data.get("skipped_runs"):
        _print(f"chunkmill: run {data['run_id']}, the latest that did work "
               f"({len(data['skipped_runs'])} later run(s) found every file unchanged; "
               "--list shows every run)", file=sys.stderr)
    if args.html:
        errors = load_errors(args.out, str(data.get("run_id")), storage)
        _print(f"chunkmill: wrote {save_html(data, args.html, errors)}", file=sys.stderr)
    if args.json:
        _print(json.dumps(data, indent=2, default=str))
    else:
        report = RunReport.from_dict(data)
        _print(report)
        workers = sorted({r.worker for r in report.chunk_records})
        if report.chunk_records:
            slowest = max(report.chunk_records, key=lambda r: r.finished - r.started)
            _print(f"  {len(report.chunk_records)} chunk task(s) on {len(workers)} worker(s); "
                  f"slowest {slowest.finished - slowest.started:.2f}s ({slowest.chunk_id})")
        if report.pressure_events:
            _print(f"  {len(report.pressure_events)} memory pressure change(s); "
                  f"{report.spilled_bytes / 1e6:,.1f} MB spilled")
    return int(data.get("exit_code", 0) or 0)


def _demo(args: argparse.Namespace) -> int:
    from pipeline.demo import make_sample
    from pipeline.runner import Runner

    files = make_sample(args.dir, rows=args.rows)
    _print(f"chunkmill: wrote {len(files)} sample files under {args.dir}/")
    code = 0
    # The logs run last: it is the one the README queries and `chunkmill report` shows.
    for inputs, extra in (([f"{args.dir}/events.jsonl", f"{args.dir}/users.tsv"], {}),
                          ([f"{args.dir}/logs"], {"partition_by": ("event",)})):
        options = IngestOptions.from_kwargs(args.out, chunk_size=4 << 20, **extra)
        report = Runner(inputs, options).run()
        _print(report)
        code = max(code, report.exit_code)
    _print(f"\nquery it: python3 -c \"import duckdb; print(duckdb.sql(\\\"select event, "
           f"count(*) from read_parquet('{args.out}/logs/**/*.parquet', "
           f"hive_partitioning=true) group by event\\\"))\"")
    return code


_NOT_OPTIONS = {"command", "paths", "json", "verbose", "quiet", "out", "storage_option"}


def _options(args: argparse.Namespace) -> IngestOptions:
    given = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS and v is not None}
    if args.storage_option:
        given["storage_options"] = parse_storage_options(args.storage_option)
    return IngestOptions.from_kwargs(getattr(args, "out", None) or "out", **given)


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING + 10 * (args.quiet - args.verbose)
    logging.basicConfig(level=max(logging.DEBUG, level), format="%(message)s")
    # Dask's own errors (a heartbeat that fails while the cluster shuts down, a worker
    # restarted) come with tracebacks and are not the user's business: chunkmill reports what
    # they cost (failed chunks, _errors rows). -v shows them.
    quiet_deps = logging.CRITICAL if args.verbose < 1 else max(logging.DEBUG, level)
    noisy = ("distributed", "bokeh", "tornado", "asyncio", "fsspec")
    # Children too: distributed's logging config gives some their own level
    # (tornado.application: error), which would let a Ctrl-C race inside distributed.sync
    # print tornado's "Exception in callback" traceback.
    named = [name for name in logging.root.manager.loggerDict
             if name.split(".", 1)[0] in noisy]
    for name in (*noisy, *named):
        logging.getLogger(name).setLevel(quiet_deps)
    if args.command not in ("ingest", "demo", "plan"):
        return  # status and report never import Dask (it costs start-up)
    # distributed sets its loggers' levels from Dask's "logging" config when it is imported,
    # which only a run that starts a cluster does (a small job never does): its own
    # defaults name these children, so give each the same level.
    own = ("distributed.client", "distributed.gc", "tornado.application")
    levels = dict.fromkeys((*noisy, *own, *named), quiet_deps)
    config.dask_settings_before_distributed({"logging": levels})


def _stop_on_ctrl_c() -> None:
    """First Ctrl-C: say so at once, then stop cleanly (KeyboardInterrupt unwinds the run,
    which keeps what is staged); a second one quits on the spot, without a traceback."""

    def second(signum: int, frame: object) -> None:
        os.write(2, b"\nchunkmill: stopped; run the same command again to resume\n")
        os._exit(130)

    def first(signum: int, frame: object) -> None:
        os.write(2, b"\nchunkmill: stopping after the running chunks' current block "
                    b"(Ctrl-C again to quit now)\n")
        signal.signal(signal.SIGINT, second)
        scheduler = sys.modules.get("pipeline.execution.scheduler")  # imported if running
        if scheduler is None or not scheduler.stop_at_next_round():
            raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, first)


def run(argv: Sequence[str] | None = None) -> int:
    if getattr(sys.stdout, "errors", None) == "strict":
        # File names are bytes: one that is not UTF-8 is printed as its bytes, as ls does.
        sys.stdout.reconfigure(errors="surrogateescape")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    _configure_logging(args)
    if args.command in ("ingest", "demo"):
        _stop_on_ctrl_c()
    interrupted = False
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "report":
            return _report(args)
        if args.command == "status":
            import json

            from pipeline.report.status import format_status, status

            info = status(args.out, parse_storage_options(args.storage_option))
            _print(json.dumps(info, indent=2, default=str) if args.json else format_status(info))
            return 0 if info["last_run_finished"] and not info["totals"].get("failed") else 1
        options = _options(args)
        if args.command == "plan":
            from pipeline.planning.plan import plan_into

            plan = plan_into(args.paths, options, args.out)
            _print(plan.to_json() if args.json else repr(plan))
            return 1 if any(f.error for f in plan.files) else 0
        from pipeline.runner import Runner

        report = Runner(args.paths, options).run()
        if args.json:
            _print(report.to_json())
        elif args.quiet < 1 or not report.ok:
            _print(report, file=sys.stderr if not report.ok else sys.stdout)
        return report.exit_code
    except ChunkmillError as exc:
        _print(f"chunkmill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        interrupted = True
        _print("chunkmill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        _print(f"chunkmill: internal error: {type(exc).__name__}: {exc} (run with -v for the "
              "traceback)", file=sys.stderr)
        return 70
    finally:
        # After an interrupt the process is on its way out: a Ctrl-C pressed while it shuts
        # down must not turn into a KeyboardInterrupt traceback or a death by SIGINT.
        if threading.current_thread() is threading.main_thread() and not interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _arrow_has_jemalloc() -> bool:
    """Whether the installed pyarrow was built with jemalloc, from its build header: asking
    pyarrow would import it, and naming a pool it lacks prints a warning in every process."""
    import importlib.util

    spec = importlib.util.find_spec("pyarrow")
    for root in (spec.submodule_search_locations or []) if spec else []:
        try:
            with open(os.path.join(root, "include", "arrow", "util", "config.h")) as f:
                return "#define ARROW_JEMALLOC\n" in f.read()
        except OSError:
            continue
    return False


def main() -> None:
    if (sys.platform.startswith("linux") and "pyarrow" not in sys.modules
            and "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and _arrow_has_jemalloc()):
        # Arrow's allocator is chosen once, at its import: jemalloc returns freed pages, where
        # mimalloc keeps them per thread (the pressure plugin's reason; its switch reaches
        # only what Python asks pyarrow to allocate). 10,000 small files peaked 35-70 MiB lower.
        # A pool the user named wins.
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
        # After Arrow's 1 s decay, jemalloc hands freed pages back lazily (MADV_FREE, still
        # counted in RSS until the kernel takes them); at once (MADV_DONTNEED) instead, the
        # 2 GB CSV ran as fast or faster with less memory (3 pairs: 6.1-6.6 -> 5.8-6.0 s,
        # 370-375 -> 355-365 MiB). A jemalloc setting of the user's own wins.
        os.environ.setdefault("JE_ARROW_MALLOC_CONF", "muzzy_decay_ms:0")
    code = run()
    if code == 130 and threading.current_thread() is threading.main_thread():
        # Interpreter shutdown resets Python-level handlers to the default, so a Ctrl-C pressed
        # while an interrupted run exits would kill it by SIGINT; an ignored one is left alone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # After an interrupt, threads still finishing a chunk are not waited for: what they make
    # is staged but not journaled, so the next run discards it. Waiting could last forever:
    # a CI run hung after "interrupted" (one Ctrl-C, a small job), a worker thread never
    # ending, most likely on a future's lock that the KeyboardInterrupt raised inside
    # `threading.Condition.__enter__` (Python code, after the lock is taken) left held.
    if _nothing_left_running(threads=code != 130):
        _leave(code)
    sys.exit(code)


def _leave(code: int) -> None:
    """Exit without interpreter shutdown, which frees every object one at a time: 0.07-0.1 s
    of a 0.6 s small job, 0.15-0.3 s after a big one. Everything the run wrote is closed and
    fsynced by now; the atexit handlers (logging's flush, distributed's) still run."""
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None:  # not CPython
        sys.exit(code)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # no descriptor at start-up (a daemon's closed stdout)
                stream.flush()
        except (OSError, ValueError):  # a reader that went away: the exit code stands
            pass
    os._exit(code)


def _nothing_left_running(threads: bool = True) -> bool:
    """True when skipping interpreter shutdown loses nothing: no child process (a worker of
    an embedded cluster that did not stop) and, with ``threads``, no other non-daemon thread
    is alive."""
    if "multiprocessing" in sys.modules and sys.modules["multiprocessing"].active_children():
        return False
    return not threads or all(t.daemon or t is threading.current_thread()
                              for t in threading.enumerate())


if __name__ == "__main__":
    main()
