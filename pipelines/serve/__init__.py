"""More than one GPU: the engine as Ray Serve replicas (``python app.py --ray``).

- ``replica.py`` — the Ray Serve deployment: each replica owns a ModelStore (one U-Net per GPU,
  its own LoRA and ControlNet caches) and runs the generation tasks, streaming steps, live
  previews and the result back; a cancelled stream stops its job within one step.
- ``remote.py`` — the front process's side: starts (or joins) Ray, deploys the replicas, and
  runs a task on one of them for the studio, retrying once on another replica when one dies.

Nothing here imports Ray at module import time; without ``--ray`` it is never imported.
"""
