"""训练 LoRA without the browser, for servers and scripts: the same engine as the 训练 tab.

    python train.py --images DIR --name 我的风格 --trigger mystyle --preset standard
    python train.py --images DIR --name 我的风格 --resume          # after a stop or a crash

Pictures are the image files in DIR; a same-name ``.txt`` beside a picture is its caption (or,
with ``--captioner NAME``, a local captioning model in MODELS_DIR/captioners writes one). The
LoRA goes to MODELS_DIR/lora/NAME.safetensors; checkpoints and samples to
OUTPUTS_DIR/training/NAME/. Ctrl+C stops after the current step and keeps a checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="folder of pictures (captions: same-name .txt files)")
    p.add_argument("--name", required=True, help="the LoRA's name (its file name)")
    p.add_argument("--trigger", default="", help="trigger word put first in every caption")
    p.add_argument("--preset", default="standard", choices=["fast", "standard", "fine"])
    for knob, kind in (("steps", int), ("epochs", int), ("repeats", int), ("rank", int), ("alpha", float), ("learning-rate", float),
                       ("text-encoder-lr", float), ("resolution", int), ("batch-size", int), ("seed", int),
                       ("save-every", int), ("sample-every", int), ("min-snr-gamma", float)):
        p.add_argument(f"--{knob}", type=kind, default=None)
    p.add_argument("--sample-prompt", default=None)
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--no-buckets", action="store_true", help="centre-crop every picture to a square")
    p.add_argument("--captioner", default=None,
                   help="a folder in MODELS_DIR/captioners: captions for the pictures without a .txt")
    p.add_argument("--resume", action="store_true", help="continue the run of this name from its checkpoint")
    p.add_argument("--model", default=None, help="base model (as app.py's --model)")
    p.add_argument("--models-dir", default="models")
    p.add_argument("--outputs-dir", default="outputs")
    p.add_argument("--demo", action="store_true", help="train on the demo bundle's tiny model (tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--lang", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import strings
    from pipelines.errors import DanqingError
    from pipelines.outputs import OutputWriter
    from pipelines.requests import TrainLora
    from pipelines.store import ModelStore
    from pipelines.studio import Studio
    from startup import EngineOptions, choose_model

    S = strings.load(args.lang)
    # 1. The pictures and their captions.
    folder = Path(args.images)
    pictures = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_ENDINGS and p.is_file()) \
        if folder.is_dir() else []
    captions = [(p.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip()
                 if p.with_suffix(".txt").is_file() else "") for p in pictures]
    knobs = {k: getattr(args, k) for k in ("steps", "epochs", "repeats", "rank", "alpha", "learning_rate", "text_encoder_lr", "resolution",
                                           "batch_size", "seed", "save_every", "sample_every", "min_snr_gamma",
                                           "sample_prompt")}

    def build(captions: list[str]) -> TrainLora:
        return TrainLora.build(args.name, args.trigger, [str(p) for p in pictures], captions, preset=args.preset,
                               train_text_encoder=args.train_text_encoder or None,
                               gradient_checkpointing=args.gradient_checkpointing or None,
                               buckets=False if args.no_buckets else None, **knobs)

    try:
        request = build(captions)  # bad knobs are refused before the model loads
        # 2. The model (as app.py chooses it) and one studio over it.
        started = choose_model(EngineOptions(model=args.model, models_dir=args.models_dir, outputs_dir=args.outputs_dir,
                                             demo=args.demo, offline=True, device=args.device, dtype=args.dtype))
        if started.missing_model:
            print(strings.error_text(S, "model_missing_offline", {"name": started.missing_model}), file=sys.stderr)
            return 2
        studio = Studio(ModelStore(started.settings), OutputWriter(Path(args.outputs_dir)))
        missing = [i for i, c in enumerate(captions) if not c]
        if args.captioner and missing:
            written = studio.caption_pictures([str(pictures[i]) for i in missing], args.captioner, client="cli")
            for i, text in zip(missing, written):
                captions[i] = text
                print(f"{pictures[i].name}: {text}", flush=True)
            request = build(captions)
        run_dir = Path(args.outputs_dir) / "training" / request.name

        # 3. Train; Ctrl+C stops after the step and keeps a checkpoint.
        signal.signal(signal.SIGINT, lambda *_: studio.stop("cli"))

        def report(step: int, total: int, loss: float) -> None:
            if step == 1 or step % 10 == 0 or step == total:
                print(f"step {step}/{total}  loss {loss:.4f}", flush=True)

        result = studio.train_lora(request, run_dir, client="cli", on_step=report, resume=args.resume)
    except DanqingError as exc:
        print(strings.error_text(S, exc.code, exc.fields), file=sys.stderr)
        return 2
    if result.stopped:
        print(f"stopped at step {result.steps_done}; resume with --resume ({run_dir})")
        return 1
    print(f"saved {result.path} ({result.steps_done} steps, {result.seconds:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
