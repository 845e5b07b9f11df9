"""`amt sweep`: hyperparameter search with Optuna, SQLite storage, pruning on validation.

Each trial composes the run config (`--config-name`, the sweep's own overrides, the space's
`fixed` overrides, then the sampled parameters), trains it with `amt.training.trainer.Trainer`
and returns the validation metric of the last validation (`metric`, a dotted key into the
evaluator's result). After every validation the metric is reported to Optuna at the epoch;
the pruner (median or hyperband) may stop the trial there.

Storage is an Optuna RDB URL, SQLite by default (`<out>/study.db`): a killed sweep is resumed
by running the same command again, finished trials are kept; a trial left running by a killed
process is marked failed once its heartbeat is older than `--grace` seconds and is retried
once with the same parameters. Several workers (processes or machines) running the same
command on shared storage share one study; `--trials` is the total of finished (complete or
pruned) trials over all of them. Trials train on `training.device`; `--devices 0,1,2,3` starts
one worker process per device (`amt.training.sweep_workers`).

Search spaces: the Hydra config group `amt.config/sweep` (`--space default`, or a yaml file
path; entries overridable with `--space-override`), or a W&B sweep yaml (`--wandb FILE`,
translated: values / value / min-max distributions, metric name and goal, method, hyperband
early termination; wandb itself is not needed).

Outputs in `--out`: `results.csv` and `results.md` (every trial), `importance.png` (parameter
importances, from 2 completed trials on), `best_overrides.txt` (the best trial as arguments
of `amt train`: `amt train @<out>/best_overrides.txt [more overrides]`), `trials/<n>/` (runs).
`--out` is new, empty or a sweep's (it holds `study.db` or `trials/`); any other folder is
refused unless --force, since those names would replace a user's files.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from tabulate import tabulate

from amt.extras import require
from amt.outputs import OutputExistsError, claim_output_folder
from amt.training.callbacks import Callback
from amt.training.config import LOAD_ERRORS, compose, load_error_text, load_run_config
from amt.training.sweep_workers import assign_devices, in_process, run_workers
from amt.training.trainer import Trainer

log = logging.getLogger(__name__)

RESULTS_CSV, RESULTS_MD, IMPORTANCE_PNG, BEST_OVERRIDES = (
    "results.csv",
    "results.md",
    "importance.png",
    "best_overrides.txt",
)
STUDY_DB, TRIALS_DIR = "study.db", "trials"  # either marks a sweep's --out folder
SAMPLERS, PRUNERS = ("tpe", "random", "grid"), ("median", "hyperband", "none")


@dataclass
class ParamSpec:
    """One searched parameter: `key` (Hydra key) and `values` (categorical) or float/int bounds
    `low`/`high` (`log`, `step`), or `around_default` (log-uniform in [d / F, d x F])."""

    name: str
    key: str
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    around_default: float | None = None

    def __post_init__(self) -> None:
        kinds = [
            self.values is not None,
            self.low is not None or self.high is not None,
            self.around_default is not None,
        ]
        if sum(kinds) != 1 or (kinds[1] and (self.low is None or self.high is None)):
            raise ValueError(
                f"sweep space parameter {self.name!r}: give exactly one of values, low+high, around_default"
            )
        if self.values is not None and not self.values:
            raise ValueError(f"sweep space parameter {self.name!r}: 'values' is empty")
        if self.around_default is not None and self.around_default <= 1:
            raise ValueError(f"sweep space parameter {self.name!r}: around_default must be > 1")


@dataclass
class SearchSpace:
    """What to search, what to optimise, and how (see amt.config/sweep/default.yaml)."""

    params: dict[str, ParamSpec]
    metric: str = "hand.root-relative.mpjpe"
    direction: str = "minimize"
    sampler: str = "tpe"
    pruner: str = "median"
    fixed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> SearchSpace:
        known = {"params", "metric", "direction", "sampler", "pruner", "fixed"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"{source}: unknown sweep key(s) {unknown}; expected {sorted(known)}")
        params = {}
        for name, spec in (values.get("params") or {}).items():
            if not isinstance(spec, dict) or "key" not in spec:
                raise ValueError(f"{source}: params.{name} needs a 'key' (the Hydra key it overrides)")
            try:
                params[name] = ParamSpec(name=name, **spec)
            except TypeError as exc:
                raise KeyError(f"{source}: params.{name}: {exc}") from exc
        if not params:
            raise ValueError(f"{source}: no parameters to search (key 'params')")
        space = cls(params=params, **{k: v for k, v in values.items() if k != "params"})
        if space.direction not in ("minimize", "maximize"):
            raise ValueError(f"{source}: direction {space.direction!r}; expected minimize or maximize")
        if space.sampler not in SAMPLERS or space.pruner not in PRUNERS:
            raise ValueError(
                f"{source}: sampler {space.sampler!r} / pruner {space.pruner!r}; expected {SAMPLERS} / {PRUNERS}"
            )
        if space.sampler == "grid" and any(p.values is None for p in params.values()):
            raise ValueError(f"{source}: the grid sampler needs 'values' for every parameter")
        return space


def load_space(name: str, overrides: list[str] | None = None) -> SearchSpace:
    """A space from the Hydra group `amt.config/sweep` (by name) or a yaml file (by path)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"sweep space {path} not found")
        cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides or [])))
        return SearchSpace.from_dict(OmegaConf.to_container(cfg, resolve=True), str(path))
    cfg = compose(f"sweep/{name}", overrides)
    return SearchSpace.from_dict(OmegaConf.to_container(cfg, resolve=True), f"amt.config/sweep/{name}.yaml")


