"""The cost of serving LoRA adapters: one decode step of the embedded model for a batch of 8,
plain vs wrapped by peft with rows on the base model, on one adapter, and on a mix of two
adapters and the base (peft's mixed-batch `adapter_names`, as the batching engine runs it).

Adapters of rank 16 on all seven linear projections, random (non-zero) weights; 200-token
prompts; the median step of 32, best of three runs; one torch thread."""

from __future__ import annotations

import contextlib
import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

BATCH, PROMPT_TOKENS, STEPS, RUNS = 8, 200, 32, 3
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapters(plain, folder: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    for seed, name in enumerate(("pirate", "poet")):
        torch.manual_seed(seed)
        config = LoraConfig(r=16, lora_alpha=32, target_modules=PROJECTIONS, init_lora_weights=False)
        get_peft_model(copy.deepcopy(plain), config).save_pretrained(folder / name)


def _step_ms(model, config, adapter_names: list[str] | None) -> float:
    import torch
    from transformers import DynamicCache

    names = {"adapter_names": adapter_names} if adapter_names else {}
    prompt = torch.randint(100, 20_000, (BATCH, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        cache = DynamicCache(config=config)
        model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1, **names)
        token = torch.full((BATCH, 1), 42)
        for step in range(STEPS):
            mask = torch.ones(BATCH, PROMPT_TOKENS + step + 1, dtype=torch.long)
            started = time.perf_counter()
            model(input_ids=token, attention_mask=mask, position_ids=torch.full((BATCH, 1), PROMPT_TOKENS + step),
                  cache=cache, use_cache=True, logits_to_keep=1, **names)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def main() -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bot.llm import embedded

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    source = embedded.converted_model_dir()
    plain = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as folder:
        _adapters(plain, Path(folder))
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32),
                                          Path(folder) / "pirate", adapter_name="pirate")
        tuned.load_adapter(Path(folder) / "poet", adapter_name="poet")
        tuned.eval()
    def one_adapter(name):  # peft's single-adapter path, as the engine runs a batch all on one adapter
        tuned.set_adapter(name)
        return contextlib.nullcontext()

    cases = {
        "no adapters (model not wrapped)": (plain, None, contextlib.nullcontext),
        "adapters loaded, every row on the base (mixed path)": (tuned, ["__base__"] * BATCH, contextlib.nullcontext),
        "adapters loaded, every row on the base (disabled)": (tuned, None, tuned.disable_adapter),
        "every row on one adapter (mixed path)": (tuned, ["pirate"] * BATCH, contextlib.nullcontext),
        "every row on one adapter (single-adapter path)": (tuned, None, lambda: one_adapter("pirate")),
        "rows on two adapters and the base": (tuned, ["pirate"] * 3 + ["poet"] * 3 + ["__base__"] * 2,
                                              contextlib.nullcontext),
    }
    best = {}
    for name, (model, names, context) in cases.items():
        with context():
            best[name] = min(_step_ms(model, plain.config, names) for _ in range(RUNS))
    plain_ms = best["no adapters (model not wrapped)"]
    print(f"Adapters: one decode step, batch {BATCH}, {PROMPT_TOKENS}-token prompts, 1 torch thread")
    for name, ms in best.items():
        print(f"  {name:52s} {ms:6.1f} ms  {ms / plain_ms:5.2f}x")
