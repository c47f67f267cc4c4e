"""The `lightning-prune` command line: Lightning's fit/validate/test, plus `export` and `report` of a checkpoint.

lightning-prune fit --config configs/quickstart.yaml
lightning-prune report runs/quickstart/lightning_logs/version_0/checkpoints/*.ckpt --plot channels.png
lightning-prune export runs/quickstart/lightning_logs/version_0/checkpoints/*.ckpt --format onnx
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import jsonargparse
import pytorch_lightning as pl
from jsonargparse import ArgumentError
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_prune.io import checkpoint, export, report
from lightning_prune.zoo.module import ImageClassifier

TOOLS = ("export", "report")

DESCRIPTION = (
    "Train, validate or test an ImageClassifier with any LightningDataModule (`--data.class_path`); add "
    "`lightning_prune.RLPruneCallback` under `trainer.callbacks` to prune it while it trains. Two more "
    "subcommands work on a saved checkpoint: `lightning-prune export CKPT --format onnx|torchscript|"
    "exported-program` and `lightning-prune report CKPT [--json] [--plot FILE.png]`, each with "
    "`--model-class package.module.ClassName` for a checkpoint of another LightningModule."
)

#: The first line of the parser's messages that name where in the configuration a value failed.
_WHERE = re.compile(r"^(?:Parser key \"([^\"]+)\"|Problem with given class_path '([^']+)'):")
_PARSER_DIR = os.path.dirname(jsonargparse.__file__)


def _raised_by_parser(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(_PARSER_DIR)


def config_error(prog: str, err: BaseException) -> NoReturn:
    """Exit with code 2 after printing a configuration error's own message first: that of the first exception in
    its chain of causes raised outside jsonargparse (a constructor's), else the parser's innermost one, prefixed
    with where in the configuration it arose; then a pointer to the help. `JSONARGPARSE_DEBUG=true` raises `err`."""
    if os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true":
        raise err
    chain: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    where = [name for e in chain if (match := _WHERE.match(str(e))) for name in match.groups() if name]
    origin = next((e for e in chain if not _raised_by_parser(e)), chain[-1])
    message = ": ".join([*dict.fromkeys(where), str(origin).strip()])
    print(f"{prog}: error: {message}", file=sys.stderr)
    print(f"  `{prog} --help` lists the options; JSONARGPARSE_DEBUG=true shows the full report", file=sys.stderr)
    raise SystemExit(2)


class PruneCLI(LightningCLI):
    """LightningCLI with the fit, validate and test subcommands (ImageClassifier has no `predict_step`)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate", "test")}

    def instantiate_classes(self) -> None:
        """Build the configured objects; what a constructor refuses is a configuration error (see `config_error`)."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as err:
            config_error(f"lightning-prune {self.subcommand}", err)


def tool_parser() -> argparse.ArgumentParser:
    """Parser of the `export` and `report` subcommands."""
    parser = argparse.ArgumentParser(prog="lightning-prune", description="Export or inspect a pruned checkpoint.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("checkpoint", type=Path, help="a .ckpt file saved by the Trainer")
    common.add_argument(
        "--model-class",
        default="lightning_prune.ImageClassifier",
        metavar="package.module.ClassName",
        help="the LightningModule class that saved the checkpoint, importable here or from the current folder "
        "(default: %(default)s)",
    )
    tools = parser.add_subparsers(dest="tool", required=True)
    exporter = tools.add_parser(
        "export",
        help="write the pruned network as a standalone model file",
        description="Write the pruned network of a checkpoint as a standalone model with a dynamic batch size.",
        parents=[common],
    )
    exporter.add_argument(
        "--format",
        required=True,
        choices=list(export.FORMATS),
        help="onnx, torchscript (deprecated by PyTorch) or exported-program (torch.export, .pt2)",
    )
    exporter.add_argument("--output", type=Path, help="file to write (default: next to the checkpoint)")
    reporter = tools.add_parser(
        "report",
        help="per-layer channels and whole-model cost of a pruned checkpoint",
        description="Channels before/after for every pruned layer, and params and MACs of the whole model.",
        parents=[common],
    )
    reporter.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    reporter.add_argument("--plot", type=Path, metavar="FILE.png", help="write a bar plot of channels per layer")
    return parser


def run_tool(argv: Sequence[str]) -> int:
    """Run `export` or `report`; user errors print one line on stderr and return exit code 2."""
    args = tool_parser().parse_args(list(argv))
    try:
        model_class = checkpoint.import_model_class(args.model_class)
        if args.tool == "export":
            result = export.export_checkpoint(args.checkpoint, args.format, args.output, model_class=model_class)
            print(f"Wrote {args.format} model to {result.path}")
            if result.max_abs_diff is None:
                print("Outputs not compared with PyTorch: onnxruntime is not installed")
            else:
                print(f"Largest output difference from PyTorch at batch sizes 1 and 3: {result.max_abs_diff:.2e}")
        else:
            data = report.build_report(args.checkpoint, model_class)
            if args.plot is not None:
                report.plot_channels(data, args.plot)
            if args.json:
                print(report.to_json(data))
            else:
                report.print_report(data)
                if args.plot is not None:
                    print(f"Plot written to {args.plot}")
    except (checkpoint.CheckpointError, ValueError, OSError) as err:
        print(f"lightning-prune {args.tool}: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lightning-prune`; `argv` defaults to the process arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        return run_tool(args)
    try:
        PruneCLI(
            ImageClassifier,
            pl.LightningDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"description": DESCRIPTION, "exit_on_error": False},
            args=None if argv is None else args,
        )
    except ArgumentError as err:
        command = args[:1] if args and args[0] in PruneCLI.subcommands() else []
        config_error(" ".join(["lightning-prune", *command]), err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
