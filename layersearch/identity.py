"""What names a teacher and a runtime in cache keys: the spec key's and the teacher targets'.

Its own module so that the proxy spec (fitness.spec) and the teacher-target
cache (data.targets), which each use the other's facts, share it without an
import circle.
"""

from __future__ import annotations

from pathlib import Path

from layersearch.digest import file_digest

# Files of a model directory that decide its outputs (not READMEs or pooling configs).
_MODEL_FILES = ("config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                "special_tokens_map.json")
_MODEL_SUFFIXES = (".safetensors", ".bin")


def teacher_identity(model: str, revision: str | None) -> dict:
    """A local directory's contents, or a hub repository's resolved commit."""
    from layersearch.models import load_teacher_config, resolve_teacher

    source = Path(resolve_teacher(model))
    if source.is_dir():
        files = sorted(p for p in source.iterdir()
                       if p.is_file() and (p.name in _MODEL_FILES or p.suffix in _MODEL_SUFFIXES))
        return {"files": {p.name: file_digest(p) for p in files}}
    config = load_teacher_config(model, revision)
    return {"hub": str(source), "commit": getattr(config, "_commit_hash", None) or revision}


def runtime_identity(device: str, precision: str, readout: str | None = None) -> dict:
    import torch
    import transformers

    from layersearch.precision import resolve_precision

    # The local build tag (+cpu, +cu121) names the kind of build, which the device
    # kind already covers: a CPU driver and its GPU workers must agree on the key.
    return {"device": device, "precision": resolve_precision(precision, device, readout),
            "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