_WANDB_METHODS = {"bayes": "tpe", "random": "random", "grid": "grid"}


def from_wandb(path: str | Path) -> SearchSpace:
    """Translate a W&B sweep yaml: parameter names are taken as Hydra keys; `values`,
    `value` (fixed), and min/max with distribution uniform, int_uniform, q_uniform,
    log_uniform_values, log_uniform (exponent bounds); metric name (a leading "val/" dropped)
    and goal; method bayes/random/grid; early_terminate hyperband -> hyperband pruner."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text()) or {}
    method = spec.get("method", "bayes")
    if method not in _WANDB_METHODS:
        raise ValueError(f"{path}: method {method!r}; expected one of {sorted(_WANDB_METHODS)}")
    metric = spec.get("metric") or {}
    params, fixed = {}, {}
    for key, p in (spec.get("parameters") or {}).items():
        name = key.replace(".", "_")
        dist = p.get("distribution")
        if "value" in p:
            fixed[key] = p["value"]
        elif "values" in p:
            params[name] = ParamSpec(name, key, values=list(p["values"]))
        elif "min" in p and "max" in p:
            lo, hi = p["min"], p["max"]
            if dist == "log_uniform":  # bounds are natural-log exponents
                params[name] = ParamSpec(name, key, low=math.exp(lo), high=math.exp(hi), log=True)
            elif dist in (None, "uniform", "int_uniform", "q_uniform", "log_uniform_values"):
                step = p.get("q") if dist == "q_uniform" else None
                if dist == "int_uniform" or (dist is None and isinstance(lo, int) and isinstance(hi, int)):
                    lo, hi, step = int(lo), int(hi), 1
                params[name] = ParamSpec(name, key, low=lo, high=hi, log=dist == "log_uniform_values", step=step)
            else:
                raise ValueError(f"{path}: parameters.{key}: distribution {dist!r} is not supported")
        else:
            raise ValueError(f"{path}: parameters.{key}: expected value, values, or min and max")
    name = metric.get("name", "hand.root-relative.mpjpe")
    values = {
        "params": {},
        "metric": name[4:] if name.startswith("val/") else name,
        "direction": metric.get("goal", "minimize"),
        "sampler": _WANDB_METHODS[method],
        "pruner": "hyperband" if (spec.get("early_terminate") or {}).get("type") == "hyperband" else "median",
        "fixed": fixed,
    }
    space = SearchSpace(params=params, **{k: v for k, v in values.items() if k != "params"})
    if not params:
        raise ValueError(f"{path}: no searched parameters (key 'parameters')")
    return space


def _lookup(resolved: dict[str, Any], key: str) -> Any:
    node: Any = resolved
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"sweep: key {key!r} is not in the run config")
        node = node[part]
    return node


def suggest(trial: Any, space: SearchSpace, defaults: dict[str, Any]) -> dict[str, Any]:
    """{Hydra key: value} for one trial. defaults: the resolved run config (around_default)."""
    out = {}
    for p in space.params.values():
        if p.values is not None:
            value = trial.suggest_categorical(p.name, p.values)
        elif p.around_default is not None:
            d = float(_lookup(defaults, p.key))
            if d <= 0:
                raise ValueError(f"sweep: params.{p.name}: around_default needs a positive default, {p.key}={d}")
            value = trial.suggest_float(p.name, d / p.around_default, d * p.around_default, log=True)
        elif isinstance(p.low, int) and isinstance(p.high, int) and p.step in (None, 1) and not p.log:
            value = trial.suggest_int(p.name, p.low, p.high)
        else:
            value = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log, step=p.step)
        out[p.key] = value
    return out


class PruningCallback(Callback):
    """Reports `metric` after every validation at the current epoch; raises `TrialPruned` when
    the pruner says so (the trainer's loop unwinds, the trial is recorded as pruned)."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self._reported: set[int] = set()

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        import optuna  # why: optional dependency (the sweep extra)

        value = metrics.get(self.metric)
        epoch = trainer.epoch
        if value is None or not math.isfinite(value) or epoch in self._reported:
            return
        self._reported.add(epoch)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric}={value:.4g} at epoch {epoch}")


