"""Emulate SageMaker Pipe mode locally, and write augmented manifests.

`segmaker pipe-feed` plays SageMaker's part: for each epoch, in order, it creates the FIFO
`<base>/input/data/<channel>_<epoch>`, waits for the reader, writes each manifest line's attributes (the
image's bytes, then the mask's) as RecordIO records, and closes it; only then does it create the next one.

`segmaker make-manifest` writes a JSON Lines augmented manifest from an images/ and a masks/ folder.

Both also run as `python -m segmaker.data.pipe_feed [make-manifest] ...`.
"""

import argparse
import errno
import fcntl
import json
import logging
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

from segmaker.data.recordio import write_record
from segmaker.data.samples import IMAGE_SUFFIXES
from segmaker.environment import Paths, paths_from_env
from segmaker.errors import DataError, UserError

log = logging.getLogger(__name__)

SOURCE_ATTRIBUTE = "source-ref"
PIPE_CHANNEL_CONFIG = {
    "TrainingInputMode": "Pipe",
    "ContentType": "application/x-recordio",
    "RecordWrapperType": "RecordIO",
    "S3DistributionType": "FullyReplicated",
}
_WRITE_BUFFER = 1 << 20
_POLL_SECONDS = 0.05


# --- the manifest ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestLine:
    """One JSON line of an augmented manifest and where it came from (1-based line number)."""

    number: int
    fields: Dict[str, object]


def parse_manifest(text: str, source: str) -> List[ManifestLine]:
    """The manifest's JSON objects, one per non-blank line; errors name the line."""
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            fields = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"manifest {source} line {number} is not valid JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise DataError(f"manifest {source} line {number} must be a JSON object")
        lines.append(ManifestLine(number, fields))
    if not lines:
        raise DataError(f"manifest {source} has no lines")
    return lines


def resolve_attribute_names(
    lines: Sequence[ManifestLine], given: Optional[Sequence[str]], source: str
) -> List[str]:
    """`given`, else ["source-ref", the one other attribute ending in "-ref" of the first line]."""
    if given:
        return list(given)
    first = lines[0]
    labels = sorted(k for k in first.fields if k.endswith("-ref") and k != SOURCE_ATTRIBUTE)
    if len(labels) != 1:
        raise UserError(
            f"manifest {source} line {first.number}: cannot tell the label attribute among "
            f"{labels or 'none'}; give --attribute-names source-ref,<label>-ref"
        )
    return [SOURCE_ATTRIBUTE, labels[0]]


# --- fetching what a manifest line refers to ------------------------------------------------------------
class Fetcher:
    """Bytes of a reference: a local path (relative ones from the manifest's folder) or s3://bucket/key."""

    def __init__(self, base_dir: Path):
        self._base_dir = base_dir
        self._s3 = None

    def fetch(self, ref: str) -> bytes:
        if ref.startswith("s3://"):
            return self._fetch_s3(ref)
        path = Path(ref[len("file://") :] if ref.startswith("file://") else ref)
        path = path if path.is_absolute() else self._base_dir / path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}") from None

    def _fetch_s3(self, ref: str) -> bytes:
        bucket, _, key = ref[len("s3://") :].partition("/")
        client = self._s3_client()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore's errors: missing key, no credentials, no network
            raise DataError(f"cannot read {ref}: {exc}") from None

    def _s3_client(self):
        if self._s3 is None:
            try:
                import boto3  # only manifests that point into S3 need it
            except ImportError:
                raise UserError(
                    "the manifest refers to s3:// objects: install boto3 (pip install boto3) "
                    "and configure AWS credentials, or use local paths"
                ) from None
            self._s3 = boto3.client("s3")
        return self._s3


def line_payloads(
    line: ManifestLine, attribute_names: Sequence[str], fetcher: Fetcher, source: str
) -> List[bytes]:
    """What SageMaker sends for one line: a "-ref" attribute's object bytes, else the value itself."""
    payloads = []
    for name in attribute_names:
        if name not in line.fields:
            raise DataError(f"manifest {source} line {line.number} has no attribute {name!r}")
        value = line.fields[name]
        if name.endswith("-ref"):
            payloads.append(fetcher.fetch(str(value)))
        else:
            payloads.append((value if isinstance(value, str) else json.dumps(value)).encode("utf-8"))
    return payloads


