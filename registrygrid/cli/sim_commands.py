"""`rgrid sim list|run`: network simulations of the node's own protocol code.

`rgrid sim run SCENARIO` runs a scenario (a TOML file, or the name of a
shipped one: `rgrid sim list`) in large-scale mode (node/simulator.py):
every simulated node runs the node's gossip intake and sync session
machines over the in-memory transport, in virtual time. It writes
``summary.json`` (the same bytes for the same scenario and seed) and, with
the sim extra, four PNG plots into ``--out``, prints the figures, and
fails (exit 1) if the safety checker found a violation, printing its
evidence.
"""

from __future__ import annotations

import json
import shutil
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import click

from registrygrid.cli import render
from registrygrid.cli.options import json_option
from registrygrid.errors import FeatureUnavailable, NotFound, RegistryError, ValidationError
from registrygrid.files import write_file
from registrygrid.logs import LineFormatter
from registrygrid.simulation import scenario as scenarios

# The exit status of a run whose safety checker found a violation.
EX_VIOLATION = 1


def shipped() -> dict[str, Path]:
    """The shipped scenarios by name (registrygrid/simulation/scenarios)."""
    folder = resources.files("registrygrid.simulation") / "scenarios"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def find(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise NotFound(f"no scenario file {path}")
        return path
    known = shipped()
    if name_or_path not in known:
        raise NotFound(f"no shipped scenario {name_or_path!r}: one of {', '.join(sorted(known))}, or a .toml file")
    return known[name_or_path]


def register(cli: click.Group) -> None:

    @cli.group(name="sim")
    def sim_group() -> None:
        """Network simulations: the node's own protocol code, many nodes, virtual time."""

    @sim_group.command(name="list")
    @json_option
    def sim_list(as_json: bool) -> None:
        """The shipped scenarios."""
        rows = []
        for name, path in sorted(shipped().items()):
            spec = scenarios.load(path)
            rows.append({"name": name, "nodes": spec.nodes, "changes": spec.workload.changes,
                         "virtual_s": spec.duration_s + spec.settle_s, "description": spec.description})
        if as_json:
            render.dump_json(rows)
            return
        for row in rows:
            click.echo(f"{row['name']:18} {row['nodes']:>6} nodes {row['changes']:>7} changes  {row['description']}")

    @sim_group.command(name="run", epilog="""\b
Examples:
  rgrid sim run steady --out results/steady
  rgrid sim run region-partition --seed 9 --nodes 500
  rgrid sim run my-scenario.toml --json""")
    @click.argument("scenario")
    @click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Write summary.json and the plots here (default: sim-results/<scenario>).")
    @click.option("--seed", type=int, default=None, help="Override the scenario's seed.")
    @click.option("--nodes", type=int, default=None, help="Override the scenario's node count.")
    @click.option("--no-plots", is_flag=True, help="Write the summary only.")
    @click.option("--real", is_flag=True,
                  help="Real-node mode: 2 to 50 real `rgrid node start` processes on 127.0.0.1, in real time "
                       "(faults: stop, kill -9, partitions through the nodes' peer controls).")
    @click.option("--engine", is_flag=True,
                  help="Engine mode: 2 to 100 whole nodes (engine, LMDB, federation) in one process over the "
                       "in-memory network, in virtual time.")
    @click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="With --real or --engine: keep the nodes' homes (and logs) here.")
    @json_option
    def sim_run(scenario: str, out: Path | None, seed: int | None, nodes: int | None, no_plots: bool, real: bool,
                engine: bool, keep: Path | None, as_json: bool) -> None:
        """Run SCENARIO (a shipped name or a TOML file) and check its safety."""
        from registrygrid.simulation import plots

        if real and engine:
            raise click.UsageError("choose one of --real and --engine")
        if keep is not None and not (real or engine):
            raise click.UsageError("--keep goes with --real or --engine (large-scale nodes have no homes)")
        if engine:
            from registrygrid.node.engine_simulator import simulate_engine

            def simulate(spec: scenarios.Scenario, progress: Any = None) -> dict[str, Any]:
                return simulate_engine(spec, root=keep, progress=progress)
        elif real:
            from registrygrid.simulation.real import run_real

            def simulate(spec: scenarios.Scenario, progress: Any = None) -> dict[str, Any]:
                return run_real(spec, keep=keep, progress=progress)
        else:
            from registrygrid.node.simulator import simulate  # type: ignore[assignment]

        spec = scenarios.load(find(scenario))
        overrides: dict[str, Any] = {}
        if seed is not None:
            overrides["seed"] = seed
        if nodes is not None:
            overrides["nodes"] = nodes
        if overrides:  # checked as the file's own values are
            spec = scenarios.parse({**_as_table(spec), **overrides})
        out = out or Path("sim-results") / spec.name
        made = [p for p in (out, *out.parents) if not p.exists()]
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            with _node_logs_to(out / NODE_LOG) as logged:
                summary = _run_with_progress(simulate, spec, quiet=as_json)
        except RegistryError:
            # The mode refused the scenario before running it (real-node and
            # engine modes check their own limits): the folders made for it
            # go, as for any refused scenario, unless something was written.
            for folder in made:
                if folder.is_dir() and not any(f.stat().st_size for f in folder.rglob("*") if f.is_file()):
                    shutil.rmtree(folder, ignore_errors=True)
            raise
        wall = time.perf_counter() - started
        write_file(out / "summary.json", json.dumps(summary, sort_keys=True, indent=1) + "\n")
        drawn: list[str] = []
        if not no_plots:
            try:
                drawn = [str(p) for p in plots.draw(summary, out)]
            except FeatureUnavailable as exc:
                click.echo(f"note: {exc.message}", err=True)
        verdict = summary["checker"]
        if as_json:
            render.dump_json({k: v for k, v in summary.items()
                              if k not in ("propagation_delays_ms", "messages_per_node", "convergence")}
                             | {"wall_seconds": round(wall, 2), "files": [str(out / "summary.json"), *drawn,
                                                                         *([str(out / NODE_LOG)] if logged() else [])]})
        else:
            _print(summary, wall, out, drawn, out / NODE_LOG if logged() else None)
        if not verdict["ok"]:
            click.echo("SAFETY VIOLATED:", err=True)
            click.echo(json.dumps(verdict["violations"], indent=1), err=True)
            sys.exit(EX_VIOLATION)


