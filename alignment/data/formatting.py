"""Records -> token ids with a loss mask: plain text, transcripts or chat templates, then
truncation.

Conventions (the batch contract): a BOS is prepended when the tokenizer has one and the text
does not already start with it; every trained response ends with EOS and the loss mask covers
it. With a chat template whose assistant turn already ends in the EOS token (Qwen's
`<|im_end|>`), the template's own EOS is the one trained and what follows it in that turn
(the template's newline) is moved to the untrained side.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from alignment.data.records import BadRowReport

Messages = list[dict[str, str]]
_TRANSCRIPT_ROLE = {"system": "System", "user": "Human", "assistant": "Assistant", "tool": "Tool"}


def transcript(messages: Messages, *, add_generation_prompt: bool) -> str:
    """Plain rendering of a conversation in the Anthropic HH-RLHF convention:
    "\\n\\nHuman: q\\n\\nAssistant: a". Prefix-stable, so segments can be cut from it."""
    out = "".join(f"\n\n{_TRANSCRIPT_ROLE[m['role']]}: {m['content']}" for m in messages)
    return out + ("\n\nAssistant:" if add_generation_prompt else "")


def _render(
    tokenizer, messages: Messages, *, chat_template: bool, add_generation_prompt: bool
) -> str:
    if chat_template:
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
    return transcript(messages, add_generation_prompt=add_generation_prompt)


def conversation_segments(
    tokenizer, messages: Messages, *, chat_template: bool
) -> list[tuple[str, bool]]:
    """Cut a rendered conversation into (text, trained) pieces: each assistant turn is trained,
    everything else (system/user turns, role headers) is not.

    Assistant turn i is the text between render(messages[:i], add_generation_prompt=True) and
    render(messages[:i+1]); both must be prefixes of the full render, which holds for templates
    that do not rewrite earlier turns.
    """
    full = _render(tokenizer, messages, chat_template=chat_template, add_generation_prompt=False)
    pieces, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0 and chat_template:
            before = ""  # templates cannot render an empty conversation
        else:
            before = _render(
                tokenizer, messages[:i], chat_template=chat_template, add_generation_prompt=True
            )
        upto = _render(
            tokenizer, messages[: i + 1], chat_template=chat_template, add_generation_prompt=False
        )
        if not (
            full.startswith(before)
            and full.startswith(upto)
            and len(before) >= cursor
            and len(upto) > len(before)
        ):
            raise ValueError(
                "chat template is not prefix-stable (rendering the first turns is not a prefix of "
                "rendering the whole conversation), so assistant turns cannot be located for the "
                f"loss mask; turn {i} of {len(messages)}. Use a template without history "
                "rewriting, or data.chat_template=False."
            )
        pieces.append((full[cursor : len(before)], False))
        pieces.append((full[len(before) : len(upto)], True))
        cursor = len(upto)
    pieces.append((full[cursor:], False))
    return [(t, trained) for t, trained in pieces if t or trained]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def encode_pieces(
    tokenizer, pieces: Sequence[tuple[str, bool]], *, append_eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise (text, trained) pieces; trained pieces end with exactly one EOS (appended, or
    the template's own, with any tail after it moved to the untrained side); `append_eos=False`
    (an unfinished prefix) appends none. BOS is prepended when the tokenizer has one and the
    first token is not already BOS."""
    eos = tokenizer.eos_id
    ids: list[int] = []
    loss: list[int] = []
    carry: list[int] = []  # tokens after a template's EOS: context for what follows
    for text, trained in pieces:
        toks = _encode(tokenizer, text)
        if not trained:
            ids += carry + toks
            loss += [0] * (len(carry) + len(toks))
            carry = []
            continue
        ids += carry
        loss += [0] * len(carry)
        if eos in toks:
            cut = len(toks) - toks[::-1].index(eos)
            toks, carry = toks[:cut], toks[cut:]
        else:
            toks, carry = toks + ([eos] if append_eos else []), []
        ids += toks
        loss += [1] * len(toks)
    # A tail after the final EOS is never predicted at generation time: leave it out.
    bos = tokenizer.bos_id
    if bos is not None and (not ids or ids[0] != bos):
        ids, loss = [bos] + ids, [0] + loss
    return np.asarray(ids, np.int32), np.asarray(loss, np.int32)