# --- the FIFOs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedOptions:
    channel: str
    epochs: int
    attribute_names: Tuple[str, ...]
    max_part: Optional[int] = None  # split records into parts of at most this many bytes (cflag 1/2/3)
    reader_wait_seconds: float = 600.0


def feed_epochs(
    lines: Sequence[ManifestLine], fetcher: Fetcher, paths: Paths, options: FeedOptions, source: str
) -> None:
    """Create and fill `<channel>_<epoch>` for each epoch in turn, as SageMaker does."""
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(options.epochs):
        fifo = paths.pipe_path(options.channel, epoch)
        make_fifo(fifo)
        stream = open_writer(fifo, options.reader_wait_seconds)
        try:
            written = write_epoch(stream, lines, fetcher, options, source)
        finally:
            _close_writer(stream)
        log.info("%s: %s", fifo.name, written)


def _close_writer(stream: BinaryIO) -> None:
    try:
        stream.close()
    except BrokenPipeError:
        pass  # the reader left early: what was still buffered has nobody to go to (the FIFO is closed anyway)


def write_epoch(
    stream: BinaryIO, lines: Sequence[ManifestLine], fetcher: Fetcher, options: FeedOptions, source: str
) -> str:
    """Write every line's records; a reader that stops early ends the epoch (EPIPE), as on SageMaker."""
    records = size = 0
    try:
        for line in lines:
            for payload in line_payloads(line, options.attribute_names, fetcher, source):
                size += write_record(stream, payload, options.max_part)
                records += 1
        stream.flush()
    except BrokenPipeError:
        return f"the reader closed the FIFO after {records} records; going on with the next epoch"
    return f"wrote {records} records ({size} bytes) from {len(lines)} manifest lines"


def make_fifo(path: Path) -> None:
    """Create the FIFO (an existing FIFO from an earlier run is reused; anything else is in the way)."""
    try:
        os.mkfifo(path)
    except FileExistsError:
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise UserError(
                f"{path} exists and is not a FIFO; remove it to emulate Pipe mode there"
            ) from None