def _override(key: str, value: Any) -> str:
    return f"{key}={value!r}" if isinstance(value, str) and any(c in value for c in " ,[]{}") else f"{key}={value}"


@dataclass
class Sweep:
    """One sweep: run config name + base overrides, space, output folder."""

    config_name: str
    base_overrides: list[str]
    space: SearchSpace
    out: Path

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        fixed = [_override(k, v) for k, v in self.space.fixed.items()]
        return list(self.base_overrides) + fixed + [_override(k, v) for k, v in params.items()]

    def objective(self, trial: Any) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which worker ran it
        defaults = load_run_config(self.config_name, self.trial_overrides({})).resolved
        overrides = self.trial_overrides(suggest(trial, self.space, defaults))
        trial.set_user_attr("overrides", overrides)
        run_dir = self.out / TRIALS_DIR / f"{trial.number:04d}"
        cfg = load_run_config(
            self.config_name,
            overrides + [f"training.output_dir={run_dir}", "training.overwrite=true", "checkpoint.resume_from=null"],
        )
        metrics = Trainer(cfg, callbacks=[PruningCallback(trial, self.space.metric)]).fit()
        if self.space.metric not in metrics:
            raise RuntimeError(
                f"sweep: metric {self.space.metric!r} not in the validation metrics {sorted(metrics)[:12]} "
                "(is data.val_split set?)"
            )
        return float(metrics[self.space.metric])


def _sampler(space: SearchSpace, seed: int | None) -> Any:
    import optuna  # why: optional dependency (the sweep extra)

    if space.sampler == "grid":
        return optuna.samplers.GridSampler({p.name: p.values for p in space.params.values()}, seed=seed)
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(space: SearchSpace) -> Any:
    import optuna  # why: optional dependency (the sweep extra)

    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(storage_url: str, name: str, space: SearchSpace, heartbeat: int, grace: int, seed: int | None) -> Any:
    """Create or load the study (heartbeats on, a stale trial retried once)."""
    import optuna  # why: optional dependency (the sweep extra)
    from optuna.storages import (  # why: optional dependency (the sweep extra)
        RDBStorage,
        RetryHeartbeatStaleTrialCallback,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            storage_url,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    return optuna.create_study(
        study_name=name, storage=storage, direction=space.direction, sampler=_sampler(space, seed),
        pruner=_pruner(space), load_if_exists=True,
    )  # fmt: skip


def finished_trials(study: Any) -> list[Any]:
    from optuna.trial import TrialState  # why: optional dependency (the sweep extra)

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


# --- outputs ----------------------------------------------------------------------------------


def write_results(study: Any, space: SearchSpace, out: Path, config_name: str) -> dict[str, Path]:
    """results.csv, results.md, importance.png (when computable), best_overrides.txt."""
    import optuna  # why: optional dependency (the sweep extra)

    out.mkdir(parents=True, exist_ok=True)
    names = list(space.params)
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            [t.number, t.state.name, t.value, duration, *[t.params.get(n) for n in names], t.user_attrs.get("worker")]
        )
    header = ["trial", "state", space.metric, "duration_s", *names, "worker"]
    paths = {"csv": out / RESULTS_CSV, "markdown": out / RESULTS_MD}
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    sign = 1 if space.direction == "minimize" else -1
    ranked = sorted(rows, key=lambda r: (r[2] is None, sign * (r[2] if r[2] is not None else 0)))
    lines = [f"# Sweep `{study.study_name}`", f"{space.direction} `{space.metric}`; {len(trials)} trials.", ""]
    lines.append(tabulate(ranked, headers=header, tablefmt="pipe", floatfmt=".4g"))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        best_args = ["--config-name", config_name, *best.user_attrs.get("overrides", [])]
        paths["best"] = out / BEST_OVERRIDES
        paths["best"].write_text("\n".join(best_args) + "\n")
        lines += ["", f"Best: trial {best.number}, {space.metric} = {best.value:.4g}; "
                  f"train it with `amt train @{paths['best']}`."]  # fmt: skip
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        lines += ["", f"Parameter importance not computed: {exc}"]
    else:
        paths["importance"] = plot_importances(importances, out / IMPORTANCE_PNG, space.metric)
        lines += ["", f"![parameter importance]({IMPORTANCE_PNG})"]
    paths["markdown"].write_text("\n".join(lines) + "\n")
    return paths


