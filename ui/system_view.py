"""系统信息 as people read it: what runs where (model, device, precision, attention), the speed
switches, every resident model with its size in MB/GB, the extensions. The JSON stays behind a
fold (and is what the ``system_info`` API returns)."""

from __future__ import annotations


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _name(row: dict) -> str:
    """A resident model's name as people know it: the base model's parts by the model's name
    (the kind column says which part), anything else by its file."""
    name, kind = str(row.get("name") or ""), str(row.get("kind") or "")
    return name[: -len(kind) - 1] if kind and name.endswith("/" + kind) else name


def system_markdown(S, info: dict) -> str:
    if not isinstance(info, dict) or not info:
        return ""
    yes, no = S.system_on, S.system_off
    speed = info.get("speed_options") or {}
    rows = [
        (S.system_model, f"{info.get('model', '?')}" + (f" · {S.system_demo}" if info.get("demo") else "")),
        (S.system_device, f"{info.get('device', '?')} · {info.get('dtype', '?')} · {S.system_threads.format(n=info.get('threads', '?'))}"),
        (S.system_attention, str(info.get("attention", "?"))),
        (S.system_speed, S.list_sep.join(f"{S.speed_names.get(name, name)} {yes if value else no}"
                                         for name, value in speed.items() if name != "attention") or "-"),
        (S.system_version, f"Danqing {info.get('version', '?')} · torch {info.get('torch', '?')}"),
    ]
    memory = info.get("memory")
    if isinstance(memory, dict):
        mode = S.memory_modes.get(memory.get("mode"), memory.get("mode"))
        if memory.get("mode") == "gguf" and memory.get("parked"):
            mode += " + " + S.memory_modes["park"]
        rows.insert(3, (S.system_memory, f"{mode} · {S.memory_why.get(memory.get('why'), memory.get('why'))}"))
    split = info.get("split_files")
    if isinstance(split, dict):
        rows.insert(1, (S.system_split, " + ".join(str(v) for v in split.values())))
    if "ray_replicas" in info:  # --ray: the engine runs on Ray Serve replicas, not in this process
        states = S.list_sep.join(S.system_replica_count.format(state=S.system_replica_states.get(r["state"], r["state"]),
                                                               n=r["count"]) for r in info["ray_replicas"]) or "-"
        rows.insert(1, (S.system_replicas, states))
    lines = [f"| {S.system_item} | {S.system_value} |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    resident = info.get("resident") or []
    if resident:
        total = sum(r.get("bytes", 0) for r in resident)
        lines += ["", f"**{S.system_resident.format(size=size_text(total))}**", "",
                  f"| {S.system_name} | {S.system_kind} | {S.system_size} |", "|---|---|---|"]
        lines += [f"| {_name(r)} | {S.system_kinds.get(r.get('kind'), r.get('kind'))} | {size_text(r.get('bytes', 0))} |"
                  for r in resident]
    extensions = info.get("extensions") or []
    if extensions:
        lines += ["", f"**{S.system_extensions}**", ""]
        lines += [f"- {e.get('title') or e.get('name')}: {S.system_ext_ok if e.get('status') == 'ok' else S.system_ext_failed}"
                  for e in extensions]
    return "\n".join(lines)
