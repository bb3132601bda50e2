"""Hyperparameters: the built-in algorithm's names and defaults, parsed into one frozen `TrainingConfig`.

SageMaker sends every value as a string ("10", "True"); SDK 3.x local mode sends JSON-typed values
(10, true). Both are accepted. Every problem (unknown key, bad value, missing required key) is collected
and reported in one `UserError`, so a user fixes all of them in one go instead of one failed job per typo.
"""

import difflib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from segmaker.errors import UserError

BACKBONES = {
    "resnet-50": "resnet50",
    "resnet50": "resnet50",
    "resnet-101": "resnet101",
    "resnet101": "resnet101",
}
ALGORITHMS = ("fcn", "psp", "deeplab")
LR_SCHEDULERS = ("poly", "cosine", "step")
OPTIMIZERS = ("sgd", "adam", "adagrad", "nag", "rmsprop")
PRECISION_DTYPES = ("float32", "float16")
LOSSES = ("cross_entropy", "dice", "cross_entropy+dice")
BALANCED = "balanced"
IMAGE_SCALES = ("base_size", "native")
KVSTORES = ("auto", "local", "device", "dist_sync", "dist_device_sync", "dist_async")
IGNORED_PREFIXES = ("_", "sagemaker_")


@dataclass(frozen=True)
class TrainingConfig:
    """The resolved hyperparameters; field names are the hyperparameter names (SPEC section 3)."""

    num_classes: int
    backbone: str = "resnet50"
    algorithm: str = "fcn"
    use_pretrained_model: bool = True
    num_training_samples: Optional[int] = None
    base_size: int = 520
    crop_size: int = 240
    epochs: int = 10
    early_stopping: bool = False
    early_stopping_min_epochs: int = 5
    early_stopping_patience: int = 4
    early_stopping_tolerance: float = 0.0
    learning_rate: float = 0.001
    lr_scheduler: str = "poly"
    lr_scheduler_factor: float = 0.1
    lr_scheduler_step: Tuple[int, ...] = ()
    mini_batch_size: int = 16
    validation_mini_batch_size: int = 16
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0001
    gamma1: float = 0.9
    gamma2: float = 0.9
    syncbn: bool = False
    seed: Optional[int] = None
    warmup_epochs: int = 0
    aux_loss: bool = True
    aux_weight: float = 0.5
    precision_dtype: str = "float32"
    kvstore: str = "auto"
    data_workers: Optional[int] = None
    class_names: Tuple[str, ...] = ()
    loss: str = "cross_entropy"
    # None: every class weighs 1; "balanced": median-frequency weights counted from the training masks.
    class_weights: Union[None, str, Tuple[float, ...]] = None
    image_scale: str = "base_size"  # or "native": crops at the images' own resolution, tiled inference

    def to_json_dict(self) -> Dict[str, object]:
        """JSON-typed resolved values for hyperparams.json; `parse_hyperparameters` reads them back."""
        values = asdict(self)
        values["lr_scheduler_step"] = list(self.lr_scheduler_step)
        values["class_names"] = ",".join(self.class_names)
        values["data_workers"] = "auto" if self.data_workers is None else self.data_workers
        if isinstance(self.class_weights, tuple):
            values["class_weights"] = list(self.class_weights)
        return values


class _Invalid(ValueError):
    """A value a parser rejects; the message says what is allowed."""


Parser = Callable[[object], object]


def _as_text(value: object) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def _integer(value: object) -> int:
    # bool is an int subclass: `true` for an integer key is a mistake, not 1.
    if isinstance(value, bool):
        raise _Invalid("not a boolean")
    if isinstance(value, int):
        return value
    try:
        number = float(_as_text(value))
    except ValueError:
        raise _Invalid("not a number") from None
    # Tuning jobs may send whole numbers as "10.0"; anything fractional is a mistake.
    if not math.isfinite(number) or number != int(number):
        raise _Invalid("not a whole number")
    return int(number)


