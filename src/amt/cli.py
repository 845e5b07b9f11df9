"""The `amt` command.

Each verb lives in the module that owns it; this file only dispatches, so that
`amt --help` stays fast and a verb's heavy imports are paid only when it runs.
A verb's entry point is ``fn(argv: list[str]) -> int``; it parses its arguments and calls
library code. Logging is configured here, once, for every verb.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys

from amt import __version__
from amt.extras import MissingExtraError

# verb -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("amt.data.synthetic_cli:main", "write a synthetic dataset (DexYCB layout, or --format folder)"),
    "cache": ("amt.data.cache_cli:main", "build the preprocessed training cache"),
    "train": ("amt.training.cli:train_main", "train a model (Hydra overrides after the verb)"),
    "eval": ("amt.evaluation.cli:main", "evaluate a checkpoint and write the report"),
    "demo": ("amt.demo:main", "synthesise, cache, train tiny, evaluate, draw (CPU, minutes)"),
    "predict": ("amt.inference.cli:predict_main", "run a checkpoint on images, folders or video"),
    "export": ("amt.inference.cli:export_main", "export to ONNX or TorchScript with a parity check"),
    "bench": ("amt.inference.bench:main", "latency, throughput, memory and FLOP/s vs the matmul ceiling"),
    "model-info": ("amt.models.info:main", "parameter counts of every preset"),
    "sweep": ("amt.training.sweep:main", "hyperparameter search with Optuna"),
    "debug": ("amt.debug_cli:main", "diagnose a checkpoint: collapse, dead units, attention, gradients"),
    "convert-checkpoint": ("amt.checkpoint_cli:main", "convert an old-format checkpoint (pickled trainer.pt)"),
}


# OSErrors that name a place the user must fix (their message names the file), printed as one line
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """INFO to stderr with time stamps, unless the host program already set up logging."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)


def _usage() -> str:
    width = max(len(v) for v in COMMANDS)
    lines = ["usage: amt <command> [args]", "", "commands:"]
    lines += [f"  {verb:<{width}}  {help_}" for verb, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        print(__version__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        print(f"amt: unknown command {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    configure_logging()
    target, _ = COMMANDS[verb]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("amt"):
            print(f"amt {verb}: not available in this build ({exc.name} missing)", file=sys.stderr)
            return 2
        raise
    try:
        result = getattr(module, func_name)(rest)
    except MissingExtraError as exc:  # an optional feature without its extra: the one line, no traceback
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        # the machine's storage, not the program: a full disk, a read-only or forbidden folder
        print(f"amt {verb}: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
