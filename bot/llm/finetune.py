"""`python -m bot finetune`: train a LoRA adapter on exported conversations.

The data side (reading and checking the export's JSONL, the held-out split, and the tokens with
their assistant-only loss mask) is bot.llm.training_data; this module loads the model, trains
the adapter with TRL's SFTTrainer, saves it, and is the command.

Nothing here imports torch, transformers, peft or trl at module level: the CLI loads this module
cheaply, and the heavy imports happen when training starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import ModelSettings
from .training_data import FinetuneError, build_dataset, read_conversations, split_conversations

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'smolbot[train]'"
METADATA_FILE = "finetune.json"


@dataclass(frozen=True)
class FinetuneOptions:
    """Defaults suit SmolLM3-3B on one GPU: LoRA r=16 on every linear projection, an effective
    batch of 16 conversations, two epochs."""

    data: Path
    out: Path
    epochs: float = 2.0
    max_steps: int | None = None  # overrides epochs
    learning_rate: float = 2e-4
    rank: int = 16
    alpha: int | None = None  # default: twice the rank
    dropout: float = 0.05
    batch_size: int = 4
    gradient_accumulation: int = 4
    max_length: int = 2048
    eval_fraction: float = 0.1
    seed: int = 0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, f"--epochs must be above 0 (got {self.epochs})"),
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps must be at least 1 (got {self.max_steps})"),
            (self.learning_rate > 0, f"--learning-rate must be above 0 (got {self.learning_rate})"),
            (self.rank >= 1, f"--rank must be at least 1 (got {self.rank})"),
            (self.alpha is None or self.alpha >= 1, f"--alpha must be at least 1 (got {self.alpha})"),
            (0 <= self.dropout < 1, f"--dropout must be from 0 to below 1 (got {self.dropout})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.gradient_accumulation >= 1,
             f"--gradient-accumulation must be at least 1 (got {self.gradient_accumulation})"),
            (self.max_length >= 16, f"--max-length must be at least 16 tokens (got {self.max_length})"),
            (0 < self.eval_fraction < 1, f"--eval-fraction must be between 0 and 1 (got {self.eval_fraction})"),
        ]
        for ok, problem in checks:
            if not ok:
                raise FinetuneError(problem + ".")

    @property
    def lora_alpha(self) -> int:
        return self.alpha or 2 * self.rank


@dataclass
class FinetuneResult:
    out: Path
    base_model: str
    loss_before: float
    loss_after: float
    train_conversations: int
    eval_conversations: int
    steps: int
    seconds: float


# Training ----------------------------------------------------------------------------------------


def _import_training_libraries() -> None:
    try:
        import datasets  # noqa: F401
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as error:
        raise FinetuneError(f"Fine-tuning needs trl and peft ({error.name} is missing); "
                            f"install them with: {INSTALL_HINT}") from None


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty --out (unless overwrite), and make sure it can be made, before training
    (it is made when the adapter is saved: a run that fails leaves no empty folder)."""
    from ..paths import why_not_creatable

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"--out {out} is a file, not a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FinetuneError(f"--out {out} exists and is not empty; choose another directory "
                            "or pass --overwrite to replace the adapter there.")
    if not out.exists() and (problem := why_not_creatable(out)):
        raise FinetuneError(f"--out {out} cannot be made: {problem}.")


def load_model_for_training(settings: ModelSettings):
    """The configured model through the bot's own loader (embedded resolution, dtype, load errors),
    as a TransformersBackend. On a CPU, dtype "auto" means float32: bfloat16 training on a CPU is
    slow or emulated. Configured serving adapters are not loaded: training starts from the base."""
    import torch

    from .transformers_backend import load_transformers_backend

    if settings.dtype == "auto" and not torch.cuda.is_available():
        settings = dataclasses.replace(settings, dtype="float32")
    return load_transformers_backend(dataclasses.replace(settings, adapter="", adapters_dir=""))


