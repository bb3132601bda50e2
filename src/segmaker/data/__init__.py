"""Training and validation data: samples (File and Pipe mode), label maps, decoding and the batch loader.

Nothing here imports mxnet: decoding and augmentation run in spawned worker processes.
"""

from segmaker.data.decode import decode_image, decode_mask, decode_sample
from segmaker.data.labelmaps import LabelMap, label_map_file, load_label_map, parse_label_map
from segmaker.data.loader import BatchLoader, WorkerPool, iter_validation_samples, resolve_worker_count
from segmaker.data.samples import EncodedSample, FileSample, find_file_samples, has_split

__all__ = [
    "BatchLoader",
    "EncodedSample",
    "FileSample",
    "LabelMap",
    "WorkerPool",
    "decode_image",
    "decode_mask",
    "decode_sample",
    "find_file_samples",
    "has_split",
    "iter_validation_samples",
    "label_map_file",
    "load_label_map",
    "parse_label_map",
    "resolve_worker_count",
]
