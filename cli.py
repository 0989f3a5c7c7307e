"""The command line of ``app.py``: every option, and the ``--auth`` parser. ``python app.py
--help`` lists them."""

from __future__ import annotations

import argparse
import os

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="app.py", description="Danqing: a Chinese-first web studio for diffusion image generation.")
    p.add_argument("--demo", action="store_true", default=os.environ.get("DANQING_DEMO") == "1", help="use the demo bundle: tiny random-weight models generated locally (images are noise); also DANQING_DEMO=1")
    p.add_argument("--model", default=None, help="base model: a hub id, a folder name under MODELS_DIR/checkpoints, or a path to a diffusers folder (default: alibaba-pai/pai-diffusion-artist-large-zh)")
    p.add_argument("--vae", default="auto", metavar="NAME",
                   help="external VAE at start: auto (a file in MODELS_DIR/vae named like the model, else the model's own), none, or a file/folder name under MODELS_DIR/vae")
    p.add_argument("--extra-model-paths", default=None, metavar="FILE",
                   help="a ComfyUI-style extra_model_paths.yaml: more checkpoint, LoRA, VAE, embedding, ControlNet and upscaler folders, read-only")
    p.add_argument("--a1111-dir", default=None, metavar="PATH",
                   help="an AUTOMATIC1111 install whose models (Lora, LyCORIS, ControlNet, ESRGAN, Stable-diffusion folders) are listed too, read-only")
    p.add_argument("--comfyui-dir", default=None, metavar="PATH",
                   help="a ComfyUI install whose models (loras, controlnet, upscale_models, checkpoints) are listed too, read-only")
    p.add_argument("--models-dir", default="models", help="folder with checkpoints/, lora/, controlnet/, upscalers/, annotators/ (default: models)")
    p.add_argument("--outputs-dir", default="outputs", help="where generated images are saved, one sub-folder per day (default: outputs)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 on a HuggingFace Space)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--listen", action="store_true", help="bind 0.0.0.0 so other machines on the LAN can connect (needs --auth)")
    p.add_argument("--auth", default=None, help="login as USER:PASS; several as USER:PASS,USER2:PASS2")
    p.add_argument("--users", default=None, metavar="FILE",
                   help="accounts from a users file (salted scrypt hashes; add users with: python -m api.accounts add NAME FILE)")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow listening beyond localhost without a login (not recommended)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (needs a network)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="weights precision (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "xformers", "naive"], help="attention backend (default sdpa: PyTorch's FlashAttention-class kernels)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for the U-Net and VAE")
    p.add_argument("--fuse-qkv", action="store_true", help="fuse the U-Net's Q/K/V projections into one matmul")
    p.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile (bounded memory)")
    p.add_argument("--memory-mode", default="auto", choices=["auto", "resident", "park", "fp8"],
                   help="GPU memory: auto (from the free memory) | resident | park (text encoders on the CPU between "
                        "prompts) | fp8 (park + float8 denoiser weights)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (slow first run; GPU only worth it)")
    p.add_argument("--preview", default="auto", choices=["auto", "approx", "taesd", "off"],
                   help="live step previews: a tiny decoder from models/vae-approx (taesd) or the linear approximation")
    p.add_argument("--preview-every", type=float, default=1.0, metavar="SECONDS",
                   help="at most one live preview per this many seconds of a job")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    p.add_argument("--offline", action="store_true", help="never download models")
    p.add_argument("--admins", "--admin", dest="admins", default=None, metavar="USER[,USER]",
                   help="users of --auth who may change what everyone shares (prompt styles, the base model) and see everyone's history and queue; default: the first --auth user")
    p.add_argument("--team-gallery", action="store_true",
                   help="every saved image is in the team gallery (else each user shares images one by one)")
    p.add_argument("--allowed-hosts", default=os.environ.get("DANQING_ALLOWED_HOSTS"), metavar="NAME[,NAME]",
                   help="host names the server answers to besides localhost and IP addresses (DNS-rebinding guard); on a LAN bind without it, any name is accepted")
    p.add_argument("--forwarded-allow-ips", default=os.environ.get("FORWARDED_ALLOW_IPS", ""), metavar="IP[,NET]",
                   help="reverse proxies whose X-Forwarded-For/-Proto/-Host are believed (addresses or networks, e.g. 127.0.0.1); default none")
    p.add_argument("--max-user-outputs-mb", type=float, default=0, metavar="MB",
                   help="saved images one user may keep in outputs/ before new jobs are refused (0: no cap)")
    p.add_argument("--max-train-steps", type=int, default=0, metavar="N",
                   help="the most steps one LoRA training run may take (0: the engine's own limit, 20000)")
    p.add_argument("--train-slice-steps", type=int, default=100, metavar="N",
                   help="a training run lets another user's waiting run go first after this many steps, then resumes exactly (default 100)")
    p.add_argument("--login-window", type=float, default=60.0, metavar="SECONDS", help="after 5 failed logins from one address within this many seconds, refuse its logins until the window passes (default 60)")
    p.add_argument("--queue-size", type=int, default=64, help="jobs waiting at most; more are answered 'busy' (default 64)")
    p.add_argument("--session-capacity", type=int, default=1000, metavar="N",
                   help="page/API sessions whose state the server keeps (oldest dropped first; default 1000)")
    p.add_argument("--client-queue-limit", type=int, default=4, metavar="N",
                   help="jobs one client (address) may have waiting or running at once; 0: no limit (default 4)")
    p.add_argument("--lang", default=None, choices=["zh", "en"], help="interface language (default zh)")
    p.add_argument("--visible-label", action="store_true", help="also draw the explicit AI-generated mark on saved images (GB 45438-2025; the metadata label is always written)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the engine as Ray Serve replicas (one per GPU): a local Ray cluster, or join ADDRESS "
                        "(pip install -r requirements-ray.txt)")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: engine replicas (default 1)")
    p.add_argument("--min-replicas", type=int, default=0, help="with --ray and --max-replicas: autoscale from this many")
    p.add_argument("--max-replicas", type=int, default=0, help="with --ray: autoscale up to this many replicas on queue length")
    p.add_argument("--replica-threads", type=int, default=0, help="with --ray on CPU: torch threads per replica")
    p.add_argument("--api", action="store_true", help="serve AUTOMATIC1111's /sdapi/v1 REST API on the same port and login (docs at /docs)")
    p.add_argument("--extensions-dir", action="append", default=[], metavar="DIR", help="another folder of extensions besides extensions/ (repeatable)")
    return p.parse_args(argv)


def parse_auth(text: str | None, strings) -> list[tuple[str, str]] | None:
    if not text:
        return None
    pairs = []
    for item in text.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise SystemExit(strings.cli_bad_auth)
        pairs.append((user, password))
    return pairs