def _real(value: object) -> float:
    if isinstance(value, bool):
        raise _Invalid("not a boolean")
    try:
        number = float(_as_text(value))
    except ValueError:
        raise _Invalid("not a number") from None
    if not math.isfinite(number):
        raise _Invalid("not a finite number")
    return number


def int_in(low: Optional[int] = None, high: Optional[int] = None) -> Parser:
    allowed = _range_text("an integer", low, high, "[", "]")

    def parse(value: object) -> int:
        number = _integer_or(value, allowed)
        if (low is not None and number < low) or (high is not None and number > high):
            raise _Invalid(allowed)
        return number

    return parse


def _integer_or(value: object, allowed: str) -> int:
    try:
        return _integer(value)
    except _Invalid:
        raise _Invalid(allowed) from None


def real_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Parser:
    allowed = _range_text("a number", low, high, "(" if low_open else "[", ")" if high_open else "]")

    def parse(value: object) -> float:
        try:
            number = _real(value)
        except _Invalid:
            raise _Invalid(allowed) from None
        too_low = number <= low if low_open else number < low
        too_high = number >= high if high_open else number > high
        if too_low or too_high:
            raise _Invalid(allowed)
        return number

    return parse


def _range_text(kind: str, low: object, high: object, left: str, right: str) -> str:
    if low is not None and high is not None:
        return f"{kind} in {left}{low}, {high}{right}"
    if low is not None:
        return f"{kind} >= {low}" if left == "[" else f"{kind} > {low}"
    return kind


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _as_text(value).lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise _Invalid("True or False")


def choice(options: Sequence[str], aliases: Optional[Mapping[str, str]] = None) -> Parser:
    accepted = dict(aliases or {option: option for option in options})

    def parse(value: object) -> str:
        key = _as_text(value).lower()
        if key not in accepted:
            raise _Invalid("one of " + ", ".join(options))
        return accepted[key]

    return parse


def crop_size(value: object) -> int:
    """An int > 16, rounded up to a multiple of 8 (the networks' output stride)."""
    size = int_in(17)(value)
    return (size + 7) // 8 * 8


def epoch_list(value: object) -> Tuple[int, ...]:
    allowed = 'comma-separated positive epochs such as "10,20"'
    items = value if isinstance(value, (list, tuple)) else _as_text(value).split(",")
    try:
        epochs = tuple(_integer(item) for item in items if _as_text(item))
    except _Invalid:
        raise _Invalid(allowed) from None
    if epochs and min(epochs) < 1:
        raise _Invalid(allowed)
    return tuple(sorted(epochs))


def optional_positive_int(value: object) -> Optional[int]:
    if _as_text(value).lower() == "auto":
        return None
    try:
        return int_in(1)(value)
    except _Invalid:
        raise _Invalid('"auto" or a positive integer') from None


def name_list(value: object) -> Tuple[str, ...]:
    """Comma-separated class names (or a JSON list), each non-empty and different from the others."""
    items = value if isinstance(value, (list, tuple)) else _as_text(value).split(",")
    names = tuple(_as_text(item) for item in items)
    if names == ("",):
        return ()
    if "" in names or len(set(names)) != len(names):
        raise _Invalid('comma-separated, different, non-empty names such as "background,road"')
    return names


def class_weights(value: object) -> Union[str, Tuple[float, ...]]:
    """`balanced`, or comma-separated non-negative weights, one per class (the count is checked later)."""
    allowed = '"balanced" or comma-separated non-negative numbers, one per class, e.g. "1,10"'
    if _as_text(value).lower() == BALANCED:
        return BALANCED
    items = value if isinstance(value, (list, tuple)) else _as_text(value).split(",")
    try:
        weights = tuple(_real(item) for item in items)
    except _Invalid:
        raise _Invalid(allowed) from None
    if not weights or min(weights) < 0 or max(weights) == 0:
        raise _Invalid(allowed + ", not all 0")
    return weights


