"""The M-step: train the teacher's LoRA on the selected (prompt, self-edit) pairs, in this process or sharded.

`run_m_step` trains with `teacher.sft` (TRL `SFTTrainer`, completion-only loss) here, or, with `m_step.deepspeed`
set, over launched processes (`teacher.m_step_sharded`), and saves a verified adapter either way.
"""

from __future__ import annotations

from pathlib import Path

from core.adapters import save_peft_adapter
from core.config import MStepSettings, ModelSettings
from core.lora import load_with_lora
from core.models import load_tokenizer, pick_device
from teacher.m_step_sharded import run_m_step_sharded
from teacher.sft import sft_lora


def run_m_step(
    model: ModelSettings,
    pairs: list[dict],
    settings: MStepSettings,
    out_dir: str | Path,
    *,
    init_adapter: str | Path | None = None,
    use_chat_template: str = "auto",
    seed: int = 0,
) -> dict:
    """Train the teacher's LoRA on `pairs` ({"prompt", "completion"}) and save the adapter to `out_dir`.

    With `settings.deepspeed` set, the training runs sharded in `settings.nproc` launched processes
    (`teacher.m_step_sharded`; `batch_size` is then per process); otherwise in this process.
    """
    if not pairs:
        raise ValueError("the M-step needs at least one (prompt, completion) pair")
    if settings.deepspeed is not None:
        info = run_m_step_sharded(model, pairs, settings, out_dir, init_adapter=init_adapter,
                                  use_chat_template=use_chat_template, seed=seed)
    else:
        tokenizer = load_tokenizer(model.path, trust_remote_code=model.trust_remote_code)
        peft_model = load_with_lora(model, init_adapter, settings.lora, trainable=True, seed=seed)
        info = sft_lora(peft_model, tokenizer, pairs, settings, device=pick_device(model.device),
                        use_chat_template=use_chat_template, seed=seed)
        trained = {n: p.detach().cpu().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
        save_peft_adapter(peft_model, out_dir, expected=trained)
    info["init"] = str(init_adapter) if init_adapter else "fresh"
    return info