def lora_config(options: FinetuneOptions):
    from peft import LoraConfig

    return LoraConfig(r=options.rank, lora_alpha=options.lora_alpha, lora_dropout=options.dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")


def make_trainer(model, tokenizer, train_dataset, eval_dataset, options: FinetuneOptions, output_dir: str):
    """TRL's SFTTrainer with a fresh LoRA adapter on `model` (which peft changes in place)."""
    import torch
    from trl import SFTConfig, SFTTrainer

    on_gpu = model.device.type == "cuda"
    # Mixed precision follows the weights: bfloat16 weights train with bf16 autocast, float16 ones
    # with fp16; float32 (every CPU run, by default) with neither.
    bf16 = on_gpu and model.dtype == torch.bfloat16
    fp16 = on_gpu and model.dtype == torch.float16
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ \
        else "gradient_checkpointing"  # its older name
    config = SFTConfig(
        output_dir=output_dir,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,
        learning_rate=options.learning_rate,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation,
        max_length=options.max_length,
        bf16=bf16,
        fp16=fp16,
        **{checkpointing: on_gpu},  # memory for a 3B model's activations; on a CPU it only slows down
        assistant_only_loss=False,  # our own assistant_masks column does this (see bot.llm.training_data)
        completion_only_loss=False,
        packing=False,
        eval_strategy="no",  # evaluated once before and once after training, by finetune()
        save_strategy="no",  # no checkpoints: the adapter is saved once, at the end
        logging_steps=0.1,  # a loss line every tenth of the run
        report_to="none",
        disable_tqdm=not options.progress,
        dataloader_pin_memory=on_gpu,
        use_cpu=model.device.type == "cpu",  # else the trainer moves a model loaded on the CPU to a GPU
        seed=options.seed,
        data_seed=options.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers property
        trainer = SFTTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                             processing_class=tokenizer, peft_config=lora_config(options))
    return with_loss_lines(trainer)


def with_loss_lines(trainer):
    """transformers prints each log as a raw dict ({'loss': '2.708', 'grad_norm': ...}) under
    its progress bar; a log line per loss reads better. The bar itself (at a terminal) stays."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    class LossLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and state.is_world_process_zero:
                log.info("Step %d of %d: training loss %.4f", state.global_step, state.max_steps, float(logs["loss"]))

    callbacks = trainer.callback_handler.callbacks
    if any(isinstance(callback, ProgressCallback) for callback in callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(BarOnly)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LossLines)
    return trainer


def finetune(settings: ModelSettings, options: FinetuneOptions) -> FinetuneResult:
    """Check everything, train, save the adapter to options.out; the model is loaded last-but-one,
    so that bad data or a bad --out is reported in a second, not after loading a 3B model."""
    conversations = read_conversations(options.data)
    train, held_out = split_conversations(conversations, options.eval_fraction, options.seed)
    check_output_dir(options.out, options.overwrite)
    _import_training_libraries()
    from transformers import set_seed

    backend = load_model_for_training(settings)
    train_dataset = build_dataset(backend, train, options.max_length, "training")
    eval_dataset = build_dataset(backend, held_out, options.max_length, "held-out")
    log.info("Training a LoRA adapter (r=%d) on %d conversation(s); %d held out.",
             options.rank, len(train_dataset), len(eval_dataset))
    started = time.monotonic()
    set_seed(options.seed)  # the LoRA weights are initialised when the trainer is made
    with tempfile.TemporaryDirectory(prefix="smolbot-finetune-") as scratch:
        trainer = make_trainer(backend.model, backend.tokenizer, train_dataset, eval_dataset, options, scratch)
        loss_before = trainer.evaluate()["eval_loss"]
        log.info("Held-out loss before training: %.4f", loss_before)
        trainer.train()
        loss_after = trainer.evaluate()["eval_loss"]
        seconds = time.monotonic() - started
        result = FinetuneResult(out=Path(options.out), base_model=settings.name, loss_before=loss_before,
                                loss_after=loss_after, train_conversations=len(train_dataset),
                                eval_conversations=len(eval_dataset), steps=trainer.state.global_step,
                                seconds=seconds)
        save_adapter(trainer.model, result, options, settings)
    return result


def save_adapter(model, result: FinetuneResult, options: FinetuneOptions, settings: ModelSettings) -> None:
    """The standard peft layout at the top of out (adapter_config.json, adapter_model.safetensors)
    plus finetune.json. Written beside it first and then moved in, so that a failure while writing
    leaves whatever was in out untouched; --overwrite replaces only the files saved here."""
    import peft
    import trl

    out = Path(options.out)
    staging = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        model.save_pretrained(staging)
        # peft's model card template ("# Model Card for Model ID", base_model a cache path):
        # finetune.json says what it would, truly.
        (staging / "README.md").unlink(missing_ok=True)
        metadata: dict[str, Any] = {
            "base_model": result.base_model,
            "base_model_path": model.peft_config["default"].base_model_name_or_path,
            "thinking": settings.thinking,
            "loss_before": round(result.loss_before, 6),
            "loss_after": round(result.loss_after, 6),
            "train_conversations": result.train_conversations,
            "eval_conversations": result.eval_conversations,
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "options": {key: (str(value) if isinstance(value, Path) else value)
                        for key, value in dataclasses.asdict(options).items()
                        if key not in ("out", "overwrite", "progress")} | {"alpha": options.lora_alpha},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"peft": peft.__version__, "trl": trl.__version__},
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(staging):
            os.replace(staging / name, out / name)
    except OSError as error:
        raise FinetuneError(f"The adapter could not be saved to {out}: {error.strerror or error}.") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


# The command -------------------------------------------------------------------------------------


def options_from_args(args) -> FinetuneOptions:
    return FinetuneOptions(
        data=Path(args.data), out=Path(args.out), epochs=args.epochs, max_steps=args.max_steps,
        learning_rate=args.learning_rate, rank=args.rank, alpha=args.alpha, dropout=args.dropout,
        batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation,
        max_length=args.max_length, eval_fraction=args.eval_fraction, seed=args.seed,
        overwrite=args.overwrite)


def add_arguments(parser) -> None:
    """The finetune subcommand's options (defaults: FinetuneOptions)."""
    defaults = FinetuneOptions(data=Path(), out=Path())
    parser.add_argument("--data", required=True, help="the conversations: a JSONL file from `python -m bot export`")
    parser.add_argument("--out", required=True, help="directory for the adapter (must be empty or new)")
    parser.add_argument("--overwrite", action="store_true", help="replace an adapter already in --out")
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help="passes over the data (default 2)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="default 2e-4")
    parser.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank (default 16)")
    parser.add_argument("--alpha", type=int, help="LoRA alpha (default: twice the rank)")
    parser.add_argument("--dropout", type=float, default=defaults.dropout, help="LoRA dropout (default 0.05)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="conversations per device and step (default 4)")
    parser.add_argument("--gradient-accumulation", type=int, default=defaults.gradient_accumulation,
                        help="batches per optimizer step (default 4)")
    parser.add_argument("--max-length", type=int, default=defaults.max_length,
                        help="tokens per conversation; longer ones are cut (default 2048)")
    parser.add_argument("--eval-fraction", type=float, default=defaults.eval_fraction,
                        help="share of conversations held out to measure the loss (default 0.1, at least one)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="for the split, the LoRA init and the order")


def run_command(settings: ModelSettings, args) -> int:
    result = finetune(settings, options_from_args(args))
    change = (result.loss_after - result.loss_before) / result.loss_before if result.loss_before else math.nan
    print(f"Held-out loss: {result.loss_before:.4f} before, {result.loss_after:.4f} after ({change:+.1%}), "
          f"on {result.eval_conversations} held-out conversation(s).")
    print(f"Trained {result.steps} step(s) on {result.train_conversations} conversation(s) in "
          f"{result.seconds:.0f} s. Adapter saved to {result.out}.")
    return 0
