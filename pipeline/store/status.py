"""`seal-tt status`: what a store holds (documents, updates, sizes) and how its retention moved, read-only."""

from __future__ import annotations

from pipeline.store.layout import Store
from pipeline.store.metrics import store_metrics
from pipeline.store.state import describe_writer


def _mb(folder) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


def store_status(path: str) -> dict:
    store = Store(path)
    manifest = store.manifest()
    state = store.state()
    active = state.active()
    adapters_mb = sum(_mb(store.update_dir(u.number) / "adapter") for u in state.accepted())
    by_number = {u.number: u for u in state.updates}
    job = store.pending_job() if store.pending.exists() else None
    return {
        "store": str(store.path),
        "created": manifest.created,
        "student": manifest.student["path"],
        "strategy": manifest.strategy,
        "documents": [{"id": v.id, "version": len(state.documents[v.id].versions), "update": v.update,
                       "probes": v.probes, "probe_source": v.probe_source, "added": v.added,
                       "self_edits_by": (by_number[v.update].self_edits_by or {}).get(key)}
                      for key, v in active.items()],
        "superseded": sum(len(d.versions) - 1 for d in state.documents.values()),
        "rejected": sorted(state.rejected),
        "updates": [{k: getattr(u, k) for k in ("number", "finished", "decision", "scale", "documents", "sequences",
                                                "replayed", "retention_before", "retention_after", "drop",
                                                "drift_bits_per_token", "timings", "adapter_mb", "retired",
                                                "self_edits_by")}
                    for u in state.updates],
        "adapters_mb": round(adapters_mb, 3),
        "mb_per_document": round(adapters_mb / len(active), 3) if active else None,
        "store_mb": round(_mb(store.path), 3),
        "metrics": store_metrics(state),
        "pending": store.pending.exists(),
        "pending_update": None if job is None else {"number": job.number, "documents": job.documents,
                                                    "self_edits_by": job.self_edits_by},
    }


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def status_text(s: dict) -> str:
    m = s["metrics"]
    lines = [f"store: {s['store']}  (strategy {s['strategy']}, student {s['student']}, created {s['created']})",
             f"documents: {len(s['documents'])} current, {s['superseded']} superseded versions, "
             f"{len(s['rejected'])} rejected by the gate",
             f"size: {s['store_mb']:.2f} MB on disk, adapters {s['adapters_mb']:.2f} MB"
             + (f" ({s['mb_per_document']:.3f} MB per document)" if s["mb_per_document"] is not None else ""),
             f"retention: acquisition {_f(m['acquisition'])}, retention {_f(m['retention'])} "
             f"({m['earlier_documents']} earlier documents), backward transfer {_f(m['backward_transfer'])}, "
             f"gain kept {_f(m['gain_kept'])}"
             + (f", oracle-routed retention {_f(m['oracle_retention'])}" if m.get("oracle_retention") is not None else ""),
             "", "update  finished              decision  docs  seqs  earlier before -> after  drift b/tok  seconds"]
    for u in s["updates"]:
        secs = sum((u.get("timings") or {}).values())
        lines.append(f"{u['number']:>6}  {u['finished']:<20}  {u['decision']:<8}  {len(u['documents']):>4}  "
                     f"{u['sequences']:>4}  {_f(u['retention_before']):>6} -> {_f(u['retention_after']):<6}  "
                     f"{_f(u['drift_bits_per_token']):>11}  {secs:7.1f}" + ("  (retired)" if u.get("retired") else ""))
    lines += ["", "document                                  version  update  probes  self-edits by"]
    for d in s["documents"]:
        lines.append(f"{d['id'][:40]:<40}  {d['version']:>7}  {d['update']:>6}  {d['probes']:>3}"
                     + (" (teacher)" if d["probe_source"] == "teacher" else "          ")
                     + f"  {describe_writer(d.get('self_edits_by'))}")
    if s["pending"]:
        lines.append("\nan update is pending (interrupted): the next `seal-tt update` resumes it")
        job = s.get("pending_update")
        if job:
            writers = sorted({describe_writer(w) for w in (job["self_edits_by"] or {}).values()})
            lines.append(f"pending update {job['number']}: {len(job['documents'])} documents"
                         + (f", self-edits by {'; '.join(writers)}" if writers else
                            " (written before writers were recorded)"))
    return "\n".join(lines) + "\n"
