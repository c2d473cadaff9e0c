"""The pipeline's session: what every stage shares (config, validation stream, its byte source: the
tokenizer byte tables, or the CaseOps validation sidecar with data.caseops; the training run's own
records), loaded once per process."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from pgolf_core.challenge import WORLD_SIZE
from pgolf_core.checkpoint import load_checkpoint
from pgolf_core.compliance import check_byte_recount
from pgolf_core.compliance.run_checks import OFFICIAL_SIDECAR_REL_TOL, byte_reference
from pgolf_core.config import RunConfig
from pgolf_core.data.loader import load_validation_tokens
from pgolf_core.data.shards import list_shards
from pgolf_core.data.tokenizer import is_caseops_tokenizer, load_tokenizer
from pgolf_core.data.tokenizer_bytes import build_byte_luts
from pgolf_core.dist import DistInfo, dist_info_from_env, init_process_group, resolve_device
from pgolf_core.eval import load_target_bytes
from pgolf_core.model import build_model
from pgolf_core.pipeline.verdicts import data_split_verdict
from pgolf_core.stages import Verdict


class Session:
    """Everything the stages share: config, data, tables, the run's own records.

    Notebooks use it directly for ablations: ``session.with_config(cfg_variant)`` shares the loaded
    data and evaluates another quant / TTT / n-gram setting on the same weights.
    """

    def __init__(self, cfg: RunConfig, train_dir: Path, out_dir: Path, dist: DistInfo, device: torch.device):
        self.cfg, self.train_dir, self.out_dir, self.dist, self.device = cfg, train_dir, out_dir, dist, device
        dc = cfg.data
        self.sp = load_tokenizer(dc.tokenizer_path())
        self.luts = build_byte_luts(self.sp, cfg.model.vocab_size)
        val_files = list_shards(dc.root_path() / dc.val_pattern)
        self.val = load_validation_tokens(
            val_files, cfg.eval_seq_len, dc.val_max_tokens, cfg.model.vocab_size
        )
        # Every stage's bpb denominator: the byte tables, or with data.caseops the sidecar aligned
        # with self.val (the original text's bytes; ``target_bytes.kind`` goes on every stage record).
        self.target_bytes = load_target_bytes(
            dc, self.luts, val_files, seq_len=cfg.eval_seq_len, n_tokens=self.val.shape[0]
        )
        self.run = (
            json.loads((train_dir / "run.json").read_text()) if (train_dir / "run.json").is_file() else {}
        )
        self.on_target = self._on_target()
        self.hardware = self.run.get("device_name") or str(device)
        # T10's count of self.val, made once; a dict, so that with_config's copies share it
        self._byte_reference: dict[bool, tuple[int, str]] = {}
        self._t9: Verdict | None = None

    @classmethod
    def open(
        cls, cfg: RunConfig, train_dir: str | Path, out_dir: str | Path, dist: DistInfo | None = None
    ) -> Session:
        dist = dist or dist_info_from_env()
        device = resolve_device(cfg.train.device, dist)
        init_process_group(dist, device)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return cls(cfg, Path(train_dir), out, dist, device)

    def with_config(self, cfg: RunConfig) -> Session:
        """The same data and run, another config (the model section must not change)."""
        if cfg.model != self.cfg.model or cfg.data != self.cfg.data:
            raise ValueError(
                "with_config: a variant may change quant / eval / ttt / ngram, not model or data"
            )
        # (the validation stream loaded for this session is shared, so data must match exactly)
        other = copy.copy(self)
        other.cfg = cfg
        return other

    def weights(self, which: str = "final") -> dict:
        """Checkpoint weights: "raw", "ema", or "final" (EMA when the run has it, as the artifact uses)."""
        ckpt = self.train_dir / "checkpoints"
        if which == "final":
            which = "ema" if (ckpt / "final_ema.pt").is_file() else "raw"
        path = ckpt / f"final_{which}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {which} weights in this run")
        return load_checkpoint(path)

    def _on_target(self) -> bool:
        if self.device.type != "cuda" or self.dist.world_size != WORLD_SIZE:
            return False
        return "H100" in torch.cuda.get_device_name(self.device)

    def t10(self, table_bytes: int) -> Verdict:
        """T10 for one stage: the bytes its bpb divided by (``table_bytes``) against an independent count
        of the validation text, judged afresh for every stage. For CaseOps data (``data.caseops``, or a
        CaseOps tokenizer) the count undoes the transform, so a stage that divides by the transformed
        text's bytes fails (#2138); against the official CaseOps export's sidecar the count may differ
        by ``OFFICIAL_SIDECAR_REL_TOL`` (its raw spans against the normalized text).

        Every stage scores the same stream (``self.val``), so the count, a decode of it, is made once
        per session and reused, as the reason says; the verdict is never reused."""
        caseops = bool(self.cfg.data.caseops or is_caseops_tokenizer(self.sp))
        if caseops not in self._byte_reference:
            self._byte_reference[caseops] = byte_reference(self.val, self.sp, caseops=caseops)
        ref, what = self._byte_reference[caseops]
        official = caseops and self.cfg.data.source == "official"
        return check_byte_recount(
            self.val,
            table_bytes=table_bytes,
            reference_bytes=ref,
            reference=f"{what} (the stream every stage scores, decoded once per session)",
            rel_tol=OFFICIAL_SIDECAR_REL_TOL if official else 0.0,
        )

    def t9(self) -> Verdict:
        """T9 once per pipeline: the whole validation split (not the evaluated, possibly capped stream)
        against the first ``eval.split_check_tokens`` training tokens; a data audit, outside eval timing."""
        if self._t9 is None:
            self._t9 = data_split_verdict(self.cfg.data, self.cfg.eval.split_check_tokens)
        return self._t9

    def model_with(self, state: dict) -> torch.nn.Module:
        model = build_model(self.cfg.model, device=self.device).to(self.device)
        model.load_state_dict(state)
        model.set_loops(True)  # the records evaluate (and run TTT) with the loops on (#1394, #1493)
        return model.eval()

    @property
    def autocast(self) -> bool:
        return self.cfg.train.autocast and self.device.type == "cuda"
