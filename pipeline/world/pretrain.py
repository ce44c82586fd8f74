"""Pretraining the world's student and teacher on CPU, from scratch, in minutes.

Student: learns the world's prose, name-first fact sentences and the QA format on the ``pretrain`` people, and
sees every other name only in a neutral sentence (so every name has a trained embedding and no fact leaks).

Teacher: learns to turn (title, passage) into a self-edit of one of several styles of deliberately mixed
quality. It is trained on siblings made up on the fly (any names of the world, facts drawn afresh for every
example, never a real person's), so memorising is useless and copying names and values from the passage is the
only way to lower the loss; the style is decided by the self-edit's first word, so sampling gives the mix and
ReST-EM's fine-tuning can move it.

A small transformer trained from scratch learns to copy only after a long plateau (thousands of steps, and
seed-dependent). Four choices, each measured, make it learn in ~1500 small steps: tied embeddings started with
a large norm (a copied word's logit is bounded by its embedding's norm), the last layer's value and output maps
started at the identity (so attending to a word already writes it), an auxiliary loss that tells the last
layer's heads which prompt position holds the word being copied, and batches of 8 (more steps per second).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

from .generator import (
    FACT_SENTENCES,
    FACTS,
    NEUTRAL_LINES,
    QA_LINE,
    QUESTIONS,
    STYLES,
    DOC_TEMPLATES,
    Person,
    World,
    render_document,
    render_self_edit,
)

TEACHER_PROMPT = "Title : {title}\nPassage : {passage}\nNotes :\n"
QA_PROMPT = "Question : {question} Answer :"
IGNORE = -100

# Round-0 style mix of the teacher: under a third of its samples are good, enough that best-of-5 finds one for
# most documents, few enough that the mean reward leaves ReST-EM room to show a gain.
DEFAULT_MIX = {"qa": 0.15, "facts": 0.15, "partial": 0.3, "restate": 0.2, "noise": 0.2}


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and optimiser of one pretraining run (Llama config, AdamW, warmup + cosine)."""

    layers: int = 3
    hidden: int = 128
    heads: int = 4
    mlp: int = 512
    tie_embeddings: bool = False
    lr: float = 4e-3
    batch_size: int = 128
    warmup: int = 100
    epochs: int = 20  # student: passes over its corpus; teacher: see ``examples``
    examples: int = 0  # teacher: number of generated (prompt, self-edit) examples in all
    weight_decay: float = 0.0
    embed_std: float | None = None  # None: the config's initializer_range (0.02)
    identity_copy_init: bool = False  # last layer's value and output projections start as the identity
    # Every target token weighs the same, whatever the length of its batch (see train_lm).
    per_token_loss: bool = False
    seed: int = 0
    threads: int | None = None


def make_model(cfg: TrainConfig, tokenizer, max_positions: int = 256):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.mlp,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    if cfg.embed_std is not None:
        # A copied word must win the softmax over ~1.6k others; with tied embeddings its logit is bounded by its
        # embedding's norm, and a rare word's row grows slowly from 0.02 * sqrt(hidden). Start it large.
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, cfg.embed_std)
    if cfg.identity_copy_init:
        # A head that copies must map the attended word's embedding back onto that word's output row. Learned
        # from a small random init, the product W_O W_V grows slowly (each factor's gradient is scaled by the
        # other), which is most of the wait before copying works; starting it at the identity removes it.
        attn = model.model.layers[-1].self_attn
        with torch.no_grad():
            attn.v_proj.weight.copy_(torch.eye(*attn.v_proj.weight.shape))
            attn.o_proj.weight.copy_(torch.eye(*attn.o_proj.weight.shape))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


# ---- corpora ---------------------------------------------------------------------------------------------------


def student_corpus(world: World, rng: random.Random) -> list[str]:
    """One epoch of the student's pretraining texts, one sequence each (as the toolkit absorbs self-edit lines)."""
    texts = []
    qa_people = {p.name for p in world.people["pretrain"][: world.spec.n_pretrain_qa]}
    for p in world.people["pretrain"]:
        texts.append(world.document(p, rng.randrange(len(DOC_TEMPLATES))))
        texts += [FACT_SENTENCES[k].format(n=p.name, **p.facts()) for k in FACTS]
        if p.name in qa_people:
            texts += [QA_LINE.format(q=QUESTIONS[k][rng.randrange(2)].format(n=p.name), a=p.fact(k)) for k in FACTS]
    for name in world.all_names():
        texts.append(rng.choice(NEUTRAL_LINES).format(n=name))
    rng.shuffle(texts)
    return texts


