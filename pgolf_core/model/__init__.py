"""The pgolf GPT and its components (records.md B), one file per component family.

    model = build_model(cfg.model)        # fp32 parameters on CPU, attention backend chosen once
    logits = model(input_ids)             # (B, T, V) fp32, softcapped
    loss = model(input_ids, target_ids)   # mean CE
    nll = model.nll(input_ids, target_ids)
    model.set_looping(True)               # depth recurrence on (no-op without num_loops)
    load_challenge_state_dict(model, "final_model.pt")  # a challenge baseline run's weights
"""

from pgolf_core.model.attention import select_attention_backend
from pgolf_core.model.challenge_weights import load_challenge_state_dict
from pgolf_core.model.gpt import GPT, build_model, count_parameters
from pgolf_core.model.residual import LayerPlan, layer_plan, virtual_layers

__all__ = [
    "GPT",
    "LayerPlan",
    "build_model",
    "count_parameters",
    "layer_plan",
    "load_challenge_state_dict",
    "select_attention_backend",
    "virtual_layers",
]
