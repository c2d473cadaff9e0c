"""``python -m pgolf_core.pipeline TRAIN_DIR --out DIR`` (also under torchrun)."""

from pgolf_core.pipeline.driver import main

raise SystemExit(main())
