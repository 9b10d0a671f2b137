"""``python -m detrlab.convert SRC OUT.ckpt``: import published weights as a detrlab checkpoint."""

from __future__ import annotations

import argparse
import logging
import sys

from detrlab.convert.checkpoint_file import write_detrlab_checkpoint
from detrlab.errors import DetrlabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detrlab.convert",
        description=(
            "Convert a transformers save_pretrained directory (DETA, Deformable DETR, DETR) or an original "
            "repository .pth checkpoint into a detrlab checkpoint for eval.py ckpt_path=, predict.py "
            "ckpt_path= and train.py init_from=."
        ),
    )
    parser.add_argument(
        "source", help="transformers model directory (with config.json) or original .pth file"
    )
    parser.add_argument("output", help="the .ckpt file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        converted = write_detrlab_checkpoint(args.source, args.output)
    except DetrlabError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {args.output}: {converted.family} from {converted.source}")
    for note in converted.notes:
        print(f"  assumed: {note}")
    print(f"Evaluate it with: python eval.py ckpt_path={args.output} data=coco data.root=/path/to/coco")
    return 0


if __name__ == "__main__":
    sys.exit(main())
