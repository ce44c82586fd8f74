"""What a ReST-EM round reports: E-step reward statistics, how many contexts the selection found a winner in, held-out
scores, and the run's summary table (metrics.jsonl and summary.md, written by pipeline/rest_em.py)."""

from __future__ import annotations

import math
import statistics

from pipeline.settings import TrainTeacherConfig


def ci95(values: list[float]) -> float:
    return 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def reward_stats(records: list[dict]) -> dict:
    rewards = [x["reward"] for x in records]
    valid = [x for x in records if x["valid"]]
    return {
        "self_edits": len(records),
        "valid_fraction": len(valid) / len(records) if records else 0.0,
        "reward_mean": statistics.fmean(rewards) if rewards else 0.0,
        "reward_std": statistics.stdev(rewards) if len(rewards) > 1 else 0.0,
        "fraction_positive": sum(r > 0 for r in rewards) / len(rewards) if rewards else 0.0,
        # A reward of exactly 0 (the score unmoved, or an invalid self-edit) tells the selection nothing either way.
        "fraction_nonzero": sum(r != 0 for r in rewards) / len(rewards) if rewards else 0.0,
        # seed-to-seed spread inside a self-edit, to compare with the spread between self-edits
        "seed_std_mean": statistics.fmean([statistics.stdev(x["scores"]) for x in valid if len(x["scores"]) > 1] or [0.0]),
    }


def winner_stats(selected: list[dict], contexts: int, info: dict) -> dict:
    """How many of the round's `contexts` have at least one selected self-edit; with a redraw
    (rest_em.min_contexts_with_winner), whether it happened and how many had one before it (`info`: selection.json)."""
    out = {"contexts": contexts, "contexts_with_winner": len({s["context"] for s in selected})}
    if "redrawn" in info:
        out.update(redrawn=info["redrawn"], contexts_with_winner_before=info["contexts_with_winner_before"])
    return out


def heldout_stats(records: list[dict]) -> dict:
    scores = [x["score"] for x in records]
    gains = [x["score"] - x["baseline"] for x in records]
    return {
        "contexts": len({x["context"] for x in records}),
        "self_edits": len(records),
        "valid_fraction": sum(x["valid"] for x in records) / len(records) if records else 0.0,
        "baseline_mean": statistics.fmean([x["baseline"] for x in records]) if records else 0.0,
        "score_mean": statistics.fmean(scores) if scores else 0.0,
        "score_ci95": ci95(scores),
        "gain_mean": statistics.fmean(gains) if gains else 0.0,
        "gain_ci95": ci95(gains),
    }


def summary_markdown(metrics: list[dict], config: TrainTeacherConfig) -> str:
    from pipeline.tasks.knowledge import metric_name

    metric = "pass@2" if config.task == "arc" else metric_name(config.student.eval, config.student.model)
    lines = [
        f"# ReST-EM run: {config.task}",
        "",
        f"teacher `{config.teacher.model.path}`, student `{config.student.model.path}`, metric "
        f"`{metric}`, selection `{config.rest_em.selection}`, "
        f"{config.teacher.generation.num_samples} self-edits x {config.rest_em.seeds_per_edit} seeds per context",
        "",
        "| round | E-step reward (mean ± std) | positive | selected | contexts with a winner | non-zero | "
        "held-out score (± 95% CI) | held-out gain (± 95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        if m.get("warm_start"):
            w = m["warm_start"]
            loss = (f", loss {w['first_loss']:.3f} -> {w['last_loss']:.3f}"
                    if w.get("first_loss") is not None and w.get("last_loss") is not None else "")
            sft = f"SFT: {w['pairs']} pairs, {w['steps']} steps{loss}"
            lines.append(f"| warm start | - | - | {sft} | - | - | - | - |")
        h = m["heldout"]
        heldout = f"{h['score_mean']:.3f} ± {h['score_ci95']:.3f} | {h['gain_mean']:+.3f} ± {h['gain_ci95']:.3f}"
        lines.append(f"| {m['round']} | {_e_step_cells(m.get('e_step') or {}, m.get('selected', '-'))} | {heldout} |")
    return "\n".join(lines) + "\n"


def _e_step_cells(e: dict, selected) -> str:
    """The E-step's cells of a round's row: reward, positive, selected, contexts with a winner, non-zero ("-" where a
    round, or a run from before the field, has none)."""
    if not e:
        return f"- | - | {selected} | - | -"
    nonzero = f"{e['fraction_nonzero']:.0%}" if "fraction_nonzero" in e else "-"
    winners = f"{e['contexts_with_winner']}/{e['contexts']}" if "contexts_with_winner" in e else "-"
    if e.get("redrawn"):
        winners += f" (redrawn; {e['contexts_with_winner_before']} before)"
    return (f"{e['reward_mean']:+.3f} ± {e['reward_std']:.3f} | {e['fraction_positive']:.0%} | {selected} | "
            f"{winners} | {nonzero}")
