"""Shrink a training run's checkpoint before committing it (bf16 adapter, no optimizer state).

    python project/scripts/slim_checkpoint.py training_runs/default-3ep/checkpoint
"""
import sys
from pathlib import Path

from spacy_padellm.training.checkpoints import slim_checkpoint

slim_checkpoint(Path(sys.argv[1]))
print(f"slimmed {sys.argv[1]}: " + ", ".join(f"{f.name} {f.stat().st_size // 1024} KB"
                                            for f in sorted(Path(sys.argv[1]).iterdir())))