def encode_prompt_response(
    tokenizer,
    prompt: str | Messages,
    response: str | Messages,
    *,
    chat_template: bool,
    append_eos: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """-> (ids, loss_mask, prompt_len): prompt tokens untrained, response tokens trained (no EOS
    appended with `append_eos=False`: plain-text prefixes only)."""
    if not append_eos and not (
        isinstance(prompt, str) and isinstance(response, str) and not chat_template
    ):
        raise ValueError(
            "a response without EOS (rejected_is_prefix) needs plain-text rows and chat_template=False"
        )
    if isinstance(prompt, str) and isinstance(response, str) and not chat_template:
        pieces = [(prompt, False), (response, True)]
    else:
        p = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        r = (
            [{"role": "assistant", "content": response}]
            if isinstance(response, str)
            else list(response)
        )
        if not chat_template and isinstance(response, list) and len(r) == 1:
            # HH convention: the prompt ends with "Assistant:", the response starts with a space.
            pieces = [
                (transcript(p, add_generation_prompt=True), False),
                (" " + r[0]["content"], True),
            ]
        else:
            pieces = conversation_segments(tokenizer, p + r, chat_template=chat_template)
    ids, loss = encode_pieces(tokenizer, pieces, append_eos=append_eos)
    first_trained = int(np.argmax(loss)) if loss.any() else len(ids)
    return ids, loss, first_trained


def truncate(
    ids: np.ndarray,
    loss: np.ndarray,
    prompt_len: int,
    *,
    max_prompt_len: int,
    max_len: int,
    prompt_truncation: str,
    truncation: str,
    bos_id: int | None,
    report: BadRowReport | None = None,
) -> tuple[np.ndarray, np.ndarray] | str:
    """Cut the prompt (ids[:prompt_len]) to max_prompt_len from the chosen side (a leading BOS
    is kept), then the response to what is left of max_len. Returns (ids, loss) or the
    bad-row reason: "too_long" (truncation="drop") or "no_response_tokens"."""
    prompt, response, rloss = ids[:prompt_len], ids[prompt_len:], loss[prompt_len:]
    cut_prompt = len(prompt) > max_prompt_len
    if cut_prompt:
        keep_bos = bos_id is not None and len(prompt) and prompt[0] == bos_id
        if prompt_truncation == "keep_start":
            prompt = prompt[:max_prompt_len]
        elif keep_bos:
            prompt = np.concatenate([prompt[:1], prompt[len(prompt) - max_prompt_len + 1 :]])
        else:
            prompt = prompt[len(prompt) - max_prompt_len :]
    room = max_len - len(prompt)
    cut_response = len(response) > room
    if cut_response:
        if truncation == "drop":
            return "too_long"
        response, rloss = response[: max(room, 0)], rloss[: max(room, 0)]
    if not rloss.any():
        return "no_response_tokens"
    if report is not None:
        report.truncated["prompt"] += int(cut_prompt)
        report.truncated["response"] += int(cut_response)
    out_ids = np.concatenate([prompt, response]).astype(np.int32)
    out_loss = np.concatenate([np.zeros(len(prompt), np.int32), rloss]).astype(np.int32)
    return out_ids, out_loss


def tokenize_record(
    record: dict[str, Any],
    tokenizer,
    *,
    kind: str,
    cfg,
    report: BadRowReport,
    source: str,
    row: int | str,
):
    """Record -> example dict of int32 arrays, or None after reporting it.

    sft: {"ids", "loss"}; preference: {"chosen_ids", "chosen_loss", "rejected_ids",
    "rejected_loss"}. `cfg` is the data ConfigDict.
    """
    cut = dict(
        max_prompt_len=cfg.max_prompt_len,
        max_len=cfg.max_len,
        prompt_truncation=cfg.prompt_truncation,
        truncation=cfg.truncation,
        bos_id=tokenizer.bos_id,
        report=report,
    )
    if kind == "sft":
        if "messages" in record:
            pieces = conversation_segments(
                tokenizer, record["messages"], chat_template=cfg.chat_template
            )
            ids, loss = encode_pieces(tokenizer, pieces)
            plen = int(np.argmax(loss))
        else:
            ids, loss, plen = encode_prompt_response(
                tokenizer, record["prompt"], record["completion"], chat_template=cfg.chat_template
            )
        out = truncate(ids, loss, plen, **cut)
        if isinstance(out, str):
            return _report_length(report, out, source, row, "completion", cfg)
        return {"ids": out[0], "loss": out[1]}
    example = {}
    for side in ("chosen", "rejected"):
        prefix = side == "rejected" and record.get("rejected_is_prefix", False)
        ids, loss, plen = encode_prompt_response(
            tokenizer,
            record["prompt"],
            record[side],
            chat_template=cfg.chat_template,
            append_eos=not prefix,
        )
        out = truncate(ids, loss, plen, **cut)
        if isinstance(out, str):
            return _report_length(report, out, source, row, side, cfg)
        example[f"{side}_ids"], example[f"{side}_loss"] = out
    return example


def _report_length(report, reason, source, row, field, cfg):
    if reason == "too_long":
        detail = (
            f"longer than max_len={cfg.max_len} after cutting the prompt to "
            f"max_prompt_len={cfg.max_prompt_len} (data.truncation='drop')"
        )
    else:
        detail = (
            f"no response token survives truncation (max_prompt_len={cfg.max_prompt_len}, "
            f"max_len={cfg.max_len}); shorten the prompt or raise max_len"
        )
    report.bad(
        reason=reason,
        source=source,
        row=row,
        field=field,
        detail=detail,
        force_skip=reason == "too_long",
    )
    return None
