"""An update's report, `updates/NNNN/report.md` (and what `seal-tt update` prints)."""

from __future__ import annotations

from pipeline.store.state import describe_writer


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def update_markdown(entry: dict) -> str:
    """`entry`: the update's report as its update.json holds it."""
    m = entry["metrics"]
    lines = [f"# Update {entry['number']} ({entry['decision']})", "",
             f"- documents: {len(entry['new'])} new, {len(entry['changed'])} changed"
             + (f"; probes written by the teacher for {len(entry['teacher_probes'])}" if entry.get("teacher_probes") else "")
             + (f"; {len(entry['unmeasured'])} with no probe (absorbed unmeasured: {', '.join(entry['unmeasured'][:5])})"
                if entry.get("unmeasured") else ""),
             f"- training: {entry['sequences']} sequences ({entry['replayed']} replayed), {entry['steps']} steps",
             f"- earlier probes ({entry['probed_earlier']} of {entry['earlier']} documents): "
             f"{_fmt(entry['retention_before'])} -> {_fmt(entry['retention_after'])}",
             f"- drift: {_fmt(entry['drift_bits_per_token'])} bits/token (KL to the base)",
             f"- store: acquisition {_fmt(m['acquisition'])}, retention {_fmt(m['retention'])}, "
             f"backward transfer {_fmt(m['backward_transfer'])}, gain kept {_fmt(m['gain_kept'])}",
             "- seconds: " + ", ".join(f"{k.replace('_seconds', '')} {v:.1f}" for k, v in entry["timings"].items())]
    writers = _writers(entry.get("self_edits_by"))
    if writers:
        lines.append(f"- self-edits written by {writers}")
    if entry["decision"] != "accepted":
        lines.append(f"- gate: {entry['decision']} (tries: "
                     + ", ".join(f"scale {t['scale']:g} drop {_fmt(t['drop'])}" for t in entry["gate_tries"]) + ")")
    if entry.get("broken"):
        lines += ["", "Probes this update broke (right before, wrong after):", ""]
        lines += [f"- {b['document']}: {b['question']} ({' | '.join(b['answers'])})" for b in entry["broken"]]
    for note in entry.get("notes", []):
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def _writers(by: dict | None) -> str:
    if not by:
        return ""
    counts: dict[str, int] = {}
    for writer in by.values():
        name = describe_writer(writer)
        counts[name] = counts.get(name, 0) + 1
    return "; ".join(f"{name} ({n} documents)" for name, n in counts.items())