def open_writer(path: Path, wait_seconds: float) -> BinaryIO:
    """Open the FIFO for writing once a reader has opened it; UserError if none comes in `wait_seconds`.

    A plain open() would block forever when the training never starts reading; a non-blocking open fails
    with ENXIO until a reader is there, so it can be polled against a deadline.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise UserError(f"cannot open {path} for writing: {exc.strerror}") from None
        if time.monotonic() >= deadline:
            raise UserError(
                f"no reader opened {path} within {wait_seconds:g} s (is the training running, "
                "with this channel in Pipe mode?)"
            )
        time.sleep(_POLL_SECONDS)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)  # from here on, writes wait for the reader
    return os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)


def write_pipe_input_config(paths: Paths, channel: str) -> None:
    """Put `channel` in Pipe mode in inputdataconfig.json; the other channels keep their entries.

    Without the file, every folder under input/data becomes a File-mode entry first (that is how training
    reads a tree without one); `<channel>_annotation` goes, since the masks now come through the stream.
    """
    config_file = paths.input_data_config_file
    if config_file.exists():
        config = json.loads(config_file.read_text(encoding="utf-8"))
    else:
        folders = (
            sorted(p.name for p in paths.data_dir.iterdir() if p.is_dir()) if paths.data_dir.is_dir() else []
        )
        config = {name: {"TrainingInputMode": "File"} for name in folders}
    config.pop(channel + "_annotation", None)
    config[channel] = dict(PIPE_CHANNEL_CONFIG)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- make-manifest --------------------------------------------------------------------------------------
def manifest_lines_for_folders(images: Path, masks: Path, label_attribute: str) -> List[Dict[str, str]]:
    """One {"source-ref": image, label_attribute: mask} per image, matched by base name; errors name files."""
    if not label_attribute.endswith("-ref") or label_attribute == SOURCE_ATTRIBUTE:
        raise UserError(
            f"the label attribute must end in '-ref' and differ from 'source-ref', not "
            f"{label_attribute!r} (e.g. 'city-streets-ref')"
        )
    image_files = _files_by_stem(images, IMAGE_SUFFIXES)
    mask_files = _files_by_stem(masks, (".png",))
    unmatched_images = sorted(set(image_files) - set(mask_files))
    unmatched_masks = sorted(set(mask_files) - set(image_files))
    if unmatched_images or unmatched_masks:
        problems = [
            f"image {image_files[s]} has no mask {masks / (s + '.png')}" for s in unmatched_images[:5]
        ]
        problems += [f"mask {mask_files[s]} has no image in {images}" for s in unmatched_masks[:5]]
        raise DataError("; ".join(problems))
    if not image_files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    return [
        {SOURCE_ATTRIBUTE: str(image_files[s].resolve()), label_attribute: str(mask_files[s].resolve())}
        for s in sorted(image_files)
    ]


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> Dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    found: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in found:
                raise DataError(f"{found[path.stem]} and {path} have the same base name")
            found[path.stem] = path
    return found


# --- command lines --------------------------------------------------------------------------------------
def _feed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segmaker pipe-feed", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--manifest", required=True, help="JSON Lines augmented manifest (local path or s3://)"
    )
    parser.add_argument("--channel", default="train", help="channel name (default: train)")
    parser.add_argument(
        "--base-dir", type=Path, help="the /opt/ml tree (default: $SAGEMAKER_BASE_DIR or /opt/ml)"
    )
    parser.add_argument("--epochs", type=int, required=True, help="how many epochs (FIFOs) to feed")
    parser.add_argument(
        "--attribute-names",
        help="comma-separated, e.g. source-ref,city-streets-ref "
        "(default: source-ref and the manifest's other -ref attribute)",
    )
    parser.add_argument(
        "--split-records-over",
        type=int,
        metavar="BYTES",
        help="split records longer than BYTES into parts (cflag 1/2/3)",
    )
    parser.add_argument(
        "--reader-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up when no reader opens a FIFO within this time (default: 600)",
    )
    parser.add_argument(
        "--write-input-config",
        action="store_true",
        help="add the channel's Pipe-mode entry to input/config/inputdataconfig.json",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`segmaker pipe-feed`: feed a manifest's records into the channel's per-epoch FIFOs."""
    args = _feed_parser().parse_args(argv)
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {args.epochs}")
    if args.split_records_over is not None and args.split_records_over < 1:
        raise UserError(f"--split-records-over must be at least 1, not {args.split_records_over}")
    _configure_logging()
    paths = Paths(args.base_dir) if args.base_dir else paths_from_env()
    lines = parse_manifest(_manifest_text(args.manifest), args.manifest)
    given = [name.strip() for name in args.attribute_names.split(",")] if args.attribute_names else None
    names = resolve_attribute_names(lines, given, args.manifest)
    if args.write_input_config:
        write_pipe_input_config(paths, args.channel)
    options = FeedOptions(
        args.channel, args.epochs, tuple(names), args.split_records_over, args.reader_timeout
    )
    # Relative references in a local manifest are relative to the manifest's folder.
    base = Path.cwd() if args.manifest.startswith("s3://") else Path(args.manifest).resolve().parent
    feed_epochs(lines, Fetcher(base), paths, options, args.manifest)
    return 0


def _manifest_text(manifest: str) -> str:
    try:
        return Fetcher(Path.cwd()).fetch(manifest).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"manifest {manifest} is not UTF-8 text (byte offset {exc.start})") from None


def manifest_main(argv: Optional[Sequence[str]] = None) -> int:
    """`segmaker make-manifest`: write an augmented manifest for an images/ and a masks/ folder."""
    parser = argparse.ArgumentParser(prog="segmaker make-manifest", description=__doc__.split("\n\n")[2])
    parser.add_argument("--images", type=Path, required=True, help="folder of .jpg/.jpeg/.png images")
    parser.add_argument(
        "--masks", type=Path, required=True, help="folder of .png masks with the same base names"
    )
    parser.add_argument("--label-attribute", required=True, help="e.g. city-streets-ref (must end in -ref)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the manifest to write (.jsonl)")
    args = parser.parse_args(argv)
    _configure_logging()
    lines = manifest_lines_for_folders(args.images, args.masks, args.label_attribute)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    log.info("wrote %d lines to %s", len(lines), args.output)
    return 0


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")


def _module_main(argv: Sequence[str]) -> int:
    command = manifest_main if argv[:1] == ["make-manifest"] else main
    try:
        return command(argv[1:] if command is manifest_main else argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_module_main(sys.argv[1:]))
