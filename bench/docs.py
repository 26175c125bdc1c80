"""The README's result tables, ``docs/benchmarks.md`` and ``docs/scaling.md``'s, generated from the
benchmark JSON in ``docs/results/`` so a figure in the docs can never drift from the run that produced it.

    python -m bench.docs            # rewrite the generated blocks of README.md and docs/*.md
    python -m bench.docs --check    # exit 1 if one is out of date (a test runs this)

A generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``; each one
ends with the command and the date of the run it shows. To publish a new run, copy its JSON to
``docs/results/`` (``recall.json``, ``speed.json``, ``reliability.json``, ``merge.json``, ``live.json``, ``latency.json``, ``recall-scifact.json``, ``train-step.json``, ``dev-sweep.json``, ``dev-sweep-unsupervised.json``, the two
``dpr eval`` reports ``eval-scifact-sentences.json`` and ``eval-scifact-whole.json``) and run this.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.docs_sentences import sentence_index_block, sentence_index_line

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
README = REPO / "README.md"
BENCHMARKS = REPO / "docs" / "benchmarks.md"
SCALING = REPO / "docs" / "scaling.md"
SERVING = REPO / "docs" / "serving.md"
DOCUMENTS = REPO / "docs" / "documents.md"
TRAINING = REPO / "docs" / "training.md"
_BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _run_line(report: dict[str, Any], default_command: str) -> str:
    from bench.speed import cpu_label

    command = report.get("command") or default_command
    when = str(report.get("created_at") or report.get("date") or report.get("started") or "")[:10]
    machine = report.get("machine")
    # Sessions run on different CPUs (speeds differ several-fold): a figure names the one it ran on.
    where = f", {machine.get('cores')} cores of {cpu_label(machine)}" if machine else ""
    return f"Command: `{command}`{f' (run {when}{where})' if when else ''}; JSON: `docs/results/`."


# ----------------------------------------------------------------------------- blocks


def _short(text: str) -> str:
    """A description's first clause (the full text is in ``dpr serve --help``)."""
    for stop in (" (", "; ", ": "):
        if stop in text:
            text = text.split(stop, 1)[0]
    return text


