"""`segmaker prepare`: from a dataset in its published layout to SageMaker channels (and S3).

    segmaker prepare oxford-pets SOURCE OUTPUT [--classes binary|species|breeds]
    segmaker prepare kitti-road  SOURCE OUTPUT [--validation-fraction F] [--seed N]
    segmaker prepare folders --images DIR --masks DIR OUTPUT [--validation-fraction F] [--seed N]
                                                             [--class-names a,b,...]
    common options: [--manifest] [--upload s3://bucket/prefix]

Readers (oxford_pets, kitti_road, folders) turn a layout into a `Dataset`; `writer` writes the channels;
`upload` copies them to S3 and prints the `estimator.fit({...})` dictionary to paste.
"""

import argparse
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from segmaker.errors import UserError
from segmaker.prepare import folders, kitti_road, oxford_pets
from segmaker.prepare.dataset import Dataset
from segmaker.prepare.upload import fit_inputs, parse_s3_uri, upload_folder
from segmaker.prepare.writer import Written, write_channels

log = logging.getLogger("segmaker.prepare")
DATASETS = ("oxford-pets", "kitti-road", "folders")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `segmaker prepare ...`; UserError for bad arguments or data (the CLI reports it)."""
    args = _parser().parse_args(argv)
    if not 0 <= args.validation_fraction < 1:
        raise UserError(f"--validation-fraction must be in [0, 1), not {args.validation_fraction}")
    destination = parse_s3_uri(args.upload) if args.upload else None
    dataset = _read(args)
    written = write_channels(dataset, args.output, manifests=args.manifest,
                             manifest_prefix=args.upload if args.upload else None)
    _print_result(dataset, written)
    if destination is not None:
        count = upload_folder(args.output, *destination)
        print(f"uploaded {count} files to {args.upload}")
    print("estimator.fit(" + json.dumps(fit_inputs(written, args.upload), indent=4) + ")")
    if args.manifest:
        print(_pipe_mode_hint(written, args.upload))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segmaker prepare", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:8]))
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("paths", nargs="+", metavar="SOURCE OUTPUT",
                        help="the dataset's folder and the output folder (folders: OUTPUT only)")
    parser.add_argument("--classes", default="binary", choices=oxford_pets.CLASS_CHOICES,
                        help="oxford-pets: background+pet (default), background+cat+dog, or the 37 breeds")
    parser.add_argument("--images", type=Path, help="folders: the images")
    parser.add_argument("--masks", type=Path, help="folders: the masks (same base names)")
    parser.add_argument("--class-names", help="folders: comma-separated names, in class-id order")
    parser.add_argument("--validation-fraction", type=float, default=0.2,
                        help="kitti-road, folders: share of the pairs for validation (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    parser.add_argument("--manifest", action="store_true",
                        help="also write augmented manifests (Pipe mode) in OUTPUT/manifests")
    parser.add_argument("--upload", metavar="s3://BUCKET/PREFIX", help="copy OUTPUT to S3 (needs boto3)")
    return parser


def _read(args: argparse.Namespace) -> Dataset:
    if args.dataset == "folders":
        if len(args.paths) != 1 or args.images is None or args.masks is None:
            raise UserError("usage: segmaker prepare folders --images DIR --masks DIR OUTPUT")
        args.output = Path(args.paths[0])
        return folders.read(args.images, args.masks, args.validation_fraction, args.seed,
                            folders.parse_names(args.class_names))
    if len(args.paths) != 2:
        raise UserError(f"usage: segmaker prepare {args.dataset} SOURCE OUTPUT")
    source, args.output = Path(args.paths[0]), Path(args.paths[1])
    if not source.is_dir():
        raise UserError(f"{source} is not a folder")
    if args.dataset == "oxford-pets":
        return oxford_pets.read(source, args.classes)
    return kitti_road.read(source, args.validation_fraction, args.seed)


def _print_result(dataset: Dataset, written: Written) -> None:
    for note in dataset.notes:
        print(f"note: {note}")
    print(f"wrote {written.counts['train']} training and {written.counts['validation']} validation pairs to "
          f"{written.output}: channels {', '.join(written.channels)}")
    print(f"{dataset.num_classes} classes: {', '.join(dataset.class_names)} "
          f"(hyperparameters in {written.output / 'hyperparameters.json'})")
    print(dataset.summary.text() + f" (all listed in {written.output / 'prepare_summary.json'})")


def _pipe_mode_hint(written: Written, upload: Optional[str]) -> str:
    where = {split: (f"{upload.rstrip('/')}/manifests/{path.name}" if upload else str(path))
             for split, path in written.manifests.items()}
    lines = ["Pipe mode: TrainingInput(MANIFEST, s3_data_type='AugmentedManifestFile', input_mode='Pipe', "
             "attribute_names=['source-ref', 'mask-ref'], record_wrapping='RecordIO', "
             "content_type='application/x-recordio') per channel, with num_training_samples from "
             "hyperparameters.json; manifests:"]
    lines += [f"  {split}: {path}" for split, path in where.items()]
    return "\n".join(lines)