# Where the simulated nodes' own log lines go, in the run's --out folder.
NODE_LOG = "nodes.log"


@contextmanager
def _node_logs_to(path: Path) -> Iterator[Any]:
    """Send the node code's warnings to ``path`` for the run. In engine and
    large-scale mode the nodes run in this process, and a scenario's faults
    make them warn on purpose (a hostile member's peer banned at each of its
    forgeries): unrouted, Python prints each line between the progress bar
    and the figures. Yields a function telling whether anything was logged
    (the file is made only then)."""
    # The last run's file: this run's is made only if a node warns, and
    # one left there was reported as this run's. Not a FIFO or a link:
    # opening one blocked the run, or wrote through it elsewhere.
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValidationError(f"{path} is not a regular file: move it, or pick another --out")
    path.unlink(missing_ok=True)
    package = logging.getLogger("registrygrid")
    handler = logging.FileHandler(path, mode="w", encoding="utf-8", delay=True)
    handler.setFormatter(LineFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    package.addHandler(handler)
    try:
        yield lambda: path.exists()
    finally:
        package.removeHandler(handler)
        handler.close()


def _as_table(spec: scenarios.Scenario) -> dict[str, Any]:
    """A Scenario back as the TOML table it came from (to apply overrides)."""
    return {"name": spec.name, "description": spec.description, "seed": spec.seed, "nodes": spec.nodes,
            "duration_s": spec.duration_s, "settle_s": spec.settle_s, "peers": spec.peers,
            "network": {"latency_ms": spec.network.latency_ms, "latency_sigma": spec.network.latency_sigma,
                        "loss": spec.network.loss, "degree": spec.network.degree},
            "workload": {"changes": spec.workload.changes, "writers": spec.workload.writers,
                         "pattern": spec.workload.pattern},
            "sync": {"enabled": spec.sync_enabled, "interval_s": spec.sync_interval_s},
            "gossip": {"enabled": spec.gossip_enabled},
            "faults": [{"at_s": f.at_s, "kind": f.kind, "groups": f.groups, "fraction": f.fraction,
                        "nodes": list(f.nodes), **({"for_s": f.for_s} if f.for_s is not None else {})}
                       for f in spec.faults]}


def _run_with_progress(simulate: Any, spec: scenarios.Scenario, *, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(f"simulating {spec.name} ({spec.nodes} nodes)"), BarColumn(),
               TextColumn("{task.completed:.0f}/{task.total:.0f} virtual s"), TimeElapsedColumn())
    with Progress(*columns, transient=True, disable=quiet or not sys.stderr.isatty(),
                  console=render.stderr_console) as bar:
        task = bar.add_task("run", total=spec.duration_s + spec.settle_s)
        summary: dict[str, Any] = simulate(spec, progress=lambda now, end: bar.update(task, completed=now))
    return summary


def _print(summary: dict[str, Any], wall: float, out: Path, drawn: list[str], node_log: Path | None) -> None:
    gossip, sync, prop = summary["gossip"], summary["sync"], summary["propagation_ms"]
    verdict = summary["checker"]
    lines = [
        (f"{summary['scenario']} (seed {summary['seed']}): {summary['nodes']} nodes, "
        f"{summary['acknowledged_writes']} acknowledged writes, {summary['virtual_seconds']:g} "
        f"{'real' if summary.get('mode') == 'real' else 'virtual'} s "
        f"in {wall:.1f} s"),
        (f"propagation: p50 {prop['p50']:.0f} ms, p90 {prop['p90']:.0f} ms, p99 {prop['p99']:.0f} ms, "
        f"max {prop['max']:.0f} ms; everywhere at {summary['full_propagation_at_s']} s; "
        f"converged {summary['converged_fraction']:.4f}"),
        (f"gossip: {gossip['messages']} messages ({gossip['messages_per_node_per_change']} per node per change, "
        f"max {gossip['max_messages_per_node_per_change']}), duplicates {gossip['duplicate_ratio']:.2f}, "
        f"lost {gossip['lost']}, pulled by IWANT {gossip.get('pulled', 0)}, "
        f"rounds p50 {gossip['rounds']['p50']} max {gossip['rounds']['max']} "
        f"(2 log2 N = {gossip['rounds']['bound_2log2n']}), forged refused {gossip['invalid_rejected']}")
        if "messages" in gossip else
        (f"gossip: {gossip['published']} published, {gossip['accepted']} accepted, {gossip['duplicates']} "
         f"duplicates, {gossip['invalid_rejected']} invalid"),
        (f"sync: {sync['sessions']} sessions, {sync['requests']} requests, "
        f"{sync['request_bytes'] + sync['response_bytes']} bytes") if "requests" in sync else
        f"sync: {sync['sessions']} sessions, {sync['rounds']} rounds",
        (f"safety: {'ok' if verdict['ok'] else 'VIOLATED'} ({verdict['live_nodes']} live nodes, "
        f"{verdict['acknowledged']} acknowledged writes)"),
        f"wrote {out / 'summary.json'}" + (f" and {len(drawn)} plots" if drawn else ""),
        *([f"node warnings in {node_log}"] if node_log else []),
    ]
    for line in lines:
        click.echo(line)
