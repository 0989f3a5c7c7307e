"""The tasks: one module per task, each a plain function over the store and a request
(txt2img, controlnet, upscale), plus what they share (the denoise loop, LoRA switching,
annotators, schedulers, prompts, previews, DeepCache). They run inside the job context."""