def plot_importances(importances: dict[str, float], path: Path, metric: str) -> Path:
    from matplotlib.figure import Figure  # why: only this plot needs matplotlib; keeps `amt sweep` start-up light

    names = list(importances)[::-1]
    fig = Figure(figsize=(5, 0.4 * len(names) + 1.2), dpi=100)
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (fraction)", title=f"parameter importance for {metric}")
    fig.tight_layout()
    fig.savefig(path)
    return path


# --- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amt sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-name", default="config", help="run config: config (paper) or tiny")
    p.add_argument("--space", default="default", help="space in amt.config/sweep (name) or a yaml file")
    p.add_argument("--space-override", action="append", default=[], help="Hydra override of the space (repeatable)")
    p.add_argument("--wandb", type=Path, default=None, help="W&B sweep yaml to translate (replaces --space)")
    p.add_argument("--study", default="amt_sweep", help="study name in the storage")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/sweeps/<study>)")
    p.add_argument("--storage", default=None, help="Optuna RDB URL (default sqlite:///<out>/study.db)")
    p.add_argument("--trials", type=int, default=20, help="finished trials wanted in the study (all workers)")
    p.add_argument("--timeout", type=float, default=None, help="stop this worker after so many seconds")
    p.add_argument("--heartbeat", type=int, default=10, help="trial heartbeat interval (s)")
    p.add_argument(
        "--grace", type=int, default=60, help="a running trial without heartbeat this long (s) is failed and retried"
    )
    p.add_argument("--seed", type=int, default=None, help="sampler seed")
    p.add_argument(
        "--devices", default=None, help="one worker process per device, e.g. 0,1,2,3 (GPU indices) or cpu,cpu"
    )
    p.add_argument(
        "--force", action="store_true", help="write into a non-empty --out that no sweep wrote (same names replaced)"
    )
    # set by --devices for each worker it starts: that worker's run-config override; it writes no results
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the run config for every trial (data.root=...)")
    return p


def main(argv: list[str]) -> int:
    optuna = require("optuna", "sweep", "amt sweep")

    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        space = from_wandb(args.wandb) if args.wandb else load_space(args.space, args.space_override)
        workers = assign_devices(args.devices) if args.devices else []
    except (OSError, KeyError, ValueError) as exc:
        print(f"amt sweep: {exc}", file=sys.stderr)
        return 2
    try:  # the overrides every trial shares: a typo stops here, not in each trial
        load_run_config(args.config_name, args.overrides)
    except LOAD_ERRORS as exc:
        print(f"amt sweep: {load_error_text(exc)}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / "sweeps" / args.study
    try:  # results.csv, results.md, ... would replace a user's files of those names
        claim_output_folder(out, (STUDY_DB, TRIALS_DIR), args.force, "amt sweep")
    except OutputExistsError as exc:
        print(f"amt sweep: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{out.resolve() / STUDY_DB}"
    study = open_study(storage, args.study, space, args.heartbeat, args.grace, args.seed)  # before any worker
    overrides = [*args.overrides, *([args.worker] if args.worker else []), *in_process(workers)]
    if len(workers) > 1:
        log.info("sweep workers finished with exit codes %s", run_workers(argv, workers))
    remaining = 0 if len(workers) > 1 else args.trials - len(finished_trials(study))
    sweep = Sweep(args.config_name, overrides, space, out)
    if remaining > 0:
        from optuna.study import MaxTrialsCallback  # why: optional dependency (the sweep extra)
        from optuna.trial import TrialState  # why: optional dependency (the sweep extra)

        stop = MaxTrialsCallback(args.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
        study.optimize(sweep.objective, n_trials=remaining, timeout=args.timeout, callbacks=[stop], gc_after_trial=True)
    elif len(workers) <= 1:
        log.info("study %s already has %d finished trials", args.study, args.trials)
    if args.worker:  # one of the --devices workers: the parent writes the results
        return 0
    paths = write_results(study, space, out, args.config_name)
    print(paths["markdown"].read_text(), end="")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0 if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) else 1