def settings_table() -> str:
    """Every ``DPR_*`` setting of the server, from :class:`server.settings.Settings` itself."""
    from server.settings import Settings

    lines = ["| variable | flag | default | what |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flag = "-" if not extra.get("cli", True) else extra.get("flag") or "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None or default == [] else str(default).lower() if isinstance(default, bool) \
            else str(default)
        lines.append(f"| `DPR_{name.upper()}` | `{flag}` | {shown} | {_short(field.description or '')} |")
    return "\n".join(lines) + "\n"


def recall_block(report: dict[str, Any] | None, queries: str = "questions", selection: bool = False) -> str:
    if report is None:
        return "No recall run published yet.\n"
    data = report["data"]
    chosen = report["fusion"]["chosen"]
    fusion = (f"interp, dense weight {chosen['alpha_dense']:.2f}" if chosen["method"] == "interp" else "RRF")
    return (f"{data['test_queries']} held-out {queries}, {data['kb_passages']} passages; values in %, 95% bootstrap "
            f"interval over queries; the tuned hybrid's fusion ({fusion}) chosen on the {report['fusion']['n_queries']} "
            f"training {queries} only" + _default_hybrid_note(report) + f".\n\n{report['table'].strip()}\n\n"
            + (_selection_table(report) if selection else "")
            + _run_line(report, "dpr bench recall") + "\n")


def _default_hybrid_note(report: dict[str, Any]) -> str:
    row = next((r for r in report["rows"] if r.get("no_labels")), None)
    return "" if row is None else (f"; {row['name']} is what `dpr serve` searches by default (hybrid) "
                                   "over the untrained model, tuned on nothing here")


def _selection_table(report: dict[str, Any]) -> str:
    """Each trained row's validation metric by epoch (epoch 0: the starting model): what picked its
    checkpoint, and what a recipe is chosen on (never the held-out table above)."""
    training = report.get("training") or {}
    if not training:
        return ""
    beir = "split" in (report.get("data") or {})
    lines = ["| trained row | validation metric | by epoch (0: start) | kept | train time |", "|---|---|---|---|---|"]
    for name, t in training.items():
        epochs = t.get("epochs") or []
        config = t.get("config") or {}
        metric = config.get("select_metric", "auto")
        if metric == "auto":  # TrainConfig's rule: nDCG@10 on a BEIR folder, else Recall@val_k
            metric = "ndcg@10" if beir else f"recall@{config.get('val_k', 5)}"
        if not epochs or metric not in epochs[0]["val_metrics"]:
            continue
        values = " → ".join(f"{100 * e['val_metrics'][metric]:.1f}" for e in epochs)
        seconds = t.get("total_seconds")
        time = "-" if seconds is None else f"{seconds / 60:.1f} min" + (" (earlier run)" if t.get("reused") else "")
        lines.append(f"| {name} | {metric} | {values} | epoch {t.get('best_epoch')} | {time} |")
    where = ("the dev split" if beir else f"{Path(str((report.get('data') or {}).get('val', 'validation'))).name}, "
             "the held-out set itself")
    return (f"Checkpoint selection, on {where} (an unsupervised row: on held-out pseudo queries):\n\n"
            + "\n".join(lines) + "\n\n")


def peers_block(report: dict[str, Any] | None) -> str:
    """dpr beside txtai and sentence-transformers, from one `dpr bench speed --peers` run."""
    if report is None or "peers" not in report:
        return "No peers run published yet.\n"
    from bench.speed_report import peer_rows

    p = report["peers"]
    lines = ["| same data and model | dpr | peer | peer's | dpr ahead |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in peer_rows(p)]
    runtime = " ".join(report.get("options", {}).get("serve_args") or []) or _serve_defaults()
    return ("\n".join(lines) + f"\n\nDense, k=10; dpr: {runtime}, query cache off. "
            + _run_line(report, "dpr bench speed --peers") + "\n")


def _serve_defaults() -> str:
    """`dpr serve`'s query encoder when no flag is given, as its settings say (one source of truth)."""
    from server.settings import Settings

    fields = Settings.model_fields
    return f"serve defaults (--runtime {fields['runtime'].default} --quantize {fields['quantize'].default})"


def recall_summary(report: dict[str, Any] | None, queries: str = "claims", metric: str = "ndcg@10",
                   full: str = "docs/training.md#results-on-scifact", only: tuple[str, ...] | None = None) -> str:
    """The README's short form of a recall run: ``metric`` per row, its paired difference from the
    zero-shot row, and what training it cost (the full table: ``full``). ``only``: the rows to show
    (``"hybrid"`` stands for the hybrid row, whatever its dense row); None: all."""
    if report is None:
        return "No recall run published yet.\n"
    from eval.compare import p_clause

    label = metric.replace("ndcg@", "nDCG@").replace("recall@", "R@")
    lines = [f"| system | {label} (95% CI) | vs zero-shot, paired | training: time, peak RSS |", "|---|---|---|---|"]
    shown = [row for row in report["rows"]
             if only is None or row["name"] in only or (row["kind"] == "hybrid" and "hybrid" in only)]
    for row in shown:
        m = row["metrics"][metric]
        vs = (row.get("vs") or {}).get("zero-shot", {}).get(metric)
        delta = "-" if vs is None else f"{100 * vs['diff']:+.1f} ({p_clause(vs['p'])})"
        cost = row.get("cost") or {}
        train = ("-" if cost.get("train_seconds") is None
                 else f"{cost['train_seconds'] / 60:.1f} min"
                 + ("" if cost.get("train_peak_rss_mb") is None else f", {cost['train_peak_rss_mb'] / 1024:.1f} GB")
                 + (" (earlier run)" if row.get("training_reused") else ""))
        lines.append(f"| {row['name']} | {100 * m['value']:.1f} ({100 * m['ci_low']:.1f}-{100 * m['ci_high']:.1f}) | "
                     f"{delta} | {train} |")
    data = report["data"]
    run = _run_line(report, "dpr bench recall")
    if len(run) > 300:  # a command with several --recipe JSONs: it is printed in full beside the full table
        run = f"The command (run {str(report.get('created_at', ''))[:10]}) is beside the full table."
    more = len(report["rows"]) - len(shown)
    rows_note = f"{more} more rows, recipes" if more else "recipes"
    return ("\n".join(lines) + f"\n\n{data['test_queries']} held-out {queries}, {data['kb_passages']} passages; "
            f"{rows_note} and the full table: [{full.split('#')[0]}]({full}). " + run + "\n")


def _split_rows(report: dict[str, Any], only: tuple[str, ...] | None = None) -> list[str]:
    from bench.speed import cpu_label

    lines = ["| server setup | CPU | client p50 / p95 ms | queue | encode | search | fetch | handler | outside it |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        if only is not None and run["label"] not in only:
            continue
        label, c, srv = run["label"], run["client_ms"], run["server_ms"]
        phase = {name: srv.get(name, {}).get("p50") for name in ("queue", "encode", "search", "fetch", "total")}
        outside = round(c["p50"] - phase["total"], 2) if phase["total"] is not None else None
        cells = [label, cpu_label(run.get("machine") or {}), f"{c['p50']} / {c['p95']}",
                 *(phase[n] for n in ("queue", "encode", "search", "fetch", "total")), outside]
        lines.append("| " + " | ".join("-" if v is None else str(v) for v in cells) + " |")
    return lines


def latency_block(report: dict[str, Any] | None, only: tuple[str, ...] | None = None) -> str:
    """Where one query's time goes over HTTP, per server setup (`dpr bench latency --json --label`);
    ``only``: the labels of the runs to show (None: all)."""
    if not report or not report.get("runs"):
        return "No latency split published yet.\n"
    first = report["runs"][0]
    return ("\n".join(_split_rows(report, only)) + f"\n\n{first['n']} questions one at a time, k={first['k']}, "
            f"{first['mode']}, cache off; p50 ms of `Server-Timing` phases; outside = client minus handler. "
            "Command: `dpr bench latency --json docs/results/latency.json --label NAME`, each row's flags and "
            "load in [benchmarks](docs/benchmarks.md#latency-split).\n")


def latency_full(report: dict[str, Any] | None) -> str:
    """The same table with each run's command, machine and load (docs/benchmarks.md)."""
    if not report or not report.get("runs"):
        return "No latency split published yet.\n"
    first = report["runs"][0]
    runs = [f"- {run['label']}: `{run['command']}` (run {run['created_at'][:10]}, load average "
            f"{run['machine'].get('load_avg_at_start')} at its start)" for run in report["runs"]]
    return ("\n".join(_split_rows(report)) + f"\n\n{first['n']} nq_oracle questions one at a time over one "
            f"keep-alive connection, k={first['k']}, {first['mode']}, query cache off, each setup its own `dpr serve`. "
            "Server phases are p50 of the `Server-Timing` header; \"outside it\" is the client's p50 minus the "
            "handler's (HTTP parsing, routing, dependencies, JSON, the client itself). "
            f"{first['machine'].get('cores')} cores; the CPU column names each run's machine and its fastest matrix "
            "unit (AMX: bf16 and int8 tiles; VNNI: int8 dot products), since sessions run on different ones and "
            "only rows of one CPU compare.\n\n" + "\n".join(runs) + "\n")


def reliability_block(report: dict[str, Any] | None) -> str:
    """One line per run: every check, what it tried, and whether it held (the table is in docs/benchmarks.md)."""
    if report is None:
        return "No reliability run published yet.\n"
    from reliability.report import summary_row

    rows = {name: result.get("summary") or summary_row(name, result) for name, result in report["results"].items()}
    failed = [name for name, row in rows.items() if not row["ok"]]
    fives = sum(row["5xx"] or 0 for row in rows.values())
    crashes = sum(row["server_crashes"] or 0 for row in rows.values())
    checks = ", ".join(f"{name} ({row['tried']:,})" if row["tried"] and row["tried"] > 1 else name
                       for name, row in rows.items())
    verdict = f"all {len(rows)} checks ok" if not failed else f"FAILED: {', '.join(failed)}"
    command = "make reliability (= dpr bench reliability)"
    return (f"{verdict}, {fives} responses 5xx, {crashes} server crashes; inputs tried: {checks}. "
            + _run_line({**report, "command": command}, command) + "\n")


def reliability_table(report: dict[str, Any] | None) -> str:
    if report is None:
        return "No reliability run published yet.\n"
    from reliability.report import summary_row

    lines = ["| check | inputs tried | 5xx | server crashes | server RSS MB | result |", "|---|---|---|---|---|---|"]
    for name, result in report["results"].items():
        row = result.get("summary") or summary_row(name, result)
        cells = ["-" if row[k] is None else str(row[k]) for k in ("tried", "5xx", "server_crashes", "rss_mb")]
        lines.append(f"| {name} | {' | '.join(cells)} | {'ok' if row['ok'] else 'FAIL'} |")
    command = "make reliability (= dpr bench reliability)"
    return "\n".join(lines) + "\n\n" + _run_line({**report, "command": command}, command) + "\n"


def merge_block(report: dict[str, Any] | None) -> str:
    """Peak memory of the streaming and in-memory merges as measured, and each scaled to DPR's 21M x
    768 Wikipedia index: an extrapolation, and labelled as one."""
    if report is None:
        return "No merge run published yet.\n"
    n, dim = report["n"], report["dim"]
    big_n, big_dim, big_m = 21_000_000, 768, 96
    big_vectors_gb = big_n * big_dim * 4 / 1e9
    lines = [f"| merge, {n / 1e6:g}M x {dim} | peak RSS MB | growth MB | growth at 21M x 768 (extrapolated) |",
             "|---|---|---|---|"]
    for r in report["rows"]:
        if r["way"] == "streaming":
            # Linear in the vector count (hashes, ids, codes); 768-d PQ codes are m=96 bytes, 48 more.
            extra = (big_m - dim // 8) if r["index_type"] == "ivfpq" else 0
            big = big_n * (r["growth_mb"] * 2**20 / n + extra) / 1e9
            how = f"{big:.1f} GB (linear in n{', m=96' if extra else ''})"
        else:
            ratio = r["growth_mb"] / r["vectors_mb"]
            how = f"{ratio * big_vectors_gb:.0f} GB ({ratio:.2f} x the vectors)"
        lines.append(f"| {r['index_type']}, {r['way']} | {r['rss_peak_mb']:,.0f} | {r['growth_mb']:,.0f} | {how} |")
    before = report["rows"][0]["rss_before_mb"]
    return ("\n".join(lines) + f"\n\nGrowth: peak RSS during the merge over the RSS before it ({before:,.0f} MB, "
            "corpus loaded). " + _run_line(report, "dpr bench merge") + "\n")


_LIVE_MODES = (("dense+encode", "dense, encoder included"), ("dense", "dense"), ("bm25", "BM25"),
               ("hybrid", "hybrid"))


def live_block(report: dict[str, Any] | None) -> str:
    """The README's short form: upsert rates, p50 with a live segment vs compacted, filters, memory."""
    if report is None:
        return "No live-documents run published yet.\n"
    r = report["real_kb"]
    up, lat, mem, flt = r["upserts"], r["latency"], r["memory"], r["filters"]
    modes = [(key, name) for key, name in _LIVE_MODES if key in lat]
    lines = [f"| p50 ms, k=10 | {' | '.join(name for _, name in modes)} |", "|---|" + "---|" * len(modes)]
    for system, label in (("live", f"{round(100 * r['live_share'])}% of the KB live"), ("compacted", "compacted")):
        lines.append(f"| {label} | {' | '.join(str(lat[key][f'{system}_p50_ms']) for key, _ in modes)} |")
    shares = [(flt[name]["share"], flt[name]["ratio"]) for name in flt if isinstance(flt[name], dict)]
    encode = f" (encoding alone {up['encode_only']['docs_per_s']}/s)" if "encode_only" in up else ""
    return ("\n".join(lines) + f"\n\nUpserts: {up['single']['docs_per_s']} documents/s one per call (an fsync each), "
            f"{up['batched']['docs_per_s']}/s in batches of 64{encode}. A filter keeping "
            + ", ".join(f"{100 * share:.0f}%" for share, _ in shares) + " of the passages takes "
            + ", ".join(f"{ratio:.2f}x" for _, ratio in shares)
            + f" the unfiltered dense search. A live passage holds {mem['bytes_per_live_passage']:,} bytes of memory "
            f"and {up['log_bytes_per_passage']:,} of log. {r['kb_documents']} one-passage documents; times without "
            "the encoder start from computed query vectors. " + _run_line(report, "dpr bench live") + "\n")


def live_details(report: dict[str, Any] | None) -> str:
    """Filters at scale: synthetic vectors, flat and HNSW, p50 and recall@10 against exact filtered search."""
    if report is None or not report.get("synthetic"):
        return "No synthetic filter run published yet.\n"
    lines = ["| index | vectors | filter keeps | p50 ms | unfiltered p50 ms | ratio | recall@10 vs exact filtered |",
             "|---|---|---|---|---|---|---|"]
    for row in report["synthetic"]["rows"]:
        lines.append(f"| {row['index_type']} | {row['count']:,} | {100 * row['share']:.1f}% | {row['p50_ms']} | "
                     f"{row['unfiltered_p50_ms']} | {row['ratio']:.2f} | {row['recall_at_10']:.3f} |")
    return "\n".join(lines) + "\n\n" + _run_line(report, "dpr bench live") + "\n"


def reliability_details(report: dict[str, Any] | None) -> str:
    if report is None:
        return ""
    from reliability.checks import Report
    from reliability.report import headline

    r = Report(options=report["options"], started=report["started"], results=report["results"])
    return "```\n" + "\n".join(headline(name, result) for name, result in r.results.items()) + "\n```\n"


def speed_details(report: dict[str, Any] | None) -> str:
    if report is None:
        return ""
    from bench.speed_report import markdown

    return markdown(report).replace("## dpr bench speed", "### Full report of the run", 1)


def train_step_block(report: dict[str, Any] | None) -> str:
    if report is None:
        return ""
    from bench.train_step import step_table

    o = report["options"]
    head = (f"{report['texts_per_step']} texts a step ({o['batch_size']} questions of `{o['data']}`, each with its "
            f"positive and {o['hard_negatives']} other passages), {report['torch_threads']} torch threads, "
            f"median of {o['rounds']} interleaved rounds:")
    note = f"\n\n{report['peak_rss_note']}" if report.get("peak_rss_note") else ""
    return (head + "\n\n" + step_table(report) + note + "\n\n" + _run_line(report, "dpr bench train-step")
            + "\n")


def sweep_block(report: dict[str, Any] | None) -> str:
    if report is None:
        return "No dev sweep published yet.\n"
    from bench.sweep import sweep_table

    data = report["data"]
    precisions = [str(r["precision"]) for r in report["runs"]]
    common = max(set(precisions), key=precisions.count)
    if any("pseudo_queries" in r["data"] for r in report["runs"]):
        trained = "pseudo queries from the knowledge base (no claims) to train on"
    else:
        trained = f"{data['train']} training questions"
    return (f"{trained}, {data['val']} dev questions, {data['val_kb']} passages ranked; every run in {common} "
            f"unless its changes say otherwise.\n\n" + sweep_table(report)
            + "\n\n" + _run_line(report, "python -m bench.sweep") + "\n")


# The README keeps to the rows a user chooses between; docs/training.md has them all.
README_LATENCY_ROWS = ("12-03, before: torch fp32 (the old default)", "12-03, after: onnx int8 (the default)",
                       "12-07: torch fp32", "12-07: onnx fp32", "12-07: onnx int8 (the default)")
README_SCIFACT_ROWS = ("zero-shot", "default", "unsupervised", "bm25", "hybrid")

BLOCKS: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "recall": lambda: recall_summary(_load("recall"), "questions", "recall@5",
                                     "docs/benchmarks.md#recall-benchmark-dpr-bench-recall"),
    "recall-full": lambda: recall_block(_load("recall"), selection=True),
    "recall-scifact": lambda: recall_block(_load("recall-scifact"), "claims", selection=True),
    "recall-scifact-short": lambda: recall_summary(_load("recall-scifact"), only=README_SCIFACT_ROWS),
    "reliability": lambda: reliability_block(_load("reliability")),
    "reliability-table": lambda: reliability_table(_load("reliability")),
    "reliability-details": lambda: reliability_details(_load("reliability")),
    "merge": lambda: merge_block(_load("merge")),
    "peers": lambda: peers_block(_load("peers")),
    "latency": lambda: latency_block(_load("latency"), only=README_LATENCY_ROWS),
    "latency-full": lambda: latency_full(_load("latency")),
    "speed-details": lambda: speed_details(_load("speed")),
    "live": lambda: live_block(_load("live")),
    "train-step": lambda: train_step_block(_load("train-step")),
    "dev-sweep": lambda: sweep_block(_load("dev-sweep")),
    "dev-sweep-unsupervised": lambda: sweep_block(_load("dev-sweep-unsupervised")),
    "live-details": lambda: live_details(_load("live")),
    "sentence-index": lambda: sentence_index_block(_load("eval-scifact-sentences"), _load("eval-scifact-whole")),
    "sentence-index-short": lambda: sentence_index_block(_load("eval-scifact-sentences"), _load("eval-scifact-whole"),
                                                         short=True),
    "sentence-index-line": lambda: sentence_index_line(_load("eval-scifact-sentences"), _load("eval-scifact-whole")),
}


DOCS = (README, BENCHMARKS, SCALING, SERVING, DOCUMENTS, TRAINING)


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            raise ValueError(f"unknown generated block {name!r}")
        return match.group(1) + BLOCKS[name]() + match.group(4)
    return _BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        fresh = render(text)
        if fresh != text:
            stale.append(path)
            if not args.check:
                path.write_text(fresh, encoding="utf-8")
    if args.check and stale:
        print("out of date (run `python -m bench.docs`): " + ", ".join(str(p.relative_to(REPO)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
