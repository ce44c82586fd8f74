"""`seal-tt status`: what a store holds (documents, updates, sizes) and how its retention moved, read-only."""

from __future__ import annotations

from pipeline.store.layout import Store, active_documents
from pipeline.store.update import store_metrics


def _mb(folder) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


def store_status(path: str) -> dict:
    store = Store(path)
    manifest = store.manifest()
    state = store.state()
    active = active_documents(state)
    adapters_mb = sum(_mb(store.update_dir(u["number"]) / "adapter") for u in state["updates"] if u.get("accepted"))
    return {
        "store": str(store.path),
        "created": manifest["created"],
        "student": manifest["settings"]["student.model"]["path"],
        "strategy": manifest["settings"]["strategy"],
        "documents": [{"id": e["key"].rsplit("@", 1)[0], "version": len(state["documents"][e["key"].rsplit("@", 1)[0]]["versions"]),
                       "update": e["update"], "probes": e["probes"], "probe_source": e["probe_source"],
                       "added": e["added"]} for e in active.values()],
        "superseded": sum(len(d["versions"]) - 1 for d in state["documents"].values()),
        "rejected": sorted(state["rejected"]),
        "updates": [{k: u.get(k) for k in ("number", "finished", "decision", "scale", "documents", "sequences",
                                           "replayed", "retention_before", "retention_after", "drop",
                                           "drift_bits_per_token", "timings", "adapter_mb", "retired")}
                    for u in state["updates"]],
        "adapters_mb": round(adapters_mb, 3),
        "mb_per_document": round(adapters_mb / len(active), 3) if active else None,
        "store_mb": round(_mb(store.path), 3),
        "metrics": store_metrics(state),
        "pending": store.pending.exists(),
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
    lines += ["", "document                                  version  update  probes"]
    for d in s["documents"]:
        lines.append(f"{d['id'][:40]:<40}  {d['version']:>7}  {d['update']:>6}  {d['probes']:>3}"
                     + (f" ({d['probe_source']})" if d["probe_source"] == "teacher" else ""))
    if s["pending"]:
        lines.append("\nan update is pending (interrupted): the next `seal-tt update` resumes it")
    return "\n".join(lines) + "\n"