PARSERS: Dict[str, Parser] = {
    "backbone": choice(["resnet-50", "resnet-101"], BACKBONES),
    "algorithm": choice(ALGORITHMS),
    "use_pretrained_model": boolean,
    "num_classes": int_in(2, 254),
    "num_training_samples": int_in(1),
    "base_size": int_in(17),
    "crop_size": crop_size,
    "epochs": int_in(1),
    "early_stopping": boolean,
    "early_stopping_min_epochs": int_in(0),
    "early_stopping_patience": int_in(1),
    "early_stopping_tolerance": real_in(0.0, 1.0),
    "learning_rate": real_in(0.0, 1.0, low_open=True),
    "lr_scheduler": choice(LR_SCHEDULERS),
    "lr_scheduler_factor": real_in(0.0, 1.0),
    "lr_scheduler_step": epoch_list,
    "mini_batch_size": int_in(1),
    "validation_mini_batch_size": int_in(1),
    "optimizer": choice(OPTIMIZERS),
    "momentum": real_in(0.0, 1.0, low_open=True),
    "weight_decay": real_in(0.0, 1.0, high_open=True),
    "gamma1": real_in(0.0, 1.0),
    "gamma2": real_in(0.0, 1.0),
    "syncbn": boolean,
    "seed": int_in(0),
    "warmup_epochs": int_in(0),
    "aux_loss": boolean,
    "aux_weight": real_in(0.0, 10.0),
    "precision_dtype": choice(PRECISION_DTYPES),
    "kvstore": choice(KVSTORES),
    "data_workers": optional_positive_int,
    "image_scale": choice(IMAGE_SCALES),
    "class_names": name_list,
    "loss": choice(LOSSES),
    "class_weights": class_weights,
}


def parse_hyperparameters(raw: Mapping[str, object]) -> TrainingConfig:
    """Validate and type the raw hyperparameters; one UserError lists every problem found."""
    problems: List[str] = []
    values: Dict[str, object] = {}
    for key, value in raw.items():
        if key.startswith(IGNORED_PREFIXES) or value is None:
            continue
        if key not in PARSERS:
            problems.append(_unknown_key_problem(key))
            continue
        try:
            values[key] = PARSERS[key](value)
        except _Invalid as exc:
            problems.append(f"{key} = {value!r}: must be {exc}")
    invalid = {key for key in raw if key in PARSERS and raw[key] is not None and key not in values}
    problems.extend(_missing_required(values, invalid))
    problems.extend(_inconsistent(values))
    if problems:
        raise UserError("invalid hyperparameters:\n  - " + "\n  - ".join(problems))
    return TrainingConfig(**values)


def _unknown_key_problem(key: str) -> str:
    close = difflib.get_close_matches(key, list(PARSERS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown hyperparameter {key!r}{hint}"


def _missing_required(values: Mapping[str, object], invalid: Set[str]) -> List[str]:
    """Required values that are absent (an `invalid` one is already reported as such)."""
    problems = []
    if "num_classes" not in values and "num_classes" not in invalid:
        problems.append("num_classes is required: an integer in [2, 254] (the classes, background included)")
    if (
        values.get("lr_scheduler") == "step"
        and not values.get("lr_scheduler_step")
        and "lr_scheduler_step" not in invalid
    ):
        problems.append(
            'lr_scheduler_step is required with lr_scheduler = "step": comma-separated epochs, e.g. "10,20"'
        )
    names, num_classes = values.get("class_names"), values.get("num_classes")
    if names and num_classes is not None and len(names) != num_classes:
        given = ",".join(names)
        problems.append(f"class_names = {given!r}: {len(names)} names, but num_classes is {num_classes}")
    return problems


def _inconsistent(values: Mapping[str, object]) -> List[str]:
    """Values that are valid alone but not together."""
    weights = values.get("class_weights")
    classes = values.get("num_classes")
    if isinstance(weights, tuple) and classes is not None and len(weights) != classes:
        return [
            f"class_weights has {len(weights)} weights but num_classes is {classes}: give one weight per"
            ' class (background included), or "balanced"'
        ]
    return []