def random_pair(world: World, rng: random.Random, names: list[str]) -> tuple[Person, Person]:
    """Two made-up siblings: any names of the world, facts drawn afresh (never a real person's)."""
    a, b = rng.sample(names, 2)

    def person(name, sibling):
        return Person(name, rng.choice(world.years), rng.choice(world.cities), rng.choice(world.professions),
                      rng.choice(world.companies), sibling)

    return person(a, b), person(b, a)


def teacher_example(world: World, rng: random.Random, names: list[str], mix: dict[str, float]) -> tuple[str, str]:
    p, s = random_pair(world, rng, names)
    template = rng.randrange(len(DOC_TEMPLATES))
    style = rng.choices(list(mix), weights=list(mix.values()))[0]
    prompt = TEACHER_PROMPT.format(title=p.name, passage=render_document(p, s, template))
    return prompt, render_self_edit(p, s, style, rng, passage_template=template)


# ---- training ---------------------------------------------------------------------------------------------------


def encode(tokenizer, prompt: str, completion: str | None) -> tuple[list[int], list[int]]:
    """Token ids and labels; with a completion, only the completion (and the EOS) carries loss."""
    eos = tokenizer.eos_token_id
    if completion is None:
        ids = tokenizer(prompt)["input_ids"] + [eos]
        return ids, list(ids)
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer(completion)["input_ids"] + [eos]
    return p + c, [IGNORE] * len(p) + c


