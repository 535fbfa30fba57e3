"""Model loading: hub ids, local folders, object-store URLs and the bundled demo model.

Only the three universal segmentation families load. Weights come from safetensors
unless the user opts in to pickled weights; remote code never runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import torch
from fsspec.core import split_protocol

from segpipe.core.errors import SegpipeError
from segpipe.io.storage import filesystem, redact_uri
from segpipe.labels import LabelSet, match_label_set


@dataclass(frozen=True)
class Family:
    """What a model family's transformers processor does around the final resize."""

    mid_size: tuple[int, int] | None  # masks are first resized to this, then a sigmoid
    antialias: bool  # the final bilinear resize is antialiased (torchvision's resize)
    instance_by_merge: bool  # instance task: class-score top-k then the panoptic merge


# The universal segmentation families that load, and how each one's outputs are post-processed.
FAMILIES: dict[str, Family] = {
    "mask2former": Family(mid_size=(384, 384), antialias=False, instance_by_merge=False),
    "oneformer": Family(mid_size=None, antialias=True, instance_by_merge=True),
    "maskformer": Family(mid_size=None, antialias=False, instance_by_merge=False),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BUILTIN_PREFIX = "builtin:"
LABELS_FILE = "labels.json"  # segpipe's category file beside a checkpoint, when it has one


class ModelLoadError(SegpipeError, RuntimeError):
    """The model could not be found or loaded; the message names it."""


@dataclass
class LoadedModel:
    name: str
    family: str
    model: Any  # a transformers *ForUniversalSegmentation module, in eval mode
    processor: Any  # the checkpoint's image processor (OneFormer: its full processor)
    label_set: LabelSet
    device: torch.device
    dtype: torch.dtype
    weights_sha256: str | None = None  # of the weight files loaded; None when not found


def cache_root() -> Path:
    return Path(os.environ.get("SEGPIPE_CACHE", Path.home() / ".cache" / "segpipe"))


def builtin_path(name: str) -> Path:
    path = Path(str(resources.files("segpipe").joinpath("builtin", name)))
    if not (path / "config.json").exists():
        root = path.parent
        available = sorted(p.name for p in root.iterdir() if (p / "config.json").exists()) if root.is_dir() else []
        raise ModelLoadError(f"no builtin model {name!r}; available: {', '.join(available) or 'none'}")
    return path


def resolve_location(model: str, revision: str | None, storage_options: dict[str, Any] | None = None) -> str:
    """A local folder or hub id that transformers can load.

    Object-store folders are copied once per machine to a cache keyed by URL and
    revision; the copy lands in a temp folder first and is renamed into place, so
    concurrent workers never load a half-copied model.
    """
    if model.startswith(BUILTIN_PREFIX):
        return str(builtin_path(model[len(BUILTIN_PREFIX):]))
    protocol, _ = split_protocol(model)
    if protocol in (None, "file", "local"):
        local = model if protocol is None else split_protocol(model)[1]
        if os.path.isdir(local):
            return local
        if model.startswith((".", "/")) or os.sep in model.strip("/").split("/", 2)[-1]:
            raise ModelLoadError(f"model folder {model!r} does not exist")
        return model  # a hub id such as facebook/mask2former-swin-large-coco-panoptic
    key = hashlib.sha256(f"{model}@{revision}".encode()).hexdigest()[:20]
    target = cache_root() / "models" / key
    if (target / "config.json").exists():
        return str(target)
    fs, path = filesystem(model, storage_options)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}-"))
    try:
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        if not (tmp / "config.json").exists():
            raise ModelLoadError(f"model URL {redact_uri(model)} has no config.json")
        try:
            os.rename(tmp, target)
        except OSError:  # another worker won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except ModelLoadError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"could not copy model from {redact_uri(model)}: {exc}") from exc
    return str(target)


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    model: str,
    *,
    revision: str | None = None,
    dtype: str = "fp32",
    device: str | None = None,
    label_map: str | None = None,
    allow_pickle_weights: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a checkpoint and its processor onto `device`, with its label set."""
    import transformers
    from transformers import PreTrainedModel

    transformers.utils.logging.disable_progress_bar()
    location = resolve_location(model, revision, storage_options)
    shown = redact_uri(model)
    common: dict[str, Any] = {"revision": revision, "trust_remote_code": False}
    config = _load_config(location, shown, common)
    family = config.model_type
    if family not in FAMILIES:
        raise ModelLoadError(
            f"model {shown!r} is a {family!r} model, not a universal segmentation model "
            f"({', '.join(FAMILIES)})"
        )
    model_classes: dict[str, type[PreTrainedModel]] = {
        "mask2former": transformers.Mask2FormerForUniversalSegmentation,
        "oneformer": transformers.OneFormerForUniversalSegmentation,
        "maskformer": transformers.MaskFormerForInstanceSegmentation,
    }
    model_cls = model_classes[family]
    torch_device = pick_device(device)
    torch_dtype = DTYPES[dtype]
    try:
        net = model_cls.from_pretrained(
            location, use_safetensors=None if allow_pickle_weights else True, dtype=torch_dtype, **common
        )
        processor = _load_processor(family, location, common)
    except Exception as exc:
        hint = "" if allow_pickle_weights else " (only safetensors weights load unless --allow-pickle-weights)"
        raise ModelLoadError(f"could not load model {shown!r}: {exc}{hint}") from exc
    # PreTrainedModel.to is typed through functools.wraps(Module.to), as if it were unbound.
    cast(torch.nn.Module, net).to(torch_device).eval()
    labels = _label_set(config, location, label_map, shown)
    digest = weights_digest(_checkpoint_folder(location, revision))
    return LoadedModel(shown, family, net, processor, labels, torch_device, torch_dtype, digest)


def model_labels(model: str, *, revision: str | None = None, label_map: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> tuple[LabelSet, int]:
    """A checkpoint's label set and label count, as `load_model` finds them, from its config
    alone: no weights load."""
    location = resolve_location(model, revision, storage_options)
    shown = redact_uri(model)
    config = _load_config(location, shown, {"revision": revision, "trust_remote_code": False})
    return _label_set(config, location, label_map, shown), int(config.num_labels)


def _load_config(location: str, shown: str, common: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, **common)
    except Exception as exc:
        raise ModelLoadError(f"could not load model {shown!r}: {exc}") from exc


def _label_set(config: Any, location: str, label_map: str | None, shown: str) -> LabelSet:
    if label_map is None and os.path.exists(os.path.join(location, LABELS_FILE)):
        label_map = os.path.join(location, LABELS_FILE)  # a checkpoint that ships its categories
    return match_label_set(dict(config.id2label), label_map=label_map, model=shown)


# Weight files in the order transformers prefers them; the first kind a folder has is the one
# it loaded.
WEIGHT_SUFFIXES = ((".safetensors",), (".bin", ".pt", ".pth"))


def _checkpoint_folder(location: str, revision: str | None) -> str | None:
    """The local folder holding the checkpoint's files: `location` itself, or the hub
    cache's snapshot that `from_pretrained` just filled."""
    if os.path.isdir(location):
        return location
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(location, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - no local snapshot: the digest is unknown, not an error
        return None


def weights_digest(folder: str | None) -> str | None:
    """sha256 over the names and contents of a checkpoint's weight files.

    A model is recorded by its path, and the same path can hold retrained weights; the
    destination's guard compares this digest, so a resume never mixes two models' outputs.
    """
    if folder is None:
        return None
    names = sorted(os.listdir(folder))
    for suffixes in WEIGHT_SUFFIXES:
        files = [n for n in names if n.endswith(suffixes)]
        if files:
            break
    else:
        return None
    total = hashlib.sha256()
    for name in files:
        one = hashlib.sha256()
        with open(os.path.join(folder, name), "rb") as f:
            while block := f.read(1 << 22):
                one.update(block)
        total.update(f"{name}\0{one.hexdigest()}\n".encode())
    return total.hexdigest()


def _load_processor(family: str, location: str, common: dict[str, Any]) -> Any:
    from transformers import AutoImageProcessor, OneFormerProcessor

    if family == "oneformer":
        return OneFormerProcessor.from_pretrained(location, **common)
    # The torchvision backend runs on the model's device.
    return AutoImageProcessor.from_pretrained(location, backend="torchvision", **common)
