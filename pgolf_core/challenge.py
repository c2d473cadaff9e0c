"""The challenge's fixed numbers, defined once. Config defaults and every check read them from here.

From the Parameter Golf rules (openai/parameter-golf README): the artifact is the counted code bytes
plus the compressed model, against a decimal cap; training and evaluation each get 600 s on 8xH100 SXM;
the score is bpb on the first 50,000 FineWeb validation documents.
"""

from __future__ import annotations

BYTE_CAP = 16_000_000  # decimal bytes: counted code + compressed model
TRAIN_SECONDS = 600.0  # training wallclock on 8xH100 SXM, evaluation excluded
EVAL_SECONDS = 600.0  # evaluation wallclock, separately
VAL_DOCS = 50_000  # the canonical validation split: the first 50,000 documents
WORLD_SIZE = 8  # GPUs of the scored run; gradient accumulation defaults to WORLD_SIZE // world_size