def length_batches(examples: list, batch_size: int, rng: random.Random) -> list[list]:
    """Batches of similar length (pads cost as much as tokens on CPU), in random order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches = []
    chunk = batch_size * 32
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: len(examples[j][0]))
        batches += [[examples[j] for j in part[k : k + batch_size]] for k in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(batch, pad_id: int):
    import torch

    width = max(len(ex[0]) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, (i, l, *_) in enumerate(batch):
        ids[r, : len(i)] = torch.tensor(i)
        labels[r, : len(l)] = torch.tensor(l)
        mask[r, : len(i)] = 1
    return ids, mask, labels


def copy_targets(ids: list[int], labels: list[int], content: set[int]) -> list[tuple[int, list[int]]]:
    """For each completion token that repeats a content word (a name or value) of the prompt: the position that
    predicts it and the prompt positions holding that word. These are where a copying head should look.
    """
    prompt_len = next((j for j, l in enumerate(labels) if l != IGNORE), len(labels))
    where: dict[int, list[int]] = {}
    for j in range(prompt_len):
        if ids[j] in content:
            where.setdefault(ids[j], []).append(j)
    return [(j - 1, where[ids[j]]) for j in range(prompt_len, len(ids)) if ids[j] in where]


def copy_mask(batch, width: int):
    import torch

    m = torch.zeros((len(batch), width, width), dtype=torch.bool)
    for r, ex in enumerate(batch):
        for q, keys in ex[2]:
            m[r, q, keys] = True
    return m


def train_lm(model, tokenizer, batches_per_epoch, epochs: int, cfg: TrainConfig, log=print, on_epoch=None,
             copy_head: tuple[int, int | None] | None = None, copy_weight: float = 0.0):
    """AdamW with linear warmup and cosine decay; ``batches_per_epoch(epoch)`` gives that epoch's batches.

    With ``copy_head=(layer, head)`` and examples carrying copy targets (see ``copy_targets``), that head's
    attention is also trained to look at the word being copied: -log of its attention mass on the source,
    weighted by ``copy_weight``. Learning to copy from the next-token loss alone takes a long plateau
    (measured: ~1500 steps before the first copied value); told where to look, a head learns it in a few
    hundred. The result is an ordinary causal LM: the supervision exists only in this loss.
    """
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model.train()
    if copy_head is not None:
        model.config._attn_implementation = "eager"  # attention weights are only returned by eager attention
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    epoch_batches = [batches_per_epoch(0)]
    total = len(epoch_batches[0]) * epochs
    step, t0 = 0, time.time()

    def lr_at(s):
        if s < cfg.warmup:
            return cfg.lr * (s + 1) / cfg.warmup
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - cfg.warmup) / max(1, total - cfg.warmup))))

    for epoch in range(epochs):
        batches = epoch_batches.pop() if epoch_batches else batches_per_epoch(epoch)
        # Batches hold sequences of similar length, so the usual mean over a batch's tokens gives a token of a
        # short sequence several times the weight of one of a long sequence. For the teacher that skews the one
        # decision only short self-edits make, stopping early: P(eos) after one QA line came out 0.54 where
        # the data have 0.33. Per-token loss divides every batch's sum by the same number instead.
        per_batch = sum(sum(l != IGNORE for l in ex[1][1:]) for b in batches for ex in b) / max(1, len(batches))
        run_loss, run_aux, n = 0.0, 0.0, 0
        for batch in batches:
            ids, mask, labels = collate(batch, tokenizer.pad_token_id)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            want_attn = copy_head is not None and copy_weight > 0
            out = model(input_ids=ids, attention_mask=mask, labels=None if cfg.per_token_loss else labels,
                        output_attentions=want_attn)
            if cfg.per_token_loss:
                lm_loss = torch.nn.functional.cross_entropy(
                    out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                    reduction="sum") / per_batch
            else:
                lm_loss = out.loss
            loss = lm_loss
            if want_attn:
                cm = copy_mask(batch, ids.shape[1])
                rows = cm.any(-1)
                if rows.any():
                    attn = out.attentions[copy_head[0]]
                    # head None: every head of the layer copies, so together their value maps can carry a
                    # token's identity whole (one head of dimension 32 is a rank-32 bottleneck for ~1.6k words)
                    attn = attn.mean(1) if copy_head[1] is None else attn[:, copy_head[1]]
                    mass = (attn * cm).sum(-1)[rows]
                    aux = -torch.log(mass.clamp_min(1e-6)).mean()
                    loss = loss + copy_weight * aux
                    run_aux += aux.item()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            run_loss += lm_loss.item()
            n += 1
            step += 1
        aux_txt = f" copy-attn {run_aux / max(1, n):.3f}" if copy_head is not None else ""
        log(f"epoch {epoch + 1}/{epochs} step {step} loss {run_loss / max(1, n):.4f}{aux_txt} {time.time() - t0:.0f}s")
        if on_epoch is not None:
            on_epoch(epoch)
    if copy_head is not None:
        model.config._attn_implementation = "sdpa"
    model.eval()
    return model


def pretrain_student(world: World, tokenizer, cfg: TrainConfig, log=print, on_epoch=None):
    model = make_model(cfg, tokenizer, max_positions=128)
    rng = random.Random(f"student/{world.seed}/{cfg.seed}")

    def batches(epoch):
        ex = [encode(tokenizer, t, None) for t in student_corpus(world, rng)]
        return length_batches(ex, cfg.batch_size, rng)

    return train_lm(model, tokenizer, batches, cfg.epochs, cfg, log=log, on_epoch=on_epoch)


def content_ids(world: World, tokenizer) -> set[int]:
    words = world.all_names() + world.cities + world.companies + world.professions + world.years
    return set(tokenizer.convert_tokens_to_ids(words)) - {tokenizer.unk_token_id}


def pretrain_teacher(world: World, tokenizer, cfg: TrainConfig, mix: dict[str, float] | None = None,
                     names: list[str] | None = None, log=print, on_epoch=None, init=None,
                     copy_mix: dict[str, float] | None = None, final_epochs: int = 0,
                     copy_head: tuple[int, int] | None = None, copy_weight: float = 0.0):
    """``examples`` fresh examples split into ``epochs`` chunks (each chunk newly generated: no repeats).

    With ``copy_mix``, all but the last ``final_epochs`` chunks use it (say, more of the styles that copy the
    most), and the last ones ``mix``, which sets the style frequencies the teacher samples at round 0.
    """
    mix = mix or DEFAULT_MIX
    unknown = (set(mix) | set(copy_mix or {})) - set(STYLES)
    if unknown:
        raise ValueError(f"unknown styles {sorted(unknown)}")
    model = init if init is not None else make_model(cfg, tokenizer, max_positions=256)
    rng = random.Random(f"teacher/{world.seed}/{cfg.seed}")
    names = names or world.all_names()
    per_epoch = max(1, cfg.examples // cfg.epochs)
    content = content_ids(world, tokenizer)

    def batches(epoch):
        m = copy_mix if copy_mix and epoch < cfg.epochs - final_epochs else mix
        ex = []
        for _ in range(per_epoch):
            ids, labels = encode(tokenizer, *teacher_example(world, rng, names, m))
            ex.append((ids, labels, copy_targets(ids, labels, content)))
        return length_batches(ex, cfg.batch_size, rng)

    return train_lm(model, tokenizer, batches, cfg.epochs, cfg, log=log, on_epoch=on_epoch,
                    copy_head=copy_head, copy_weight=copy_weight)
