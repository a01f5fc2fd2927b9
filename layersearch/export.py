"""Write a student as an ordinary Hugging Face model directory, atomically."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch


def save_model_dir(student: torch.nn.Module, tokenizer, output_dir: str | Path,
                   extra_files: dict[str, str] | None = None) -> Path:
    """Save weights (safetensors), config and tokenizer so ``AutoModel`` loads the result.

    Everything is written to a sibling temporary folder and renamed into place,
    so a crash leaves either the previous directory or the new one, never half.
    ``extra_files`` maps file names to text (mapping.json, the resolved config).
    """
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name[-8:]}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
